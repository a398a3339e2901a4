"""Tools end to end: the real server over real sockets, the strict fake agent, a simulated caller.

Each test defines its tools inline with ``@tool`` and runs a whole call: the fake agent sends
``reply.started`` / ``tool.call`` / ``reply.done`` as the Voice Agent API does (agent-api.md
§2, §4.11) and checks every ``tool.result`` it gets; the caller is ``SimulatedCall``, which plays
audio on a real-time clock when ``playback_speed=1.0`` and echoes marks only once played.
Transfers go to the fake Twilio REST API (``tests/fake_twilio_rest.py``) on an ephemeral port.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from relay.call_control import end_call, transfer_call
from relay.local.caller import SimulatedCall
from relay.tools import ToolContext, tool
from tests.conftest import AUTH_TOKEN, MS
from tests.fake_twilio_rest import FakeTwilioRest
from tests.fakes import AgentSession, FakeAgent
from tests.helpers import FRAME_SECONDS, frame, reply_with_tool_call, speak

pytestmark = pytest.mark.anyio

ACCOUNT_SID = "AC" + "0" * 32  # what conftest's settings use
TRANSFER_TO = "+15550009999"


def loads(result: dict[str, Any]) -> Any:
    """The JSON value inside a ``tool.result`` (whose ``result`` must be a string)."""
    assert isinstance(result["result"], str), result
    return orjson.loads(result["result"])


def result_for(session: AgentSession, call_id: str) -> dict[str, Any]:
    (found,) = [m for m in session.of_type("tool.result") if m["call_id"] == call_id]
    return found


@dataclass
class Call:
    """One live call: the simulated caller and the agent session behind it."""

    call: SimulatedCall
    session: AgentSession


@contextlib.asynccontextmanager
async def phone_call(make_relay: Any, script: Callable[[AgentSession], Awaitable[None]] | None,
                     tools: list[Callable[..., Any]], *, playback_speed: float = 0.0,
                     **settings: Any) -> AsyncIterator[Call]:
    """Start the fake agent and the relay, dial in, and wait for the agent session to be ready."""
    async with FakeAgent(script=script).running() as agent, \
            make_relay(agent, tools=tools, **settings) as relay, \
            SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN,
                               playback_speed=playback_speed) as call:
        session = await agent.session()
        async with asyncio.timeout(3 * MS):
            await session.ready.wait()
        yield Call(call, session)


def assert_only_hang_ups(rest: FakeTwilioRest, call_sid: str) -> None:
    """Hanging up by closing the stream or by REST (Status=completed) are both fine."""
    assert rest.unexpected == []
    for request in rest.requests:
        assert request.call_sid == call_sid and request.form.get("Status") == ["completed"], request


# ---------------------------------------------------------------------- results and their timing


async def test_tool_result_has_the_call_id_and_waits_for_reply_done(make_relay) -> None:
    finished: list[str] = []
    both_finished = asyncio.Event()

    @tool
    async def add(a: int, b: int) -> dict[str, int]:
        """Add two numbers."""
        finished.append(f"{a}+{b}")
        if len(finished) == 2:
            both_finished.set()
        return {"sum": a + b}

    held: list[list[dict[str, Any]]] = []  # what the agent had received just before reply.done
    checked = asyncio.Event()

    async def script(session: AgentSession) -> None:
        await session.send({"type": "reply.started", "reply_id": "r1"})
        await session.tool_call("call_obj", "add", arguments={"a": 2, "b": 3})
        await session.tool_call("call_str", "add", arguments='{"a": 4, "b": 5}')
        await both_finished.wait()
        await asyncio.sleep(0.1 * MS)  # a result sent too early would have arrived by now
        held.append(session.of_type("tool.result"))
        checked.set()
        await session.send({"type": "reply.done", "reply_id": "r1", "status": "completed"})

    async with phone_call(make_relay, script, [add]) as c:
        results = await c.session.wait_for("tool.result", 2)
        async with asyncio.timeout(3 * MS):
            await checked.wait()
        assert held == [[]], "tool.result was sent before reply.done (after_reply timing)"
        assert {r["call_id"] for r in results} == {"call_obj", "call_str"}
        assert loads(result_for(c.session, "call_obj")) == {"sum": 5}
        assert loads(result_for(c.session, "call_str")) == {"sum": 9}
        assert all(r["is_error"] is False for r in results)
        # the tools were announced in the first session.update
        (update,) = c.session.of_type("session.update")
        (spec,) = update["session"]["tools"]
        assert spec["name"] == "add" and spec["parameters"]["required"] == ["a", "b"]
        # the agent waits longer than the relay's TOOL_TIMEOUT, so the relay answers first
        assert spec["timeout_seconds"] == math.ceil(1 * MS) + 5  # the tests' TOOL_TIMEOUT: 1 s
        await c.call.hang_up()
        await asyncio.wait_for(c.session.closed.wait(), 3 * MS)
    assert c.session.violations == []


async def test_result_of_a_slow_tool_is_held_while_a_new_reply_plays(make_relay) -> None:
    """reply.done must be the *latest* event: a reply that started since holds the result."""
    release, finished = asyncio.Event(), asyncio.Event()

    @tool
    async def lookup() -> str:
        """Look something up."""
        await release.wait()
        finished.set()
        return "found"

    held: list[list[dict[str, Any]]] = []  # what the agent had received just before reply.done
    checked = asyncio.Event()

    async def script(session: AgentSession) -> None:
        await reply_with_tool_call(session, "r1", "c1", "lookup")
        await speak(session, "r2", 0, "Still looking.")  # a filler that completes
        await session.send({"type": "reply.started", "reply_id": "r3"})
        release.set()
        await finished.wait()
        await asyncio.sleep(0.1 * MS)
        held.append(session.of_type("tool.result"))
        checked.set()
        await session.send({"type": "reply.done", "reply_id": "r3", "status": "completed"})

    async with phone_call(make_relay, script, [lookup]) as c:
        (result,) = await c.session.wait_for("tool.result")
        async with asyncio.timeout(3 * MS):
            await checked.wait()
        assert held == [[]], "tool.result was sent while a reply was playing"
        assert result["call_id"] == "c1" and loads(result) == "found"
    assert c.session.violations == []


async def test_immediate_timing_sends_the_result_before_reply_done(make_relay) -> None:
    @tool
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    before_done: list[dict[str, Any]] = []
    checked = asyncio.Event()

    async def script(session: AgentSession) -> None:
        await session.send({"type": "reply.started", "reply_id": "r1"})
        await session.tool_call("c1", "add", arguments={"a": 20, "b": 22})
        # the agent holds its reply.done until the result is in: immediate must not wait for it
        before_done.extend(await session.wait_for("tool.result", timeout=2 * MS))
        checked.set()
        await session.send({"type": "reply.done", "reply_id": "r1", "status": "completed"})

    async with phone_call(make_relay, script, [add], tool_result_timing="immediate") as c:
        async with asyncio.timeout(3 * MS):
            await checked.wait()
        (result,) = before_done
        assert result["call_id"] == "c1" and result["is_error"] is False
        assert loads(result) == 42
    assert c.session.violations == []


async def test_legacy_args_field_is_accepted(make_relay) -> None:
    @tool
    def greet(name: str, times: int = 1) -> str:
        """Greet someone."""
        return " ".join([f"hello {name}"] * times)

    @tool
    async def whoami(ctx: ToolContext) -> dict[str, Any]:
        """Who is calling (the context is injected, not part of the schema)."""
        return {"call_sid": ctx.call.call_sid, "caller": ctx.call.caller,
                "called": ctx.call.called, "parameters": dict(ctx.call.parameters)}

    async def script(session: AgentSession) -> None:
        await reply_with_tool_call(session, "r1", "c_obj", "greet", args={"name": "Ada"})
        await reply_with_tool_call(session, "r2", "c_str", "greet",
                                   args='{"name": "Bo", "times": 2}')
        await reply_with_tool_call(session, "r3", "c_none", "whoami")  # no arguments at all

    async with phone_call(make_relay, script, [greet, whoami]) as c:
        await c.session.wait_for("tool.result", 3)
        assert loads(result_for(c.session, "c_obj")) == "hello Ada"
        assert loads(result_for(c.session, "c_str")) == "hello Bo hello Bo"
        who = loads(result_for(c.session, "c_none"))
        assert who["call_sid"] == c.call.call_sid
        assert (who["caller"], who["called"]) == ("+15550001111", "+15550002222")
        assert "token" not in who["parameters"]
        assert all(r["is_error"] is False for r in c.session.of_type("tool.result"))
        specs = c.session.of_type("session.update")[0]["session"]["tools"]
        assert next(t for t in specs if t["name"] == "whoami")["parameters"]["properties"] == {}
    assert c.session.violations == []


# ---------------------------------------------------------------------- failures are answered


async def test_unknown_tool_is_answered_with_an_error(make_relay) -> None:
    @tool
    def known() -> str:
        """The only tool."""
        return "ok"

    async def script(session: AgentSession) -> None:
        await reply_with_tool_call(session, "r1", "c1", "no_such_tool", arguments={"x": 1})

    async with phone_call(make_relay, script, [known]) as c:
        (result,) = await c.session.wait_for("tool.result")
        assert result["call_id"] == "c1" and result["is_error"] is True
        body = loads(result)
        assert isinstance(body, dict) and "no_such_tool" in body["error"]
    assert c.session.violations == []


async def test_bad_arguments_are_answered_with_errors_and_the_tool_never_runs(make_relay) -> None:
    ran: list[tuple[int, int]] = []

    @tool
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        ran.append((a, b))
        return a + b

    bad: dict[str, dict[str, Any]] = {
        "missing": {"arguments": {"a": 1}},
        "wrong_type": {"arguments": {"a": "one", "b": 2}},
        "bool_is_not_int": {"arguments": {"a": True, "b": 2}},
        "unexpected": {"arguments": {"a": 1, "b": 2, "c": 3}},
        "not_json": {"arguments": "{not json"},
        "not_an_object": {"arguments": "[1, 2]"},
    }

    async def script(session: AgentSession) -> None:
        await session.send({"type": "reply.started", "reply_id": "r1"})
        for call_id, fields in bad.items():
            await session.tool_call(call_id, "add", **fields)
        await session.send({"type": "reply.done", "reply_id": "r1", "status": "completed"})

    async with phone_call(make_relay, script, [add]) as c:
        results = await c.session.wait_for("tool.result", len(bad))
        assert sorted(r["call_id"] for r in results) == sorted(bad)
        for r in results:
            assert r["is_error"] is True, r
            assert isinstance(loads(r)["error"], str) and loads(r)["error"]
        assert "'b'" in loads(result_for(c.session, "missing"))["error"]
        assert "'a'" in loads(result_for(c.session, "wrong_type"))["error"]
        assert "'c'" in loads(result_for(c.session, "unexpected"))["error"]
        assert ran == []
    assert c.session.violations == []


async def test_a_tool_that_raises_is_answered_with_an_error_and_the_call_goes_on(
        make_relay) -> None:
    @tool
    async def explode() -> str:
        """Always fails."""
        raise RuntimeError("secret internal detail")

    @tool
    def refuse(city: str) -> str:
        """Refuses on purpose, with a message for the agent."""
        raise ValueError(f"I cannot look up {city}.")

    async def script(session: AgentSession) -> None:
        await session.send({"type": "reply.started", "reply_id": "r1"})
        await session.tool_call("c1", "explode")
        await session.tool_call("c2", "refuse", arguments={"city": "Paris"})
        await session.send({"type": "reply.done", "reply_id": "r1", "status": "completed"})
        await session.wait_for("tool.result", 2)
        await speak(session, "r2", 3, "Sorry, that did not work.", first=100)

    async with phone_call(make_relay, script, [explode, refuse]) as c:
        await c.session.wait_for("tool.result", 2)
        exploded, refused = result_for(c.session, "c1"), result_for(c.session, "c2")
        assert exploded["is_error"] is True and refused["is_error"] is True
        assert "secret internal detail" not in exploded["result"]
        assert "explode" in loads(exploded)["error"]
        assert loads(refused) == {"error": "I cannot look up Paris."}
        # the call goes on both ways
        heard = await c.call.wait_for("media", 3)
        assert [m["media"]["payload"] for m in heard] == [frame(100 + i) for i in range(3)]
        for i in range(5):
            await c.call.send_media(frame(i))
        audio = await c.session.wait_for("input.audio", 5)
        assert [m["audio"] for m in audio] == [frame(i) for i in range(5)]
        assert not c.call.closed.is_set()
    assert c.session.violations == []


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_a_tool_that_hangs_is_stopped_at_its_timeout(make_relay, kind: str) -> None:
    unblock = threading.Event()  # lets the sync tool's worker thread end with the test

    @tool
    async def hang_async() -> str:
        """Never returns."""
        await asyncio.Event().wait()
        return "never"

    @tool
    def hang_sync() -> str:
        """Blocks its thread."""
        unblock.wait(5)
        return "too late"

    name = f"hang_{kind}"
    timeout = 0.3 * MS
    sent_at: list[float] = []

    async def script(session: AgentSession) -> None:
        sent_at.append(time.monotonic())
        await reply_with_tool_call(session, "r1", "c1", name)

    try:
        async with phone_call(make_relay, script, [hang_async, hang_sync],
                              tool_timeout=timeout) as c:
            (result,) = await c.session.wait_for("tool.result", timeout=3 * MS)
            elapsed = time.monotonic() - sent_at[0]
            assert result["call_id"] == "c1" and result["is_error"] is True
            assert name in loads(result)["error"]
            assert timeout * 0.9 <= elapsed < timeout + 1.0 * MS, elapsed
            # the call is unaffected
            await c.call.send_media(frame(1))
            (audio,) = await c.session.wait_for("input.audio")
            assert audio["audio"] == frame(1)
    finally:
        unblock.set()
    assert c.session.violations == []


# ---------------------------------------------------------------------- concurrency, cancellation


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_audio_keeps_flowing_both_ways_while_a_slow_tool_runs(make_relay, kind: str) -> None:
    started = threading.Event()
    release = threading.Event()
    async_release = asyncio.Event()

    @tool
    async def slow_async() -> dict[str, bool]:
        """Takes its time."""
        started.set()
        await async_release.wait()
        return {"done": True}

    @tool
    def slow_sync() -> dict[str, bool]:
        """Takes its time, in a worker thread."""
        started.set()
        # if this ran on the event loop, nothing could reach the agent until it timed out
        return {"done": release.wait(3 * MS)}

    name = f"slow_{kind}"

    async def script(session: AgentSession) -> None:
        await reply_with_tool_call(session, "r1", "c1", name)

    async with phone_call(make_relay, script, [slow_async, slow_sync], tool_timeout=5 * MS) as c:
        assert await asyncio.to_thread(started.wait, 3 * MS)  # set from a worker thread
        for i in range(20):
            await c.call.send_media(frame(i))
        for i in range(3):
            await c.session.send({"type": "reply.audio", "reply_id": "filler",
                                  "data": frame(500 + i)})
        audio = await c.session.wait_for("input.audio", 20)
        heard = await c.call.wait_for("media", 3)
        assert c.session.of_type("tool.result") == []
        release.set()
        async_release.set()
        (result,) = await c.session.wait_for("tool.result")
        assert [m["audio"] for m in audio] == [frame(i) for i in range(20)]
        assert [m["media"]["payload"] for m in heard] == [frame(500 + i) for i in range(3)]
        kinds = [m["type"] for m in c.session.received]
        assert kinds.index("tool.result") > max(
            i for i, k in enumerate(kinds) if k == "input.audio")
        assert result["is_error"] is False and loads(result) == {"done": True}
    assert c.session.violations == []


async def test_hang_up_during_a_tool_cancels_it_and_sends_no_result(make_relay) -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()
    finished: list[str] = []

    @tool
    async def slow() -> str:
        """Takes far too long."""
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        finished.append("slow")
        return "done"

    async def script(session: AgentSession) -> None:
        await reply_with_tool_call(session, "r1", "c1", "slow")

    async with phone_call(make_relay, script, [slow], tool_timeout=10 * MS) as c:
        async with asyncio.timeout(3 * MS):
            await started.wait()
        await c.call.hang_up()
        async with asyncio.timeout(3 * MS):
            await cancelled.wait()
            await c.session.closed.wait()
    assert c.session.ended.is_set(), "session.end must be sent when the caller hangs up"
    assert c.session.of_type("tool.result") == []
    assert finished == []
    assert c.session.violations == []


async def test_results_of_an_interrupted_reply_are_dropped(make_relay) -> None:
    release, fast_done = asyncio.Event(), asyncio.Event()

    @tool
    async def slow() -> str:
        """Finishes after its reply was interrupted."""
        await release.wait()
        return "stale"

    @tool
    async def fast() -> str:
        """Finishes before its reply is interrupted."""
        fast_done.set()
        return "stale too"

    @tool
    async def probe() -> str:
        """A later, uninterrupted call."""
        return "fresh"

    async def script(session: AgentSession) -> None:
        # c_fast finishes while r1 plays (held), c_slow after r1 is interrupted
        await session.send({"type": "reply.started", "reply_id": "r1"})
        await session.tool_call("c_slow", "slow")
        await session.tool_call("c_fast", "fast")
        await fast_done.wait()
        await session.send({"type": "input.speech.started"})
        await session.send({"type": "reply.done", "reply_id": "r1", "status": "interrupted"})
        release.set()
        # c_probe's result is sent after anything c_slow/c_fast could have produced
        await reply_with_tool_call(session, "r2", "c_probe", "probe")

    async with phone_call(make_relay, script, [slow, fast, probe]) as c:
        await c.session.wait_for("tool.result")
        await asyncio.sleep(0.05 * MS)
        results = c.session.of_type("tool.result")
        assert [r["call_id"] for r in results] == ["c_probe"]
        assert loads(results[0]) == "fresh"
    assert c.session.violations == []


# ---------------------------------------------------------------------- end_call


async def test_end_call_hangs_up_after_the_goodbye_was_heard(make_relay) -> None:
    goodbye_frames = 25  # 0.5 s, played in real time by the simulated caller

    async def script(session: AgentSession) -> None:
        await reply_with_tool_call(session, "r1", "c1", "end_call",
                                   arguments={"reason": "caller said goodbye"})
        await session.wait_for("tool.result")
        await speak(session, "r2", goodbye_frames, "Goodbye!", first=700)

    async with FakeTwilioRest(AUTH_TOKEN).serving() as rest, \
            phone_call(make_relay, script, [end_call], playback_speed=1.0,
                       twilio_api_base_url=rest.base_url) as c:
        (result,) = await c.session.wait_for("tool.result")
        assert result["call_id"] == "c1" and result["is_error"] is False
        assert loads(result)["status"] == "ending"
        assert await c.call.wait_closed(5 * MS) == 1000
        closed_at = time.monotonic()
        media = [r for r in c.call.received if r.message["event"] == "media"]
        assert [r.message["media"]["payload"] for r in media] == [
            frame(700 + i) for i in range(goodbye_frames)]
        marks = [r.message["mark"]["name"] for r in c.call.received
                 if r.message["event"] == "mark"]
        assert marks[-1] == "hangup" and marks.count("hangup") == 1
        hangup = next(r for r in c.call.received
                      if r.message.get("mark", {}).get("name") == "hangup")
        assert c.call.received.index(hangup) > c.call.received.index(media[-1])
        played = goodbye_frames * FRAME_SECONDS
        assert closed_at - media[-1].at >= played - 0.05, "hung up before the goodbye was heard"
        async with asyncio.timeout(3 * MS):
            await c.session.closed.wait()
    assert c.session.ended.is_set(), "the agent session must be ended with session.end"
    assert_only_hang_ups(rest, c.call.call_sid)
    assert c.session.violations == []


async def test_end_call_without_a_goodbye_hangs_up_after_the_timeout(make_relay) -> None:
    hangup_timeout = 0.3 * MS
    sent_at: list[float] = []

    async def script(session: AgentSession) -> None:
        sent_at.append(time.monotonic())
        await reply_with_tool_call(session, "r1", "c1", "end_call")
        # ...and the agent never speaks again

    async with FakeTwilioRest(AUTH_TOKEN).serving() as rest, \
            phone_call(make_relay, script, [end_call], playback_speed=1.0,
                       twilio_api_base_url=rest.base_url, hangup_timeout=hangup_timeout) as c:
        (result,) = await c.session.wait_for("tool.result")
        assert result["is_error"] is False
        assert await c.call.wait_closed(3 * MS) == 1000
        elapsed = time.monotonic() - sent_at[0]
        assert hangup_timeout * 0.9 <= elapsed < hangup_timeout + 1.0 * MS, elapsed
        assert "hangup" not in [m["mark"]["name"] for m in c.call.events("mark")]
        async with asyncio.timeout(3 * MS):
            await c.session.closed.wait()
    assert c.session.ended.is_set()
    assert_only_hang_ups(rest, c.call.call_sid)
    assert c.session.violations == []


# ---------------------------------------------------------------------- transfer_call


async def test_transfer_call_dials_through_the_action_without_rest_credentials(
        make_relay) -> None:
    announcement = 10  # 0.2 s

    async def script(session: AgentSession) -> None:
        await reply_with_tool_call(session, "r1", "c1", "transfer_call", arguments={})
        await session.wait_for("tool.result")
        await speak(session, "r2", announcement, "Transferring you now.", first=300)

    # No account SID: the REST API cannot be used, and need not be.
    async with FakeTwilioRest(AUTH_TOKEN).serving() as rest, \
            phone_call(make_relay, script, [transfer_call], playback_speed=1.0,
                       twilio_account_sid=None, twilio_api_base_url=rest.base_url,
                       transfer_number=TRANSFER_TO) as c:
        (result,) = await c.session.wait_for("tool.result")
        assert result["is_error"] is False
        assert loads(result)["to"] == TRANSFER_TO
        assert await c.call.wait_closed(3 * MS) == 1000
        closed_at = time.monotonic()
        step = await c.call.follow_action()
        assert step is not None and step.dials == TRANSFER_TO and step.says == ()
        # only after the announcement was played and its "hangup" mark echoed
        media = c.call.events("media")
        assert [m["media"]["payload"] for m in media] == [
            frame(300 + i) for i in range(announcement)]
        last_audio = [r.at for r in c.call.received if r.message["event"] == "media"][-1]
        assert closed_at - last_audio >= announcement * FRAME_SECONDS - 0.05
        assert [m["mark"]["name"] for m in c.call.events("mark")][-1] == "hangup"
        async with asyncio.timeout(3 * MS):
            await c.session.closed.wait()
        assert c.session.ended.is_set()
        assert rest.requests == [] and rest.unexpected == []
    assert c.session.violations == []


async def test_transfer_to_a_number_not_allowed_is_refused(make_relay) -> None:
    async def script(session: AgentSession) -> None:
        await reply_with_tool_call(session, "r1", "c1", "transfer_call",
                                   arguments={"number": "+15550001234"})
        await session.wait_for("tool.result")
        await speak(session, "r2", 2, "Sorry, I cannot transfer you there.", first=40)

    async with FakeTwilioRest(AUTH_TOKEN).serving() as rest, \
            phone_call(make_relay, script, [transfer_call], playback_speed=1.0,
                       twilio_api_base_url=rest.base_url, transfer_number=TRANSFER_TO,
                       hangup_timeout=0.2 * MS) as c:
        (result,) = await c.session.wait_for("tool.result")
        assert result["is_error"] is True
        assert "+15550001234" in loads(result)["error"]
        # the reply after it is an ordinary one: echoed mark, no "hangup", no transfer
        marks = await c.call.wait_for("mark", 2)
        assert "hangup" not in [m["mark"]["name"] for m in marks]
        await asyncio.sleep(0.3 * MS)  # past hangup_timeout: nothing was scheduled
        assert not c.call.closed.is_set()
        assert rest.requests == [] and rest.unexpected == []
    assert c.session.violations == []


async def test_transfer_happens_once_and_ends_the_agent_session(make_relay) -> None:
    """The hang-up deadline must not end the call a second time; the session ends at once."""
    hangup_timeout = 0.3 * MS

    async def script(session: AgentSession) -> None:
        await reply_with_tool_call(session, "r1", "c1", "transfer_call")
        await session.wait_for("tool.result")
        await speak(session, "r2", 3, "Transferring you.", first=300)

    async with FakeTwilioRest(AUTH_TOKEN).serving() as rest, \
            phone_call(make_relay, script, [transfer_call], playback_speed=1.0,
                       twilio_api_base_url=rest.base_url, transfer_number=TRANSFER_TO,
                       hangup_timeout=hangup_timeout) as c:
        # the relay ends the agent session and closes the stream itself
        assert await c.call.wait_closed(3 * MS) == 1000
        async with asyncio.timeout(3 * MS):
            await c.session.closed.wait()
        assert c.session.ended.is_set()
        await asyncio.sleep(hangup_timeout + 0.1 * MS)  # past the hang-up deadline
        step = await c.call.follow_action()
        assert step is not None and step.dials == TRANSFER_TO
        assert rest.requests == [], "transfers need no REST request"
    assert c.session.violations == []
