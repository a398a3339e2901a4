"""Metrics that add up over the worker processes (``WORKERS`` > 1): prometheus-client's
multiprocess mode.

The parent (``relay.workers``) makes a private directory, names it in
``PROMETHEUS_MULTIPROC_DIR`` for the workers it spawns (prometheus-client then keeps every
counter, histogram and gauge of a worker in a file there), marks each worker that dies or
is replaced as dead (``worker_gone``: its live gauges go, its counters and histograms stay,
as a restarted process's would in Prometheus's ``rate``), and removes the directory when it
exits. ``/metrics`` on any worker then serves the figures of all of them, merged by
``MultiProcessCollector``.

The figures ``relay.metrics`` reads at scrape time (calls active, agent sessions open, frames
by direction, dropped frames, store errors: scrape-time collectors, so the audio path pays
nothing) cannot be merged that way: the other workers are not there to be read. So each
worker ``Publisher`` copies them into multiprocess metrics of the same names and labels:
gauges as ``livesum`` gauges (the sum over the live workers), counters as counters raised by
what they grew since the last copy. It copies once every ``PUBLISH_INTERVAL`` seconds (a
task of its own, a loop over that worker's live calls), when a call ends, and before the
worker answers a scrape: the figures of the other workers are at most that old.

Process collectors (``process_*``, ``python_gc_*``, ``python_info``) describe one process and
do not add up: with several workers they are left out (the host's or container's own
metrics cover the processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator, MutableMapping

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from relay.background import running_task
from relay.errors import ConfigError

log = logging.getLogger(__name__)

ENV = "PROMETHEUS_MULTIPROC_DIR"
# How old, at most, another worker's live figures are in a scrape (seconds).
PUBLISH_INTERVAL = 1.0


@contextlib.contextmanager
def shared_directory(env: MutableMapping[str, str]) -> Iterator[str]:
    """The parent's side: a private directory named in ``env`` while the workers run."""
    path = tempfile.mkdtemp(prefix="relay-metrics-")  # mode 0700: this user's only
    previous = env.get(ENV)
    env[ENV] = path
    try:
        yield path
    finally:
        if previous is None:
            env.pop(ENV, None)
        else:
            env[ENV] = previous
        shutil.rmtree(path, ignore_errors=True)


def worker_gone(pid: int, path: str) -> None:
    """A worker exited or was killed: its live gauges leave the merged figures."""
    mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


def directory(env: MutableMapping[str, str] | None = None) -> str | None:
    """The multiprocess directory of this process, or None when it is the only one.

    Raises:
        ConfigError: ``PROMETHEUS_MULTIPROC_DIR`` names no directory, or was set after
            prometheus-client was imported (it chooses where values live at import).
    """
    path = (os.environ if env is None else env).get(ENV)
    if not path:
        return None
    if not os.path.isdir(path):
        raise ConfigError(f"{ENV}={path} is not a directory")
    if not getattr(values.ValueClass, "_multiprocess", False):
        raise ConfigError(f"{ENV} was set after prometheus_client was imported")
    return path


class Publisher:
    """Copies one worker's scrape-time figures (``local``'s collectors) into shared files."""

    def __init__(self, local: CollectorRegistry, path: str) -> None:
        self._local = local
        self._gauges: dict[str, Gauge] = {}
        self._counters: dict[str, Counter] = {}
        self._copied: dict[tuple[str, tuple[str, ...]], float] = {}
        self._failing = False
        self.merged = CollectorRegistry()
        MultiProcessCollector(self.merged, path)  # type: ignore[no-untyped-call]

    def publish(self) -> None:
        """Copy now; a failing copy (a full disk) leaves the figures stale, never the call or
        the scrape that asked for it, and is said once per failure."""
        try:
            self._copy()
        except OSError as exc:
            if not self._failing:
                log.warning("metrics not shared with the other workers: %s", exc)
            self._failing = True
        else:
            self._failing = False

    def _copy(self) -> None:
        for family in self._local.collect():
            if family.type == "gauge":
                for sample in family.samples:
                    labels = tuple(sample.labels.values())
                    gauge = self._gauge(family.name, family.documentation, sample.labels)
                    (gauge.labels(*labels) if labels else gauge).set(sample.value)
            elif family.type == "counter":
                for sample in family.samples:
                    if sample.name != family.name + "_total":
                        continue  # _created: not kept in multiprocess mode
                    labels = tuple(sample.labels.values())
                    counter = self._counter(family.name, family.documentation, sample.labels)
                    child = counter.labels(*labels) if labels else counter  # there at 0 too
                    grown = sample.value - self._copied.get((family.name, labels), 0.0)
                    if grown > 0:
                        child.inc(grown)
                        self._copied[(family.name, labels)] = sample.value

    def exposition(self) -> bytes:
        """The merged figures of every worker, this one's copied just now."""
        self.publish()
        return generate_latest(self.merged)

    @contextlib.asynccontextmanager
    async def running(self, interval: float = PUBLISH_INTERVAL) -> AsyncIterator[None]:
        """Copies every ``interval`` seconds while the app runs, and once more at its end."""
        try:
            async with running_task(self._every(interval), "publish metrics"):
                yield
        finally:
            self.publish()

    async def _every(self, interval: float) -> None:
        while True:
            self.publish()
            await asyncio.sleep(interval)

    def _gauge(self, name: str, doc: str, labels: dict[str, str]) -> Gauge:
        gauge = self._gauges.get(name)
        if gauge is None:
            gauge = self._gauges[name] = Gauge(name, doc, list(labels), registry=None,
                                               multiprocess_mode="livesum")
        return gauge

    def _counter(self, name: str, doc: str, labels: dict[str, str]) -> Counter:
        counter = self._counters.get(name)
        if counter is None:
            counter = self._counters[name] = Counter(name, doc, list(labels), registry=None)
        return counter
