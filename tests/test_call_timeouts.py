"""Each of a call's timeouts ends it with its own reason; a stray TimeoutError is a fault."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from websockets.asyncio.client import connect

from relay.call_control import transfer_call
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
    async with FakeAgent().running() as agent, \
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


async def test_a_timeout_inside_a_task_is_a_fault_not_the_maximum_duration(make_relay) -> None:
    async def script(session: AgentSession) -> None:
        await session.send({"type": "reply.started", "reply_id": "r1"})
        await session.tool_call("c1", "transfer_call", arguments={})
        await session.send({"type": "reply.done", "reply_id": "r1", "status": "completed"})

    async def transfer(call_sid: str, number: str) -> None:
        # A transfer that runs its own work in a task group, one part of which timed out.
        async with asyncio.TaskGroup() as tg:
            tg.create_task(asyncio.wait_for(asyncio.Event().wait(), 0.01))

    async with FakeAgent(script=script).running() as agent, \
            make_relay(agent, tools=[transfer_call], transfer_number="+15550009999",
                       hangup_timeout=0.2 * MS, max_call_seconds=30) as relay:
        relay.server.config.app.state.relay.transfer = transfer
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN,
                                      webhook_path="/twiml?observe=1") as call:
            assert await call.wait_closed(3 * MS) == 1011
        assert end_reason(call) == "relay error"
