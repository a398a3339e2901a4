"""Each of a call's timeouts ends it with its own reason; a stray TimeoutError is a fault."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from websockets.asyncio.client import connect

from relay.local.caller import SimulatedCall
from relay.security import twilio_signature
from tests.conftest import AUTH_TOKEN, MS
from tests.fakes import AgentSession, FakeAgent

pytestmark = pytest.mark.anyio


def end_reason(call: SimulatedCall) -> str:
    """Why the relay ended the call, as it tells an observer (``observe=1``)."""
    (end,) = [m for m in call.events("relay.log") if m["kind"] == "call.end"]
    return str(end["text"])


async def test_maximum_call_duration_ends_the_call_with_its_reason(make_relay) -> None:
    async def goodbye(session: AgentSession) -> None:  # answers the time limit's reply.create
        await session.wait_for("reply.create", timeout=5 * MS)
        await session.send({"type": "reply.started", "reply_id": "bye"})
        await session.send({"type": "reply.audio", "reply_id": "bye", "data": "/" * 216})
        await session.send({"type": "reply.done", "reply_id": "bye", "status": "completed"})

    async with FakeAgent(script=goodbye).running() as agent, \
            make_relay(agent, max_call_seconds=0.3 * MS) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN,
                                      webhook_path="/twiml?observe=1") as call:
            assert await call.wait_closed(3 * MS) == 1000
        assert end_reason(call) == "maximum call duration reached"
        session = await agent.session()
        await asyncio.wait_for(session.closed.wait(), 3 * MS)
        assert session.ended.is_set() and session.violations == []


async def test_no_start_ends_the_stream_with_its_own_reason(make_relay) -> None:
    async with FakeAgent().running() as agent, \
            make_relay(agent, start_timeout=0.2 * MS, max_call_seconds=5 * MS) as relay:
        url = relay.settings.stream_url
        ws = await connect(url, additional_headers={
            "x-twilio-signature": twilio_signature(AUTH_TOKEN, url, {})})
        await ws.send(orjson.dumps({"event": "connected"}), text=True)
        await asyncio.wait_for(ws.wait_closed(), 3 * MS)
        assert ws.close_code == 1008  # not the maximum duration's 1000


async def test_a_stray_timeout_is_a_fault_not_the_maximum_duration(make_relay) -> None:
    class StalledTokenCheck:
        """A token check whose own work timed out (say, a key fetched from a vault)."""

        def mint(self, *args: object, **kwargs: object) -> str:
            return "t"

        def verify(self, *args: object, **kwargs: object) -> bool:
            raise TimeoutError

    async with FakeAgent().running() as agent, \
            make_relay(agent, max_call_seconds=30) as relay:
        relay.server.config.app.state.relay.tokens = StalledTokenCheck()
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN,
                                      webhook_path="/twiml?observe=1") as call:
            assert await call.wait_closed(3 * MS) == 1011
