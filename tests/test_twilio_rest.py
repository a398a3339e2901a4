"""Twilio's REST API: every client gets TWILIO_REST_TIMEOUT, so a stuck request fails in time."""

from __future__ import annotations

import time

import pytest

from relay import twilio_rest
from relay.config import Settings
from relay.outbound import CallError, place_call
from tests.conftest import AUTH_TOKEN, MS
from tests.fake_twilio_rest import ACCOUNT_SID, TWILIO_NUMBER, FakeTwilioRest

TIMEOUT = 0.3 * MS


def test_an_outbound_call_to_a_stuck_api_fails_at_the_rest_timeout() -> None:
    with FakeTwilioRest(AUTH_TOKEN, hang=True).running() as twilio:
        settings = Settings(public_url="https://relay.example.com", twilio_account_sid=ACCOUNT_SID,
                            twilio_auth_token=AUTH_TOKEN, twilio_phone_number=TWILIO_NUMBER,
                            twilio_api_base_url=twilio.base_url, twilio_rest_timeout=TIMEOUT)
        started = time.monotonic()
        with pytest.raises(CallError, match="could not reach Twilio's REST API"):
            place_call("+15558675310", settings=settings)
        assert time.monotonic() - started < TIMEOUT + 1 * MS
        assert len(twilio.created()) == 1  # it was asked, and never answered


@pytest.mark.anyio
async def test_a_rest_transfer_to_a_stuck_api_fails_at_the_rest_timeout() -> None:
    """The REST way to reach a call whose stream is gone (a live call's transfer needs none)."""
    async with FakeTwilioRest(AUTH_TOKEN, hang=True).serving() as rest:
        settings = Settings(public_url="https://relay.example.com", twilio_account_sid=ACCOUNT_SID,
                            twilio_auth_token=AUTH_TOKEN, twilio_api_base_url=rest.base_url,
                            twilio_rest_timeout=TIMEOUT)
        client = twilio_rest.make_client(settings)
        assert client is not None
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await twilio_rest.transfer(client, "CA" + "1" * 32, "+15550009999", timeout=TIMEOUT)
        assert time.monotonic() - started < TIMEOUT + 1 * MS
        (update,) = await rest.wait_for(1)
        assert update.call_sid == "CA" + "1" * 32
