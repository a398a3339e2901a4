"""relay.serving: the tuned uvicorn protocol keeps RFC 6455, and refuses a uvicorn it does not fit."""

from __future__ import annotations

import asyncio

import pytest

from relay.local.caller import SimulatedCall
from tests.conftest import AUTH_TOKEN, MS
from tests.fakes import FakeAgent

pytestmark = pytest.mark.anyio


async def test_invalid_utf8_from_twilio_closes_the_stream_with_1007(make_relay) -> None:
    async with FakeAgent().running() as agent, make_relay(agent) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            session = await agent.session()
            await asyncio.wait_for(session.ready.wait(), 3 * MS)
            # A text frame whose payload is not UTF-8 (RFC 6455 §8.1: fail with 1007).
            await call.ws.send(b'{"event": "mark", "mark": {"name": "\xff\xfe"}}', text=True)
            assert await call.wait_closed(3 * MS) == 1007
            await asyncio.wait_for(session.closed.wait(), 3 * MS)
        assert session.ended.is_set() and session.violations == []
