"""What the process knows about its calls: the live ones, the metrics, the records, the hook.

``Monitor`` is process-wide (one per app, owned by the lifespan). Each call gets a
``CallWatch`` from it, which the bridge feeds from its hooks; the watch timestamps each event
with the event loop's clock and hands it to the call's ``CallRecorder``. When a call ends the
monitor counts it, takes it off the live list, keeps its record among the recent ones, and,
in tasks of its own group (never the call's): appends the record to the day's file and runs
the application's ``call_ended`` hook under a timeout. The calls page waits on ``changed()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import orjson

from relay import worker_metrics
from relay.call_record import CallRecorder
from relay.metrics import FrameCounts, Metrics
from relay.outcomes import Outcome
from relay.record_log import RecordLog, read_records

log = logging.getLogger("relay.monitor")
# A coroutine given each finished call's record (a CRM, a webhook): see ``Monitor``.
CallEndedHook = Callable[[dict[str, Any]], Awaitable[None]]
RECENT = 100


class CallHandle(Protocol):
    """What the monitor needs of a live call (``CallBridge`` is one)."""

    @property
    def counters(self) -> FrameCounts: ...

    def hang_up(self, *, now: bool) -> None: ...


class CallWatch:
    """One call as the monitor sees it; the bridge calls these from its own hooks."""

    def __init__(self, monitor: Monitor, call: CallHandle, recorder: CallRecorder) -> None:
        self._monitor = monitor
        self.call = call
        self.recorder = recorder
        self._loop = asyncio.get_running_loop()
        self._responses_seen = 0  # latencies already observed in the histogram
        self._first_audio_seen = False

    @property
    def counters(self) -> FrameCounts:
        return self.call.counters

    def dialing(self) -> None:
        self.recorder.dialing(self._loop.time())

    def agent_opened(self, closed: asyncio.Future[Any]) -> None:
        """An agent socket opened; ``closed`` resolves when it is gone."""
        self._monitor._agent_session_opened(closed)

    def started(self, *, call_sid: str, direction: str, caller: str, called: str) -> None:
        self.recorder.started(call_sid=call_sid, direction=direction, caller=caller,
                              called=called, now=self._loop.time(), wall=time.time())
        self._monitor._opened(self)

    def event(self, kind: str, data: Mapping[str, Any] | None) -> None:
        recorder = self.recorder
        before = len(recorder.turns), recorder.activity
        recorder.event(kind, data or {}, self._loop.time())
        metrics = self._monitor.metrics
        if kind == "barge-in":
            metrics.barge_ins.inc()
        elif kind == "agent.ready" and recorder.agent_connect_seconds is not None:
            if len(recorder.session_ids) <= 1:
                metrics.agent_connect.observe(recorder.agent_connect_seconds)
        elif kind == "reply.audio":
            if len(recorder.responses) > self._responses_seen:
                metrics.response.observe(recorder.responses[-1])
            if recorder.first_audio_seconds is not None and not self._first_audio_seen:
                metrics.first_audio.observe(recorder.first_audio_seconds)
        elif kind == "agent.error" and data is not None:
            metrics.agent_error(str(data.get("code") or "unknown"))
        elif kind == "agent.reconnect" and data is not None:
            metrics.agent_reconnected(str(data.get("result")))
        elif kind == "tool.call" and data is not None:
            self._tool_started(data)
        elif kind in ("tool.result", "tool.dropped") and data is not None:
            self._tool_finished(data)
        self._responses_seen = len(recorder.responses)
        self._first_audio_seen = recorder.first_audio_seconds is not None
        if (len(recorder.turns), recorder.activity) != before:
            self._monitor._touch()

    def _tool_started(self, data: Mapping[str, Any]) -> None:
        keys = data.get("argument_keys") or ()
        self.recorder.tool_started(str(data.get("call_id")), str(data.get("name")),
                                   dict.fromkeys(keys), self._loop.time())
        self._monitor._touch()

    def _tool_finished(self, data: Mapping[str, Any]) -> None:
        """A tool's outcome; an error result is JSON ``{"error": ...}``."""
        call_id = str(data.get("call_id"))
        error = _error_text(str(data.get("result"))) if data.get("is_error") else None
        seconds = self.recorder.tool_finished(call_id, self._loop.time(), error=error)
        tool = self.recorder.tools.get(call_id)
        if seconds is not None and tool is not None:
            self._monitor.metrics.tool_finished(self._monitor.tool_label(tool.name), seconds,
                                                ok=error is None)
        self._monitor._touch()

    def ended(self, reason: str, outcome: Outcome) -> None:
        c = self.counters
        self.recorder.ended(reason, self._loop.time(), {
            "to_agent": c.frames_to_agent, "to_caller": c.frames_to_caller,
            "dropped_before_ready": c.dropped_before_ready, "dropped_muted": c.dropped_muted},
            outcome)
        self._monitor._closed(self)


def _error_text(result: str) -> str:
    try:
        parsed = orjson.loads(result)
    except orjson.JSONDecodeError:
        return result
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        return str(parsed["error"])
    return result


class Monitor:
    """Live calls, metrics, call records and the ``call_ended`` hook of one process.

    ``call_log_dir``: where ``calls-YYYY-MM-DD.jsonl`` files go (None: no files).
    ``call_ended``: awaited with each finished call's record, as a task of the monitor's own
    group under ``hook_timeout`` seconds; its failure is logged and never touches a call.
    """

    def __init__(self, *, call_log_dir: str | Path | None = None, redact_transcripts: bool = True,
                 call_ended: CallEndedHook | None = None, hook_timeout: float = 10.0,
                 tool_names: frozenset[str] = frozenset()) -> None:
        self.redact_transcripts = redact_transcripts
        self.hook = call_ended
        self.hook_timeout = hook_timeout
        self._tool_names = tool_names
        # By stream, not CallSid: a call streamed again in this process has two for a moment,
        # and a scrape must count both (a counter never goes back).
        self._live: dict[int, CallWatch] = {}
        self._agent_sessions = 0
        self.metrics = Metrics(self._live.values, lambda: self._agent_sessions,
                               multiprocess_dir=worker_metrics.directory())
        self.records = RecordLog(call_log_dir) if call_log_dir else None
        self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self._changed = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Owns the tasks that write records and run the hook; waits for them at the end."""
        if self.records is not None:
            records = self.records
            with contextlib.suppress(OSError):  # a folder not made yet; written at the first call
                await asyncio.to_thread(records.repair)
            recent = await asyncio.to_thread(read_records, records.directory, limit=RECENT)
            self._recent.extend(recent)
        async with self.metrics.running(), asyncio.TaskGroup() as tg:
            self._tg = tg
            try:
                yield
            finally:
                self._tg = None

    def watch(self, call: CallHandle) -> CallWatch:
        return CallWatch(self, call, CallRecorder(redact_transcripts=self.redact_transcripts))

    def tool_label(self, name: str) -> str:
        """A tool's metric label: its name, or ``unknown`` for names the agent made up."""
        return name if name in self._tool_names else "unknown"

    # ------------------------------------------------------------------ live calls

    def live(self) -> list[CallWatch]:
        return list(self._live.values())

    def find(self, call_sid: str) -> CallWatch | None:
        """The call's newest live stream."""
        return next((watch for watch in reversed(self._live.values())
                     if watch.recorder.call_sid == call_sid), None)

    def recent(self) -> list[dict[str, Any]]:
        """Finished calls' records, newest first."""
        return list(reversed(self._recent))

    def find_record(self, call_sid: str) -> dict[str, Any] | None:
        return next((r for r in reversed(self._recent) if r.get("call_sid") == call_sid), None)

    async def changed(self, timeout: float) -> None:
        """Returns when a call starts, ends or changes, or after ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._changed.wait()

    def _agent_session_opened(self, closed: asyncio.Future[Any]) -> None:
        self._agent_sessions += 1
        closed.add_done_callback(self._agent_session_closed)

    def _agent_session_closed(self, closed: asyncio.Future[Any]) -> None:
        self._agent_sessions -= 1

    def _touch(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _opened(self, watch: CallWatch) -> None:
        self._live[id(watch)] = watch
        self._touch()

    def _closed(self, watch: CallWatch) -> None:
        recorder = watch.recorder
        assert recorder.outcome is not None
        # One step, so a scrape never counts these frames twice or not at all.
        self._live.pop(id(watch), None)
        self.metrics.call_ended(recorder.outcome, watch.counters)
        self._touch()
        if recorder.started_at is None:
            return  # never a call: a forged or broken stream, counted only
        record = recorder.record()
        self._recent.append(record)
        self._spawn(self._finish(record), f"record {recorder.call_sid}")

    def _spawn(self, work: Any, name: str) -> None:
        if self._tg is None:
            work.close()
            log.warning("call record not written: the monitor is not running")
            return
        self._tg.create_task(work, name=name)

    async def _finish(self, record: dict[str, Any]) -> None:
        call_sid = record.get("call_sid")
        if self.records is not None:
            try:
                await asyncio.to_thread(self.records.append, record)
            except OSError as exc:
                log.error("[%s] call record not written to %s: %s", call_sid,
                          self.records.directory, exc)
        if self.hook is not None:
            try:
                async with asyncio.timeout(self.hook_timeout):
                    await self.hook(record)
            except TimeoutError:
                log.error("[%s] call_ended hook timed out after %.0f s", call_sid,
                          self.hook_timeout)
            except Exception:  # the application's code: logged, never affects a call
                log.exception("[%s] call_ended hook failed", call_sid)
