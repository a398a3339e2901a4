"""A Twilio stream lost mid-call, on an instance that lives: the call is streamed again.

When Twilio's side of the stream drops without a close (a network path or a load balancer cut
it), the relay keeps the agent session instead of ending it; Twilio's ``<Connect action>``
request gets a new ``<Connect><Stream>`` for the same call, and the new stream resumes the
session, a bounded number of times. One real relay on port 0, the strict fake agent, and the
simulated Twilio caller, whose connection is cut as the network would cut it.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from relay.local.caller import SimulatedCall
from relay.record_log import read_records
from relay.takeover import MAX_RESTREAMS
from tests.fakes import AgentSession, FakeAgent
from tests.helpers import AUTH_TOKEN, MS, echoed, eventually, wait_for_records

pytestmark = pytest.mark.anyio


def lose(call: SimulatedCall) -> None:
    """Twilio's side of the stream is gone: the TCP connection ends, no stop, no close frame."""
    call.ws.transport.abort()


def ended_sessions(agent: FakeAgent) -> list[AgentSession]:
    return [s for s in agent.sessions if s.of_type("session.end")]


async def test_a_lost_stream_is_streamed_again_and_resumes_the_same_session(
        make_relay: Any, tmp_path: Path) -> None:
    async with FakeAgent(echo=True).running() as agent, \
            make_relay(agent, call_log_dir=str(tmp_path / "calls"),
                       agent_greeting="") as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            await echoed(call, bytes(range(160)), 5 * MS)
            first = agent.sessions[0]
            assert first.session_id is not None
            lose(call)
            lost = time.monotonic()
            await asyncio.wait_for(first.closed.wait(), 5 * MS)
            assert ended_sessions(agent) == []  # closed for a resume, not ended

            step = await call.follow_action()
            assert step is not None and "<Stream" in step.twiml, step
            assert step.streams == call.stream.url and not step.hangs_up
            assert step.describe() == f"Twilio streams the call again to {call.stream.url}"
            async with SimulatedCall.stream_again(call, step.twiml) as again:
                assert again.stream.parameters["restream"] == "1"
                assert again.stream.parameters["token"] != call.stream.parameters["token"]
                await echoed(again, bytes(range(96, 256)), 5 * MS)
                gap = time.monotonic() - lost
                resumed = agent.sessions[-1]
                assert resumed.resumed and resumed.session_id == first.session_id
                assert resumed.received[0] == {"type": "session.resume",
                                               "session_id": first.session_id}
                await again.hang_up()
                assert await again.wait_closed(5 * MS) is not None
            await eventually(lambda: len(read_records(tmp_path / "calls")) >= 2, 5 * MS)
    print(f"\ncaller's gap after a lost stream: {gap * 1000:.0f} ms (the drop to the agent's "
          "audio again, the action request and the new stream included)")
    assert gap < 3.0 * MS
    records = read_records(tmp_path / "calls")
    assert sorted(r["outcome"] for r in records) == ["caller_hung_up", "stream_lost"]
    assert {r["call_sid"] for r in records} == {call.call_sid}
    assert [s for s in agent.sessions if s.violations] == []
    assert len(ended_sessions(agent)) == 1  # the resumed session, once the caller hung up


async def test_once_the_restreams_are_used_up_a_lost_stream_ends_the_session_and_falls_back(
        make_relay: Any, tmp_path: Path) -> None:
    async with FakeAgent(echo=True).running() as agent, \
            make_relay(agent, call_log_dir=str(tmp_path / "calls"), agent_greeting="",
                       fallback_message="Sorry, we lost you.") as relay, AsyncExitStack() as own:
        call = await own.enter_async_context(
            SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN))
        for restream in range(1, MAX_RESTREAMS + 1):
            await echoed(call, bytes([restream]) * 160, 5 * MS)
            lose(call)
            step = await call.follow_action()
            assert step is not None and "<Stream" in step.twiml, (restream, step)
            call = await own.enter_async_context(SimulatedCall.stream_again(call, step.twiml))
            assert call.stream.parameters["restream"] == str(restream)
        await echoed(call, b"\x7f" * 160, 5 * MS)
        last = agent.sessions[-1]
        lose(call)  # no re-stream left: the session is ended, the caller gets the fallback
        await asyncio.wait_for(last.ended.wait(), 5 * MS)
        step = await call.follow_action()
        assert step is not None and "<Stream" not in step.twiml
        assert step.says == ("Sorry, we lost you.",)
        await eventually(lambda: len(read_records(tmp_path / "calls")) > MAX_RESTREAMS, 5 * MS)
    outcomes = [r["outcome"] for r in read_records(tmp_path / "calls")]
    assert sorted(outcomes) == sorted(["stream_lost"] * MAX_RESTREAMS + ["stream_failed"])
    # one conversation throughout: the first session, resumed each time (each new stream's
    # link opened at its upgrade, before its start said it resumes, is closed unused)
    assert {s.session_id for s in agent.sessions if s.session_id} == {"sess_test"}
    assert len([s for s in agent.sessions if s.resumed]) == MAX_RESTREAMS
    assert ended_sessions(agent) == [last]
    assert [s for s in agent.sessions if s.violations] == []


async def test_a_stream_lost_before_the_session_was_ready_falls_back(
        make_relay: Any, tmp_path: Path) -> None:
    async with FakeAgent(ready=False).running() as agent, \
            make_relay(agent, call_log_dir=str(tmp_path / "calls")) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            session = await agent.session()
            await session.wait_for("session.update", timeout=5 * MS)
            lose(call)  # no session to resume yet
            await asyncio.wait_for(session.closed.wait(), 5 * MS)
            step = await call.follow_action()
            assert step is not None and "<Stream" not in step.twiml and step.says
        (record,) = await wait_for_records(tmp_path / "calls", 1)
    assert record["outcome"] == "stream_failed"


async def test_a_stream_whose_call_moved_to_another_stream_leaves_the_session_to_it(
        make_relay: Any) -> None:
    async with FakeAgent(echo=True).running() as agent, \
            make_relay(agent, agent_greeting="") as relay:
        directory = relay.server.config.app.state.relay.shared.directory
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            await echoed(call, bytes(range(160)), 5 * MS)
            session = agent.sessions[0]
            key = "live:" + call.call_sid
            await eventually(lambda: bool(directory.mine() and directory.mine()[0].session_id),
                             5 * MS)
            (mine,) = directory.mine()
            # Another instance takes the call over (as after a stall of this one) ...
            theirs = replace(mine, holder="another-stream", instance="elsewhere", restreams=1)
            await directory.store.put(key, theirs.to_json(), ttl=60)
            await call.hang_up()  # ... and this stream then ends, here for another reason
            await call.wait_closed(5 * MS)
        await asyncio.wait_for(session.closed.wait(), 5 * MS)
        assert not session.of_type("session.end")  # the session is the new stream's now
        assert await directory.store.get(key) == theirs.to_json()  # and so is the entry
