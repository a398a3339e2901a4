"""Twilio's REST API through the twilio library: the client, hang-up and transfer.

Every client is made here, with ``TWILIO_REST_TIMEOUT`` on its HTTP client, so no request
holds a thread forever. The library's client is synchronous (requests), so the relay's calls
go through ``asyncio.to_thread`` under the same timeout. ``TWILIO_API_BASE_URL`` points every
API domain at another host (tests use a fake Twilio REST server).
"""

from __future__ import annotations

import asyncio

from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from relay import twiml
from relay.config import Settings


def make_client(settings: Settings) -> Client | None:
    """A REST client, or None when the account SID or auth token is missing."""
    if not (settings.twilio_account_sid and settings.twilio_auth_token):
        return None
    client = Client(settings.twilio_account_sid, settings.twilio_auth_token,
                    http_client=TwilioHttpClient(timeout=settings.twilio_rest_timeout))
    if settings.twilio_api_base_url:
        client.api.base_url = settings.twilio_api_base_url
    return client


async def transfer(client: Client, call_sid: str, number: str, *, timeout: float) -> None:
    """Replace the live call's TwiML with ``<Dial>``: the stream ends and the caller rings."""
    await asyncio.wait_for(
        asyncio.to_thread(client.calls(call_sid).update, twiml=twiml.dial(number)), timeout)
