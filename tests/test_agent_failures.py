"""When the agent fails: what the caller hears, and how soon, for every fault.

Each test places a call through the real relay against the strict fake agent and follows the
``<Connect action>`` as Twilio would once the relay closes the stream, so it asserts what the
caller hears next (the agent's audio, the fallback's words, a hang-up, a dial) and within what
time of Twilio's ``start``. Two tests run with the default timeouts, to show the 8 s budget
holds for a silent agent and for one that hangs in the handshake; the others scale the
timeouts down so the suite stays fast.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
import time
from typing import Any

import pytest

from relay.call_control import end_call
from relay.config import Settings
from relay.local.caller import NextStep, SimulatedCall
from tests.conftest import AUTH_TOKEN, MS
from tests.fakes import AgentSession, FakeAgent

pytestmark = pytest.mark.anyio

BUDGET = 8.0  # the promise: the agent or the fallback within 8 s of start
DEFAULTS = Settings()
# Scaled-down recovery timeouts for the fast tests (the defaults are tested separately).
FAST: dict[str, Any] = dict(agent_open_timeout=0.4 * MS, agent_ready_timeout=0.4 * MS,
                            agent_retry_backoff=0.05, agent_resume_timeout=0.4 * MS,
                            agent_wait_budget=2.0 * MS)
DEFAULT_RECOVERY: dict[str, Any] = dict(
    agent_open_timeout=DEFAULTS.agent_open_timeout,
    agent_ready_timeout=DEFAULTS.agent_ready_timeout,
    agent_retry_backoff=DEFAULTS.agent_retry_backoff,
    agent_resume_timeout=DEFAULTS.agent_resume_timeout,
    agent_wait_budget=DEFAULTS.agent_wait_budget)
FALLBACK = "Sorry, the assistant is away."
RECONNECT = "Sorry, I lost you. Say again?"


def frame(i: int) -> str:
    """A distinct 160-byte μ-law frame, base64 as Twilio sends it."""
    return base64.b64encode(i.to_bytes(4, "big") + bytes([0xFF]) * 156).decode()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def speak(session: AgentSession, reply_id: str, first: int, count: int) -> None:
    await session.send({"type": "reply.started", "reply_id": reply_id})
    for i in range(count):
        await session.send({"type": "reply.audio", "reply_id": reply_id,
                            "data": frame(first + i)})
    await session.send({"type": "reply.done", "reply_id": reply_id, "status": "completed"})


async def greet(session: AgentSession) -> None:
    await speak(session, "greet", 900, 3)


async def greet_then_drop(session: AgentSession) -> None:
    """A first session that greets, then drops (no close frame, no ``session.ended``)."""
    await greet(session)
    await asyncio.sleep(0.05)
    session.drop()


async def next_step(call: SimulatedCall, within: float = 10.0) -> NextStep:
    """Wait for the relay to close the stream, then ask the action what the caller hears."""
    await call.wait_closed(within)
    step = await call.follow_action()
    assert step is not None, "the TwiML must name a <Connect action>"
    return step


def assert_fallback(step: NextStep, within: float) -> None:
    assert step.says == (FALLBACK,) and step.hangs_up and step.dials is None, step
    assert step.ms / 1000 < within, f"fallback after {step.ms:.0f} ms"


FAULT_LINES = ("agent attempt failed", "agent failed", "agent resume failed",
               "agent link lost", "agent error")


def agent_faults(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The one line each fault gets (``[CallSid] agent …``)."""
    return [r for r in caplog.records if r.name == "relay.call"
            and r.getMessage().partition("] ")[2].startswith(FAULT_LINES)]


@pytest.fixture(autouse=True)
def _logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relay.call")


# ---------------------------------------------------------------------- before ready

async def test_unreachable_agent_is_retried_once_then_the_caller_hears_the_fallback(
        make_relay, caplog) -> None:
    port = closed_port()
    async with FakeAgent().running() as agent, make_relay(
            agent, agent_ws_url=f"ws://127.0.0.1:{port}/v1/ws", fallback_message=FALLBACK,
            **FAST) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            step = await next_step(call)
            assert call.close_code == 1011 and call.events("media") == []
    assert_fallback(step, 2 * MS)
    retried, final = agent_faults(caplog)
    assert "retrying" in retried.getMessage() and retried.levelname == "INFO"
    assert "fallback" in final.getMessage() and final.levelname == "ERROR"
    assert call.call_sid in final.getMessage() and "caller waited" in final.getMessage()


async def test_http_401_on_the_upgrade_is_not_retried_and_names_the_api_key(
        make_relay, caplog) -> None:
    async with FakeAgent(refuse_status=401).running() as agent, make_relay(
            agent, fallback_message=FALLBACK, fallback_number="+15550001234", **FAST) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            step = await next_step(call)
    assert agent.connections == 1
    assert step.says == (FALLBACK,) and step.dials == "+15550001234"
    assert step.ms < 1000 * MS
    (fault,) = agent_faults(caplog)
    assert fault.levelname == "ERROR" and "HTTP 401" in fault.getMessage()
    assert "Check ASSEMBLYAI_API_KEY." in fault.getMessage()


async def test_http_503_on_the_upgrade_is_retried_once_then_falls_back(make_relay) -> None:
    async with FakeAgent(refuse_status=503).running() as agent, make_relay(
            agent, fallback_message=FALLBACK, **FAST) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            step = await next_step(call)
    assert agent.connections == 2
    gap = agent.upgrade_times[1] - agent.upgrade_times[0]
    assert gap >= FAST["agent_retry_backoff"]
    assert_fallback(step, 1 * MS)


async def test_a_503_then_a_healthy_agent_is_heard_after_the_retry(make_relay) -> None:
    async with FakeAgent(faults=["http:503"], script=greet).running() as agent, make_relay(
            agent, **FAST) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            heard = await call.wait_for("media", 3, 2 * MS)
            assert [m["media"]["payload"] for m in heard] == [frame(900 + i) for i in range(3)]
            first_audio = next(r.at for r in call.received if r.message["event"] == "media")
            assert first_audio - call.started_at < 1 * MS
    assert agent.connections == 2 and agent.sessions[0].violations == []


async def test_a_retryable_session_error_before_ready_is_retried(make_relay, caplog) -> None:
    async with FakeAgent(faults=["error:at_capacity"], script=greet).running() as agent, \
            make_relay(agent, **FAST) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            await call.wait_for("media", 3, 2 * MS)
    first, second = agent.sessions
    assert first.of_type("session.update") and second.of_type("session.update")
    assert second.violations == []
    (retry,) = agent_faults(caplog)
    assert "at_capacity" in retry.getMessage() and "retrying" in retry.getMessage()


async def test_an_invalid_voice_is_not_retried_and_names_agent_voice(make_relay, caplog) -> None:
    async def bad_voice(session: AgentSession) -> None: ...

    agent = FakeAgent(faults=["error:invalid_value:output.voice"], script=bad_voice)
    async with agent.running(), make_relay(agent, fallback_message=FALLBACK, agent_voice="claire",
                                           **FAST) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            step = await next_step(call)
    assert agent.connections == 1
    assert_fallback(step, 1 * MS)
    (fault,) = agent_faults(caplog)
    assert fault.levelname == "ERROR" and "invalid_value" in fault.getMessage()
    assert "Check AGENT_VOICE." in fault.getMessage()


async def test_a_silent_agent_gets_the_fallback_within_8_s_with_the_default_timeouts(
        make_relay, caplog) -> None:
    async with FakeAgent(ready=False).running() as agent, make_relay(
            agent, fallback_message=FALLBACK, **DEFAULT_RECOVERY) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            for i in range(10):  # caller audio before ready never reaches the agent
                await call.send_media(frame(i))
            step = await next_step(call, within=BUDGET + 2)
    assert agent.connections == 2  # retried once
    assert_fallback(step, BUDGET)
    assert all(s.of_type("input.audio") == [] for s in agent.sessions)
    assert all(s.violations == [] for s in agent.sessions)


async def test_an_agent_hanging_in_the_handshake_gets_the_fallback_within_8_s(
        make_relay) -> None:
    async with FakeAgent(faults=["hang", "hang"]).running() as agent, make_relay(
            agent, fallback_message=FALLBACK, **DEFAULT_RECOVERY) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            step = await next_step(call, within=BUDGET + 2)
    assert agent.connections == 2
    assert_fallback(step, BUDGET)


# ---------------------------------------------------------------------- mid-call

async def test_a_drop_mid_call_is_resumed_and_audio_flows_byte_for_byte(make_relay,
                                                                       caplog) -> None:
    dropped = asyncio.Event()

    async def first(session: AgentSession) -> None:
        await greet(session)
        await session.wait_for("input.audio", 20)
        await session.send({"type": "reply.started", "reply_id": "long"})
        await session.send({"type": "reply.audio", "reply_id": "long", "data": frame(950)})
        session.drop()  # mid-reply: no close frame, no session.ended
        dropped.set()

    async def resumed(session: AgentSession) -> None:
        await speak(session, "after", 970, 2)

    agent = FakeAgent(script=first, resume_script=resumed, echo=False)
    async with agent.running(), make_relay(agent, **FAST) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            await call.wait_for("media", 3)
            before = [frame(i) for i in range(20)]
            for payload in before:
                await call.send_media(payload)
            await dropped.wait()
            dropped_at = time.monotonic()
            gap = [frame(100 + i) for i in range(10)]
            for payload in gap:  # the caller talks while the agent is gone
                await call.send_media(payload)
            new = await agent.session(1)
            await asyncio.wait_for(new.ready.wait(), 2 * MS)
            heard = await call.wait_for("media", 6, 2 * MS)
            back_at = next(r.at for r in call.received
                           if r.message["event"] == "media"
                           and r.message["media"]["payload"] == frame(970))
            after = [frame(200 + i) for i in range(20)]
            for payload in after:
                await call.send_media(payload)
            await new.wait_for("input.audio", len(after))
            await call.hang_up()
    old = agent.sessions[0]
    assert new.resumed and new.session_id == old.session_id == "sess_test"
    assert new.received[0] == {"type": "session.resume", "session_id": "sess_test"}
    assert new.authorization == "Bearer resume_test"  # the resume token, not the API key
    assert [m["audio"] for m in old.of_type("input.audio")] == before
    assert [m["audio"] for m in new.of_type("input.audio")] == after  # the gap: dropped
    payloads = [m["media"]["payload"] for m in heard]
    assert payloads == [frame(900), frame(901), frame(902), frame(950), frame(970), frame(971)]
    clear_at = [i for i, r in enumerate(call.received) if r.message["event"] == "clear"]
    assert clear_at, "the reply playing at the drop is cut for the caller"
    assert back_at - dropped_at < BUDGET
    assert not any(s.violations for s in agent.sessions)
    lost = [r for r in agent_faults(caplog) if "lost" in r.getMessage()]
    assert len(lost) == 1 and "sess_test" in lost[0].getMessage()
    assert any("resumed after" in r.getMessage() for r in caplog.records)


async def test_a_refused_resume_opens_a_fresh_session_with_the_reconnect_greeting(
        make_relay, caplog) -> None:
    async def fresh(session: AgentSession) -> None:
        if len(agent.sessions) == 3:
            await speak(session, "again", 980, 2)

    agent = FakeAgent(script=greet_then_drop, resume="refuse")
    agent.script = lambda s: greet_then_drop(s) if s is agent.sessions[0] else fresh(s)
    async with agent.running(), make_relay(agent, agent_reconnect_greeting=RECONNECT,
                                           **FAST) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            heard = await call.wait_for("media", 5, 3 * MS)
            assert [m["media"]["payload"] for m in heard[3:]] == [frame(980), frame(981)]
            await call.send_media(frame(7))
            fresh_session = await agent.session(2)
            (audio,) = await fresh_session.wait_for("input.audio")
            assert audio["audio"] == frame(7)
            await call.hang_up()
    _, refused, fresh_session = agent.sessions
    assert refused.received[0]["type"] == "session.resume"
    update = fresh_session.received[0]
    assert update["type"] == "session.update"
    assert update["session"]["greeting"] == RECONNECT
    assert update["session"]["system_prompt"] == relay.settings.agent_system_prompt
    assert fresh_session.session_id != agent.sessions[0].session_id
    assert not any(s.violations for s in agent.sessions)
    assert any("fresh agent session after" in r.getMessage() for r in caplog.records)


async def after_a_drop(make_relay, agent: FakeAgent) -> tuple[SimulatedCall, NextStep, float]:
    """A call whose first session greets, then drops: the call, what the caller hears next, and
    how long after the drop."""
    async with agent.running(), make_relay(agent, fallback_message=FALLBACK, **FAST) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            await call.wait_for("media", 3)
            dropped_at = time.monotonic()
            step = await next_step(call)
            return call, step, time.monotonic() - dropped_at


async def test_resume_and_fresh_session_both_failing_gets_the_fallback(make_relay) -> None:
    agent = FakeAgent(script=greet_then_drop, resume="refuse",
                      faults=[None, None, "http:503", "http:503"])
    _, step, gave_up_after = await after_a_drop(make_relay, agent)
    assert agent.connections == 4  # resume, fresh, the fresh one's retry
    assert_fallback(step, 10 * MS)
    assert gave_up_after < FAST["agent_wait_budget"] + 1 * MS


async def test_a_resume_that_never_answers_opens_a_fresh_session_in_time(make_relay) -> None:
    async def again(session: AgentSession) -> None:
        if not session.resumed and len(agent.sessions) > 1:
            await speak(session, "again", 980, 1)

    agent = FakeAgent(resume="silent")
    agent.script = lambda s: greet_then_drop(s) if s is agent.sessions[0] else again(s)
    async with agent.running(), make_relay(agent, **FAST) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            await call.wait_for("media", 3)
            dropped_at = time.monotonic()
            await call.wait_for("media", 4, 3 * MS)
            assert time.monotonic() - dropped_at < FAST["agent_wait_budget"] + 0.5 * MS
            await call.hang_up()


async def tool_across_a_drop(make_relay, *, resume: str) -> tuple[FakeAgent, list[str]]:
    release = asyncio.Event()

    async def slow_lookup() -> dict[str, str]:
        """Look something up slowly."""
        await release.wait()
        return {"answer": "42"}

    async def first(session: AgentSession) -> None:
        await session.send({"type": "reply.started", "reply_id": "r1"})
        await session.tool_call("c1", "slow_lookup", arguments={})
        await session.send({"type": "reply.done", "reply_id": "r1", "status": "completed"})
        await asyncio.sleep(0.05)
        session.drop()

    agent = FakeAgent(script=first, resume=resume)
    agent.script = lambda s: first(s) if s is agent.sessions[0] else asyncio.sleep(0)
    async with agent.running(), make_relay(agent, tools=[slow_lookup], tool_timeout=5 * MS,
                                           **FAST) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            new = await agent.session(1 if resume == "accept" else 2)
            await asyncio.wait_for(new.ready.wait(), 2 * MS)
            release.set()
            if resume == "accept":
                await new.wait_for("tool.result")
            else:
                await asyncio.sleep(0.3 * MS)
            await call.hang_up()
    return agent, [m["call_id"] for s in agent.sessions for m in s.of_type("tool.result")]


async def test_a_tool_running_across_a_resumed_drop_answers_on_the_resumed_session(
        make_relay, caplog) -> None:
    agent, results = await tool_across_a_drop(make_relay, resume="accept")
    assert results == ["c1"]
    assert agent.sessions[1].of_type("tool.result")[0]["call_id"] == "c1"
    assert not any(s.violations for s in agent.sessions)  # c1 is known to the resumed session
    assert any("c1" in r.getMessage() and "resumed session" in r.getMessage()
               for r in caplog.records)


async def test_a_tool_running_across_a_drop_is_dropped_after_a_fresh_session(
        make_relay, caplog) -> None:
    agent, results = await tool_across_a_drop(make_relay, resume="refuse")
    assert results == []  # the fresh session never asked for c1
    assert not any(s.violations for s in agent.sessions)
    assert any("tool result c1 dropped: its session was replaced" in r.getMessage()
               for r in caplog.records)


async def test_a_fatal_error_mid_call_gets_the_fallback(make_relay, caplog) -> None:
    async def script(session: AgentSession) -> None:
        await session.send({"type": "reply.started", "reply_id": "r1"})
        await session.send({"type": "reply.audio", "reply_id": "r1", "data": frame(1)})
        await session.send({"type": "session.error", "code": "internal_error",
                            "message": "boom", "session_id": session.session_id})

    async with FakeAgent(script=script).running() as agent, make_relay(
            agent, fallback_message=FALLBACK, **FAST) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            step = await next_step(call)
    assert call.close_code == 1011
    assert_fallback(step, 1 * MS)
    assert agent.connections == 1  # never resumed
    assert any("internal_error" in r.getMessage() and r.levelname == "ERROR"
               for r in caplog.records)


@pytest.mark.parametrize("ending", ["session.ended", "session_expired"])
async def test_the_agent_ending_the_session_hangs_up_and_is_never_resumed(
        make_relay, ending: str) -> None:
    async def script(session: AgentSession) -> None:
        await greet(session)
        if ending == "session.ended":
            await session.send({"type": "session.ended", "session_duration_seconds": 3.0})
        else:
            await session.send({"type": "session.error", "code": "session_expired",
                                "message": "Maximum session duration reached"})
        await session.ws.close(1000 if ending == "session.ended" else 1008)

    async with FakeAgent(script=script).running() as agent, make_relay(agent, **FAST) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            step = await next_step(call)
    assert call.close_code == 1000
    assert (step.says, step.dials, step.hangs_up) == ((), None, True)
    assert agent.connections == 1


# ---------------------------------------------------------------------- ending on purpose

async def test_a_normal_goodbye_gets_hangup_from_the_action(make_relay) -> None:
    async def script(session: AgentSession) -> None:
        await session.send({"type": "reply.started", "reply_id": "r1"})
        await session.tool_call("c1", "end_call", arguments={"reason": "done"})
        await session.send({"type": "reply.done", "reply_id": "r1", "status": "completed"})
        await session.wait_for("tool.result")
        await speak(session, "bye", 600, 5)

    async with FakeAgent(script=script).running() as agent, make_relay(
            agent, tools=[end_call], fallback_message=FALLBACK, **FAST) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN,
                                      playback_speed=1.0) as call:
            step = await next_step(call, within=3 * MS)
    assert call.close_code == 1000
    assert [m["media"]["payload"] for m in call.events("media")] == [
        frame(600 + i) for i in range(5)]
    assert (step.says, step.dials, step.hangs_up) == ((), None, True)


async def test_max_call_seconds_asks_for_a_goodbye_and_hangs_up_once_heard(make_relay) -> None:
    limit = 0.5 * MS

    async def script(session: AgentSession) -> None:
        (ask,) = await session.wait_for("reply.create", timeout=5 * MS)
        assert "time limit" in ask["instructions"]
        await speak(session, "bye", 700, 10)  # 0.2 s of goodbye

    async with FakeAgent(script=script).running() as agent, make_relay(
            agent, max_call_seconds=limit, hangup_timeout=3 * MS, **FAST) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN,
                                      playback_speed=1.0) as call:
            step = await next_step(call, within=5 * MS)
    heard = call.events("media")
    assert [m["media"]["payload"] for m in heard] == [frame(700 + i) for i in range(10)]
    last_audio = [r.at for r in call.received if r.message["event"] == "media"][-1]
    assert "hangup" in [m["mark"]["name"] for m in call.events("mark")]
    assert call.close_code == 1000
    assert (step.says, step.dials, step.hangs_up) == ((), None, True)
    closed_after = step.ms / 1000
    assert limit + 0.2 <= closed_after < limit + 0.2 + 1.0 * MS, closed_after
    assert last_audio - call.started_at >= limit
    assert agent.sessions[0].violations == []


async def test_max_call_seconds_without_a_goodbye_hangs_up_at_the_hangup_timeout(
        make_relay) -> None:
    limit, hangup = 0.3 * MS, 0.4 * MS
    async with FakeAgent().running() as agent, make_relay(
            agent, max_call_seconds=limit, hangup_timeout=hangup, **FAST) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            step = await next_step(call, within=5 * MS)
    assert agent.sessions[0].of_type("reply.create")
    assert (step.says, step.hangs_up) == ((), True)
    assert limit + hangup <= step.ms / 1000 < limit + hangup + 1.0 * MS


async def test_a_drop_whose_resume_and_fresh_sessions_never_answer_falls_back_in_budget(
        make_relay) -> None:
    agent = FakeAgent(script=greet_then_drop, resume="silent",
                      faults=[None, None, "silent", "silent"])
    call, step, waited = await after_a_drop(make_relay, agent)
    assert [m["media"]["payload"] for m in call.events("media")] == [
        frame(900 + i) for i in range(3)]  # nothing from the links that never got ready
    assert_fallback(step, 10 * MS)
    assert waited <= FAST["agent_wait_budget"] + 0.5 * MS


async def test_a_keepalive_ping_left_unanswered_is_a_drop_and_is_resumed(make_relay,
                                                                         caplog) -> None:
    interval = 0.2 * MS

    async def first(session: AgentSession) -> None:
        await greet(session)
        session.ws.transport.pause_reading()  # a dead peer: pings go unanswered

    async def resumed(session: AgentSession) -> None:
        await speak(session, "after", 970, 1)

    agent = FakeAgent(script=first, resume_script=resumed)
    async with agent.running(), make_relay(agent, agent_ping_interval=interval, **FAST) as relay:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            await call.wait_for("media", 3)
            heard_at = time.monotonic()
            (back,) = (await call.wait_for("media", 4, 5 * MS))[3:]
            assert back["media"]["payload"] == frame(970)
            assert time.monotonic() - heard_at < 2 * interval + BUDGET
            agent.sessions[0].ws.transport.resume_reading()
            await call.hang_up()
    new = agent.sessions[1]
    assert new.resumed and new.received[0]["type"] == "session.resume"
    assert any("agent link lost" in r.getMessage() for r in caplog.records)
