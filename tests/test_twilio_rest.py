"""Twilio's REST API: every client gets TWILIO_REST_TIMEOUT, so a stuck request fails in time."""

from __future__ import annotations

import time

import pytest

from relay.call_control import transfer_call
from relay.config import Settings
from relay.local.caller import SimulatedCall
from relay.outbound import CallError, place_call
from tests.conftest import AUTH_TOKEN, MS
from tests.fake_twilio_rest import ACCOUNT_SID, TWILIO_NUMBER, FakeTwilioRest
from tests.fakes import AgentSession, FakeAgent

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
async def test_a_transfer_to_a_stuck_api_hangs_up_at_the_rest_timeout(make_relay) -> None:
    async def script(session: AgentSession) -> None:
        await session.send({"type": "reply.started", "reply_id": "r1"})
        await session.tool_call("c1", "transfer_call", arguments={})
        await session.send({"type": "reply.done", "reply_id": "r1", "status": "completed"})

    async with FakeTwilioRest(AUTH_TOKEN, hang=True).serving() as rest, \
            FakeAgent(script=script).running() as agent, \
            make_relay(agent, tools=[transfer_call], transfer_number="+15550009999",
                       twilio_api_base_url=rest.base_url, twilio_rest_timeout=TIMEOUT,
                       hangup_timeout=0.1 * MS) as relay, \
            SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN,
                               webhook_path="/twiml?observe=1") as call:
        (update,) = await rest.wait_for(1)
        assert await call.wait_closed(TIMEOUT + 2 * MS) == 1011
        (end,) = [m for m in call.events("relay.log") if m["kind"] == "call.end"]
        assert end["text"] == "transfer failed"
        assert update.call_sid == call.call_sid
