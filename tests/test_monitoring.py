"""Metrics, call records and the hook, end to end: real calls through the fakes, then a scrape.

Each test runs the real server (uvicorn on 127.0.0.1:0) against the strict fake agent and a
simulated Twilio caller, scrapes ``/metrics`` before and after, and reads back the record the
call left in ``CALL_LOG_DIR``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from relay.call_control import end_call, transfer_call
from relay.local.caller import SimulatedCall
from relay.monitor import Monitor
from relay.outcomes import Outcome
from relay.record_log import read_records
from relay.redaction import REDACTED
from relay.security import twilio_signature
from tests.conftest import AUTH_TOKEN, MS, RunningRelay
from tests.fakes import AgentSession, FakeAgent
from tests.helpers import (
    conversation,
    eventually,
    frame,
    lookup_order,
    reply_with_tool_call,
    speak,
    wait_for_records,
)

pytestmark = pytest.mark.anyio

PROMTOOL = shutil.which("promtool")
CALLER = "+15550001111"


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(relay: RunningRelay, **headers: str) -> tuple[str, Samples]:
    async with httpx.AsyncClient() as http:
        response = await http.get(relay.base_url + "/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return response.text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@contextlib.asynccontextmanager
async def relay_with(script: Callable[[AgentSession], Awaitable[None]] | None, make_relay: Any,
                     tmp_path: Path, **settings: Any) -> AsyncIterator[tuple[FakeAgent,
                                                                             RunningRelay]]:
    async with FakeAgent(script=script).running() as agent, \
            make_relay(agent, tools=settings.pop("tools", [lookup_order]),
                       call_log_dir=str(tmp_path / "calls"), **settings) as relay:
        yield agent, relay


async def test_a_call_moves_the_metrics_and_leaves_its_record(make_relay, tmp_path: Path,
                                                              caplog) -> None:
    caplog.set_level(logging.INFO, "relay.call")
    async with relay_with(conversation, make_relay, tmp_path) as (agent, relay):
        _, before = await scrape(relay)
        assert value(before, "relay_calls_active") == 0
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN,
                                      caller=CALLER) as call:
            session = await agent.session()
            await session.ready.wait()
            for i in range(5):
                await call.send_media(frame(i))
            await session.wait_for("input.audio", 5)
            # Three times the caller speaks (a clear each) and once a reply is interrupted.
            await call.wait_for("clear", 4, timeout=5 * MS)
            _, during = await scrape(relay)
            assert value(during, "relay_calls_active") == 1
            assert value(during, "relay_agent_sessions_open") == 1
            assert moved(before, during, "relay_frames_total", direction="to_agent") == 5
            await asyncio.sleep(0.1)
            await call.hang_up()
            await call.wait_closed(5 * MS)
        records = await wait_for_records(tmp_path / "calls", 1)
        text, after = await scrape(relay)
    assert session.violations == []
    assert value(after, "relay_calls_active") == 0
    assert value(after, "relay_agent_sessions_open") == 0
    assert moved(before, after, "relay_calls_total", outcome="caller_hung_up") == 1
    assert moved(before, after, "relay_frames_total", direction="to_agent") == 5
    assert moved(before, after, "relay_frames_total", direction="to_caller") == 3 + 4 + 3
    assert moved(before, after, "relay_agent_connect_seconds_count") == 1
    assert moved(before, after, "relay_first_audio_seconds_count") == 1
    assert moved(before, after, "relay_response_seconds_count") == 2
    assert moved(before, after, "relay_barge_ins_total") == 1
    assert moved(before, after, "relay_tool_calls_total", tool="lookup_order", result="error") == 1
    assert moved(before, after, "relay_tool_seconds_count", tool="lookup_order") == 1
    assert value(after, "process_cpu_seconds_total") > 0
    assert "CA" not in text and CALLER not in text  # no CallSid, no number as a label

    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"user: My card is {REDACTED}, where is order 42? At 10:30?" in logged
    assert "4111" not in logged and "jane@example.com" not in logged and CALLER not in logged
    assert "from +1555***1111 to +1555***2222" in logged

    (record,) = records
    assert record["schema"] == 1
    assert record["call_sid"] == call.call_sid
    assert record["direction"] == "inbound"
    assert record["caller"] == "+1555***1111" and record["called"] == "+1555***2222"
    assert record["started_at"].endswith("Z") and record["ended_at"] > record["started_at"]
    assert 0.3 < record["duration_seconds"] < 10
    assert record["outcome"] == "caller_hung_up" and record["end_reason"] == "caller hung up"
    assert record["agent_session_ids"] == ["sess_test"]
    assert 0 < record["agent_connect_seconds"] < 2
    assert 0 < record["first_audio_seconds"] < 2
    assert len(record["response_seconds"]) == 2
    assert record["response_p50_seconds"] == min(record["response_seconds"])
    assert record["response_max_seconds"] == max(record["response_seconds"])
    assert record["barge_ins"] == 1
    (tool_call,) = record["tool_calls"]
    assert tool_call["name"] == "lookup_order" and tool_call["argument_keys"] == ["order_id"]
    assert tool_call["duration_seconds"] >= 0
    assert tool_call["error"] == "There is no order 42 for this phone number."
    turns = [(t["role"], t["text"], t["interrupted"]) for t in record["transcript"]]
    assert turns == [
        ("agent", "Hello, how can I help?", False),
        ("caller", f"My card is {REDACTED}, where is order 42? At 10:30?", False),
        ("agent", "Sorry, I cannot find order 42.", False),
        ("caller", f"Write to {REDACTED}", False),
        ("agent", "I", True),  # cut where the caller stopped hearing it
    ]
    offsets = [t["offset_seconds"] for t in record["transcript"]]
    assert offsets == sorted(offsets) and offsets[0] >= 0
    assert 0.2 < record["transcript"][-1]["heard_seconds"] < 1.5
    assert record["frames"] == {"to_agent": 5, "to_caller": 10, "dropped_before_ready": 0,
                                "dropped_muted": 0}
    events = [e["event"] for e in record["events"]]
    for name in ("agent.ready", "agent.audio", "caller.started", "caller.stopped", "barge-in",
                 "tool.started", "tool.finished", "reply.heard", "call.ended"):
        assert name in events


def hang_up_when_asked(session: AgentSession) -> Callable[[], Awaitable[None]]:
    async def answer() -> None:
        await session.wait_for("reply.create")
        await speak(session, "bye", 2, "Goodbye!", first=900)

    return answer


async def operator_hangs_up(call: SimulatedCall, session: AgentSession,
                            relay: RunningRelay) -> None:
    async with httpx.AsyncClient() as http:
        missing = await http.post(relay.base_url + "/api/calls/CAnope/hangup", json={})
        assert missing.status_code == 404
        response = await http.post(relay.base_url + f"/api/calls/{call.call_sid}/hangup",
                                   json={})
    assert response.status_code == 202
    (ask,) = await session.wait_for("reply.create")
    assert "goodbye" in ask["instructions"]
    await speak(session, "bye", 2, "Goodbye!", first=900)


async def operator_hangs_up_now(call: SimulatedCall, session: AgentSession,
                                relay: RunningRelay) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            relay.base_url + f"/api/calls/{call.call_sid}/hangup?now=1",
            headers={"X-Relay-Request": "1"})
    assert response.status_code == 202


async def caller_hangs_up(call: SimulatedCall, session: AgentSession, relay: RunningRelay) -> None:
    await call.hang_up()


async def agent_ends(call: SimulatedCall, session: AgentSession, relay: RunningRelay) -> None:
    await session.send({"type": "session.ended"})
    await session.ws.close(1000)


async def agent_fails(call: SimulatedCall, session: AgentSession, relay: RunningRelay) -> None:
    await session.send({"type": "session.error", "code": "internal_error", "message": "boom"})


async def agent_ends_the_call(call: SimulatedCall, session: AgentSession,
                              relay: RunningRelay) -> None:
    await reply_with_tool_call(session, "r1", "c1", "end_call", arguments={})
    await session.wait_for("tool.result")
    await speak(session, "r2", 2, "Goodbye!", first=700)


async def nothing(call: SimulatedCall, session: AgentSession, relay: RunningRelay) -> None:
    pass


ENDINGS = {
    "caller_hung_up": (caller_hangs_up, {}),
    "completed": (agent_ends_the_call, {}),
    "agent_ended": (agent_ends, {}),
    "agent_failed": (agent_fails, {}),
    "max_duration": (nothing, {"max_call_seconds": 0.5}),
    "operator_hung_up": (operator_hangs_up, {}),
    "operator_hung_up now": (operator_hangs_up_now, {}),
}


@pytest.mark.parametrize("ending", list(ENDINGS))
async def test_each_ending_is_counted_and_recorded(make_relay, tmp_path: Path, ending: str) -> None:
    act, settings = ENDINGS[ending]
    outcome = ending.split()[0]
    async with relay_with(None, make_relay, tmp_path, tools=[end_call, lookup_order],
                          **settings) as (agent, relay):
        _, before = await scrape(relay)
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            session = await agent.session()
            await session.ready.wait()
            await act(call, session, relay)
            await call.wait_closed(8 * MS)
        (record,) = await wait_for_records(tmp_path / "calls", 1)
        _, after = await scrape(relay)
    assert moved(before, after, "relay_calls_total", outcome=outcome) == 1
    assert sum(moved(before, after, "relay_calls_total", outcome=o)
               for o in ("caller_hung_up", "completed", "agent_ended", "agent_failed",
                         "max_duration", "operator_hung_up")) == 1
    assert record["outcome"] == outcome and record["call_sid"] == call.call_sid
    assert record["end_reason"]
    if outcome == "completed" or ending == "operator_hung_up":
        assert record["transcript"][-1]["text"] == "Goodbye!"
    if outcome == "agent_failed":
        assert record["agent_errors"] == ["internal_error"]
        assert moved(before, after, "relay_agent_errors_total", code="internal_error") == 1


async def test_forged_webhooks_and_streams_count_as_refused(make_relay, tmp_path: Path) -> None:
    async with relay_with(None, make_relay, tmp_path) as (agent, relay):
        _, before = await scrape(relay)
        async with httpx.AsyncClient() as http:
            forged = await http.post(relay.base_url + "/twiml", data={"CallSid": "CA1"})
        assert forged.status_code == 403
        with pytest.raises(httpx.HTTPStatusError):
            async with SimulatedCall.dial(relay.base_url, auth_token="wrong"):
                pass
        _, after = await scrape(relay)
    assert moved(before, after, "relay_calls_total", outcome="refused_unauthorized") == 2
    assert read_records(tmp_path / "calls") == []  # never a call: nothing to record


async def test_a_failing_or_slow_hook_never_touches_the_call(make_relay, tmp_path: Path,
                                                             caplog) -> None:
    seen: list[dict[str, Any]] = []

    async def hook(record: dict[str, Any]) -> None:
        seen.append(record)
        if len(seen) == 1:
            raise RuntimeError("the CRM is down")
        await asyncio.sleep(60)  # the second call's hook hangs: cut off by the timeout

    caplog.set_level(logging.ERROR, "relay.monitor")
    async with relay_with(None, make_relay, tmp_path, call_ended=hook,
                          call_ended_hook_timeout=0.3) as (agent, relay):
        for _ in range(2):
            async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
                session = await agent.session(len(seen))
                await session.ready.wait()
                await call.hang_up()
                assert await call.wait_closed(5 * MS) == 1000
            await eventually(lambda: len(seen) == len(agent.sessions))
        records = await wait_for_records(tmp_path / "calls", 2)
        await eventually(lambda: len(caplog.records) >= 2)
    assert [r["call_sid"] for r in seen] == [r["call_sid"] for r in records]
    assert all(r["outcome"] == "caller_hung_up" for r in records)
    messages = [r.getMessage() for r in caplog.records]
    assert any("call_ended hook failed" in m for m in messages)
    assert any("call_ended hook timed out" in m for m in messages)


@pytest.mark.skipif(PROMTOOL is None, reason="needs promtool (Debian's prometheus package)")
async def test_the_exposition_passes_promtool(make_relay, tmp_path: Path) -> None:
    async with relay_with(conversation, make_relay, tmp_path) as (agent, relay):
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            session = await agent.session()
            await session.wait_for("tool.result")
            await call.hang_up()
            await call.wait_closed(5 * MS)
        await wait_for_records(tmp_path / "calls", 1)
        text, _ = await scrape(relay)
    assert PROMTOOL is not None
    checked = await asyncio.to_thread(subprocess.run, [PROMTOOL, "check", "metrics"],
                                      input=text.encode(), capture_output=True, timeout=30)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
    assert checked.stdout.decode().strip() == "", checked.stdout.decode()


async def test_call_api_lists_live_and_recent_calls(make_relay, tmp_path: Path) -> None:
    async with relay_with(conversation, make_relay, tmp_path) as (agent, relay), \
            httpx.AsyncClient(base_url=relay.base_url) as http:
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            session = await agent.session()
            await session.wait_for("tool.result")
            listed = (await http.get("/api/calls")).json()
            (live,) = listed["live"]
            assert live["call_sid"] == call.call_sid and live["caller"] == "+1555***1111"
            assert live["direction"] == "inbound" and live["duration_seconds"] >= 0
            assert live["activity"] and live["last_line"]["role"] in ("agent", "caller")
            one = (await http.get(f"/api/calls/{call.call_sid}")).json()
            assert one["live"] is True and one["outcome"] is None
            await call.hang_up()
            await call.wait_closed(5 * MS)
        await wait_for_records(tmp_path / "calls", 1)
        listed = (await http.get("/api/calls")).json()
        assert listed["live"] == []
        (recent,) = listed["recent"]
        assert recent["call_sid"] == call.call_sid and recent["outcome"] == "caller_hung_up"
        one = (await http.get(f"/api/calls/{call.call_sid}")).json()
        assert one["live"] is False and one["outcome"] == "caller_hung_up"
        assert (await http.get("/api/calls/CAnope")).status_code == 404
        events = orjson.loads(orjson.dumps(one["events"]))
        assert events[-1]["event"] == "call.ended"


RULES = Path(__file__).parent.parent / "monitoring"


@pytest.mark.skipif(PROMTOOL is None, reason="needs promtool (Debian's prometheus package)")
def test_the_shipped_alert_rules_are_valid_and_fire_on_their_series() -> None:
    assert PROMTOOL is not None
    for args in (["check", "rules", "relay-alerts.yml"], ["test", "rules",
                                                          "relay-alerts.test.yml"]):
        done = subprocess.run([PROMTOOL, *args], cwd=RULES, capture_output=True, timeout=60)
        assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
        assert b"SUCCESS" in done.stdout


async def test_the_alert_rules_use_metrics_the_relay_exports(make_relay, tmp_path: Path) -> None:
    used = set(re.findall(r"\b(relay_[a-z_]+)", (RULES / "relay-alerts.yml").read_text()))
    async with relay_with(None, make_relay, tmp_path) as (agent, relay):
        text, _ = await scrape(relay)
    families = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    exported = families | {f + suffix for f in families for suffix in ("_bucket", "_count")}
    assert len(used) == 6 and used <= exported, used - exported


async def test_a_transfer_is_counted_and_recorded(make_relay, tmp_path: Path) -> None:
    async def script(session: AgentSession) -> None:
        await reply_with_tool_call(session, "r1", "c1", "transfer_call")
        await session.wait_for("tool.result")
        await speak(session, "r2", 2, "Transferring you.", first=300)

    async with relay_with(script, make_relay, tmp_path, tools=[transfer_call],
                          transfer_number="+15550009999") as (agent, relay):
        _, before = await scrape(relay)
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            await call.wait_closed(5 * MS)
        (record,) = await wait_for_records(tmp_path / "calls", 1)
        _, after = await scrape(relay)
    assert record["outcome"] == "transferred"
    assert moved(before, after, "relay_calls_total", outcome="transferred") == 1
    assert moved(before, after, "relay_tool_calls_total", tool="transfer_call", result="ok") == 1


async def test_a_call_cut_by_the_server_shutting_down_is_recorded_as_shut_down(
        make_relay, tmp_path: Path) -> None:
    async with relay_with(None, make_relay, tmp_path) as (agent, relay):
        call_context = SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN)
        call = await call_context.__aenter__()
        try:
            session = await agent.session()
            await session.ready.wait()
            relay.server.should_exit = True  # uvicorn closes the streams with 1012
            assert await call.wait_closed(10 * MS) == 1012
        finally:
            await call_context.__aexit__(None, None, None)
    (record,) = read_records(tmp_path / "calls")  # written before the server finished
    # Not "drained": that is the polite drain deadline, and this call got no goodbye.
    assert record["outcome"] == "shut_down"
    assert record["end_reason"] == "the server is shutting down"


async def test_a_twilio_stream_dropped_without_a_close_is_a_lost_stream_not_a_hang_up(
        make_relay, tmp_path: Path) -> None:
    async with relay_with(None, make_relay, tmp_path) as (agent, relay):
        _, before = await scrape(relay)
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            session = await agent.session()
            await session.ready.wait()
            call.ws.transport.abort()  # the TCP connection is gone: no stop, no close frame
            await asyncio.wait_for(session.closed.wait(), 5 * MS)
        (record,) = await wait_for_records(tmp_path / "calls", 1)
        _, after = await scrape(relay)
    # Not a hang-up: the caller may still be there, and the session is kept for a re-stream.
    assert record["outcome"] == "stream_lost"
    assert moved(before, after, "relay_calls_total", outcome="stream_lost") == 1
    assert moved(before, after, "relay_calls_total", outcome="caller_hung_up") == 0


async def test_calls_refused_at_the_webhook_are_counted_by_outcome(make_relay,
                                                                  tmp_path: Path) -> None:
    async with relay_with(None, make_relay, tmp_path, max_concurrent_calls=1,
                          caller_rate_limit="2/minute") as (agent, relay):
        _, before = await scrape(relay)
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN, caller="+15550003333"):
            session = await agent.session()
            await session.ready.wait()
            # A second call while the first is up: no capacity.
            with pytest.raises(ValueError):  # TwiML without a <Stream>: refused
                async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN,
                                              caller="+15550004444"):
                    pass
        # The first caller calls twice more within the minute: over their rate limit.
        for _ in range(2):
            with contextlib.suppress(ValueError):
                async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN,
                                              caller="+15550003333") as again:
                    await again.hang_up()
        _, after = await scrape(relay)
    assert moved(before, after, "relay_calls_total", outcome="refused_busy") == 1
    assert moved(before, after, "relay_calls_total", outcome="refused_rate_limited") == 1


async def test_a_stream_that_never_starts_counts_as_stream_failed(make_relay,
                                                                  tmp_path: Path) -> None:
    async with relay_with(None, make_relay, tmp_path, start_timeout=0.3 * MS) as (agent, relay):
        _, before = await scrape(relay)
        url = relay.settings.stream_url
        headers = {"x-twilio-signature": twilio_signature(AUTH_TOKEN, url, {})}
        async with connect(url, additional_headers=headers, compression=None) as ws:
            await ws.send(orjson.dumps({"event": "connected", "protocol": "Call"}).decode())
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(5 * MS):
                    await ws.recv()
            assert ws.close_code == 1008
        async with asyncio.timeout(3 * MS):  # counted as the bridge finishes, just after
            while True:
                _, after = await scrape(relay)
                if moved(before, after, "relay_calls_total", outcome="stream_failed"):
                    break
                await asyncio.sleep(0.02)
    assert moved(before, after, "relay_calls_total", outcome="stream_failed") == 1
    assert read_records(tmp_path / "calls") == []  # no start: never a call, nothing recorded



RECOVERY: dict[str, Any] = dict(agent_open_timeout=0.4 * MS, agent_ready_timeout=0.4 * MS,
                                agent_retry_backoff=0.05, agent_resume_timeout=0.4 * MS,
                                agent_wait_budget=2.0 * MS)


@pytest.mark.parametrize(("resume", "result"), [("accept", "resumed"),
                                                ("refuse", "new_session")])
async def test_an_agent_drop_mid_call_is_counted_and_recorded_by_result(
        make_relay, tmp_path: Path, resume: str, result: str) -> None:
    async def drop_once(session: AgentSession) -> None:
        if session is agent.sessions[0]:
            await speak(session, "greet", 3, "Hello!", first=900)
            await asyncio.sleep(0.05)
            session.drop()

    agent = FakeAgent(script=drop_once, resume=resume)
    async with agent.running(), make_relay(agent, call_log_dir=str(tmp_path / "calls"),
                                           **RECOVERY) as relay:
        _, before = await scrape(relay)
        async with SimulatedCall.dial(relay.base_url, auth_token=AUTH_TOKEN) as call:
            replaced = await agent.session(1 if resume == "accept" else 2, timeout=5 * MS)
            await replaced.ready.wait()
            await call.hang_up()
            await call.wait_closed(5 * MS)
        (record,) = await wait_for_records(tmp_path / "calls", 1)
        _, after = await scrape(relay)
    assert moved(before, after, "relay_agent_reconnects_total", result=result) == 1
    assert record["agent_reconnects"] == [result] and record["outcome"] == "caller_hung_up"
    assert "agent.reconnected" in [e["event"] for e in record["events"]]
    if result == "new_session":
        assert len(record["agent_session_ids"]) == 2


class StreamHandle:
    """What the monitor reads of one stream: its frame counters (the bridge's, here plain)."""

    def __init__(self, frames_to_agent: int) -> None:
        self.counters = Counters(frames_to_agent)

    def hang_up(self, *, now: bool) -> None:
        pass


class Counters:
    def __init__(self, frames_to_agent: int) -> None:
        self.frames_to_agent = frames_to_agent
        self.frames_to_caller = self.dropped_before_ready = self.dropped_muted = 0


async def test_both_streams_of_a_call_streamed_again_here_count_until_each_ends() -> None:
    monitor = Monitor()
    frames = ("relay_frames_total", frozenset({("direction", "to_agent")}))

    def figures() -> Samples:
        return {(s.name, frozenset(s.labels.items())): s.value for family in
                text_string_to_metric_families(monitor.metrics.exposition().decode())
                for s in family.samples}

    async with monitor.running():
        old, new = monitor.watch(StreamHandle(10)), monitor.watch(StreamHandle(3))
        for watch in (old, new):  # the old stream still tears down when the new one starts
            watch.started(call_sid="CA1", direction="inbound", caller="", called="")
        assert figures()[frames] == 13
        assert figures()[("relay_calls_active", frozenset())] == 2
        assert monitor.find("CA1") is new
        old.ended("Twilio stream failed; agent session kept", Outcome.STREAM_LOST)
        assert figures()[frames] == 13  # a counter never goes back
        assert monitor.find("CA1") is new and monitor.live() == [new]
        new.ended("caller hung up", Outcome.CALLER_HUNG_UP)
        assert figures()[frames] == 13 and monitor.live() == []
