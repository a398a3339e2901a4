"""The relay's Prometheus metrics, in a registry of their own, served at ``GET /metrics``.

Two kinds of numbers, kept apart because the audio path must not pay for metrics:

* Events that happen a few times per call (a call ends, the agent is ready, a reply starts, a
  tool runs) are observed here with ``prometheus_client`` counters and histograms, from the
  call's recorder.
* Per-frame counts are the plain integer counters ``CallProtocol`` keeps anyway
  (``frames_to_agent``, ``frames_to_caller``, ``dropped_before_ready``, ``dropped_muted``).
  Nothing is called per frame: ``_LiveCollector`` adds them up over the live calls when
  Prometheus scrapes, plus a running total of the calls already finished.

With several workers (``WORKERS``), ``multiprocess_dir`` names prometheus-client's
multiprocess directory: the counters and histograms live in files there, the scrape-time
figures are copied there by ``relay.worker_metrics`` (at most ``PUBLISH_INTERVAL`` old), and
the exposition is the merge of every worker's files.

Names follow Prometheus conventions (base units, ``_total`` counters); no label ever holds a
CallSid or a phone number: outcomes, tool names and error codes come from fixed or bounded sets.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from relay.outcomes import Outcome
from relay.worker_metrics import Publisher

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Voice-to-voice budgets are 500–800 ms: fine buckets there, coarse ones around them.
RESPONSE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0,
                    10.0)
CONNECT_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
TOOL_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0)
# Agent error codes become label values: only so many distinct ones, the rest are "other".
MAX_ERROR_CODES = 32


class FrameCounts(Protocol):
    """The per-frame counters of one call (``CallProtocol`` has them)."""

    frames_to_agent: int
    frames_to_caller: int
    dropped_before_ready: int
    dropped_muted: int


class LiveCall(Protocol):
    @property
    def counters(self) -> FrameCounts: ...


class Metrics:
    """Every metric of the process.

    ``live`` gives the calls in progress and ``agent_sessions`` the number of agent sockets
    open (counted apart from the calls, so a socket left open after its call shows).
    ``registry`` holds what is read at scrape time; others may add collectors to it.
    """

    def __init__(self, live: Callable[[], Collection[LiveCall]],
                 agent_sessions: Callable[[], int], *, process_collectors: bool = True,
                 multiprocess_dir: str | None = None) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created: noise
        self.registry = CollectorRegistry(auto_describe=True)
        # Several workers: the metric objects' files are merged, the registry is copied
        # (relay.worker_metrics), so the objects stay out of it (they would be counted twice).
        registry = self.registry if multiprocess_dir is None else None
        self.calls = Counter("relay_calls", "Calls ended, by how they ended (a stream lost and "
                             "streamed again counts once more, as stream_lost).", ["outcome"],
                             registry=registry)
        for outcome in Outcome:  # every outcome is present from the start, at 0
            self.calls.labels(outcome.value)
        self.agent_connect = Histogram(
            "relay_agent_connect_seconds",
            "From opening the agent socket to the agent's session.ready.",
            buckets=CONNECT_BUCKETS, registry=registry)
        self.first_audio = Histogram(
            "relay_first_audio_seconds",
            "From Twilio's start to the first agent audio sent to the caller.",
            buckets=CONNECT_BUCKETS, registry=registry)
        self.response = Histogram(
            "relay_response_seconds",
            "The agent's voice-to-voice latency as the relay sees it: from "
            "input.speech.stopped to the first audio of the reply that follows.",
            buckets=RESPONSE_BUCKETS, registry=registry)
        self.barge_ins = Counter("relay_barge_ins", "Times the caller talked over the agent.",
                                 registry=registry)
        self.agent_errors = Counter("relay_agent_errors", "Errors reported by the agent, by code.",
                                    ["code"], registry=registry)
        self.agent_reconnects = Counter(
            "relay_agent_reconnects", "Attempts to resume a lost agent session, by result.",
            ["result"], registry=registry)
        self.tool_calls = Counter("relay_tool_calls", "Tool calls, by tool and result (ok, error).",
                                  ["tool", "result"], registry=registry)
        self.tool_seconds = Histogram("relay_tool_seconds", "How long each tool call took.",
                                      ["tool"], buckets=TOOL_BUCKETS, registry=registry)
        self._finished = _Totals()
        self._error_codes: set[str] = set()
        self.registry.register(_LiveCollector(live, agent_sessions, self._finished))
        self.publisher = (Publisher(self.registry, multiprocess_dir)
                          if multiprocess_dir is not None else None)
        if process_collectors and self.publisher is None:  # one process's: they do not add up
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)

    # ------------------------------------------------------------------ for others to call

    def call_ended(self, outcome: Outcome, counters: FrameCounts | None = None) -> None:
        """Count a finished call; its frame counters join the running totals."""
        self.calls.labels(outcome.value).inc()
        if counters is not None:
            self._finished.add(counters)
        if self.publisher is not None:  # the other workers see the call end at once
            self.publisher.publish()

    def refused(self, outcome: Outcome) -> None:
        """Count a call refused before it reached the agent (busy, rate limited, forged)."""
        self.calls.labels(outcome.value).inc()

    def agent_error(self, code: str) -> None:
        if code not in self._error_codes:
            if len(self._error_codes) >= MAX_ERROR_CODES:
                code = "other"
            else:
                self._error_codes.add(code)
        self.agent_errors.labels(code).inc()

    def agent_reconnected(self, result: str) -> None:
        """A lost agent link replaced: ``resumed``, ``new_session`` or ``failed``."""
        self.agent_reconnects.labels(result).inc()

    def tool_finished(self, tool: str, seconds: float, *, ok: bool) -> None:
        self.tool_calls.labels(tool, "ok" if ok else "error").inc()
        self.tool_seconds.labels(tool).observe(seconds)

    def exposition(self) -> bytes:
        if self.publisher is not None:
            return self.publisher.exposition()
        return generate_latest(self.registry)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """With several workers, copies the scrape-time figures while the app runs."""
        if self.publisher is None:
            yield
            return
        async with self.publisher.running():
            yield


class _Totals:
    __slots__ = ("frames_to_agent", "frames_to_caller", "dropped_before_ready", "dropped_muted")

    def __init__(self) -> None:
        self.frames_to_agent = self.frames_to_caller = 0
        self.dropped_before_ready = self.dropped_muted = 0

    def add(self, c: FrameCounts) -> None:
        self.frames_to_agent += c.frames_to_agent
        self.frames_to_caller += c.frames_to_caller
        self.dropped_before_ready += c.dropped_before_ready
        self.dropped_muted += c.dropped_muted


class _LiveCollector:
    """Gauges of the live calls and the frame counters, read when Prometheus scrapes."""

    def __init__(self, live: Callable[[], Collection[LiveCall]],
                 agent_sessions: Callable[[], int], finished: _Totals) -> None:
        self._live = live
        self._agent_sessions = agent_sessions
        self._finished = finished

    def collect(self) -> Iterator[Metric]:
        calls = list(self._live())
        total = _Totals()
        total.add(self._finished)
        for call in calls:
            total.add(call.counters)
        yield GaugeMetricFamily("relay_calls_active", "Calls in progress.", value=len(calls))
        yield GaugeMetricFamily(
            "relay_agent_sessions_open",
            "Agent sockets open: more than relay_calls_active for long means sessions (billed "
            "by the agent's provider) outliving their calls.", value=self._agent_sessions())
        frames = CounterMetricFamily(
            "relay_frames", "Audio frames relayed, by direction.", labels=["direction"])
        frames.add_metric(["to_agent"], total.frames_to_agent)
        frames.add_metric(["to_caller"], total.frames_to_caller)
        yield frames
        dropped = CounterMetricFamily(
            "relay_frames_dropped",
            "Audio frames not relayed: caller audio before the agent was ready (before_ready), "
            "agent audio of a reply the caller interrupted (muted).", labels=["reason"])
        dropped.add_metric(["before_ready"], total.dropped_before_ready)
        dropped.add_metric(["muted"], total.dropped_muted)
        yield dropped
