"""How loaded the process is: the event loop's lag, measured all the time by a timer.

A timer asks to run every ``INTERVAL`` seconds; how late it actually runs (its overshoot) is
the time every other callback waited too: audio frames, marks, webhooks. An overloaded process
is one whose loop keeps running late, whatever the number of calls, so admission refuses new
calls while the mean overshoot over the last second is above ``ADMISSION_MAX_LAG_MS`` (the way
LiveKit Agents refuses jobs above a load threshold, without anyone guessing a number of calls).

``LagWindow`` is the pure part (samples in, mean out, clock passed in); ``LagMonitor`` owns the
timer: one ``call_later`` handle, no task, nothing on the audio path.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

log = logging.getLogger("relay.load")

INTERVAL = 0.05  # 20 samples a second: enough to see a busy second, nothing to measure
WINDOW = 1.0  # "over the last second"


class LagWindow:
    """The timer's overshoots over the last ``window`` seconds (pure: times passed in)."""

    __slots__ = ("_samples", "_sum", "window")

    def __init__(self, window: float = WINDOW) -> None:
        self.window = window
        self._samples: deque[tuple[float, float]] = deque()
        self._sum = 0.0

    def add(self, at: float, lag_ms: float) -> None:
        self._samples.append((at, lag_ms))
        self._sum += lag_ms
        self._expire(at)

    def _expire(self, now: float) -> None:
        samples = self._samples
        while samples and samples[0][0] <= now - self.window:
            self._sum -= samples.popleft()[1]

    def mean_ms(self, now: float) -> float:
        """Mean overshoot of the samples of the last window; 0 with none."""
        self._expire(now)
        if not self._samples:
            return 0.0
        return max(0.0, self._sum / len(self._samples))

    def max_ms(self, now: float) -> float:
        self._expire(now)
        return max((lag for _, lag in self._samples), default=0.0)


class LagMonitor:
    """Measures the running loop's lag from ``start()`` to ``stop()``."""

    def __init__(self, interval: float = INTERVAL, window: float = WINDOW) -> None:
        self.interval = interval
        self.window = LagWindow(window)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._reported = 0.0
        self._since = 0.0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._since = self._loop.time()
        self._schedule()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self) -> None:
        assert self._loop is not None
        self._due = self._loop.time() + self.interval
        self._handle = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        self.window.add(now, (now - self._due) * 1000)
        self._schedule()
        if now - self._reported >= WINDOW and log.isEnabledFor(logging.DEBUG):
            self._reported = now
            log.debug("event loop lag over the last second: mean %.1f ms, max %.1f ms",
                      self.window.mean_ms(now), self.window.max_ms(now))

    def lag_ms(self) -> float:
        """Mean lag over the last second (0 before a whole second was measured, or stopped)."""
        if self._loop is None:
            return 0.0
        now = self._loop.time()
        if now - self._since < self.window.window:
            return 0.0  # a mean of the first few samples is one sample's noise
        # A loop blocked right now has not run the timer: count the wait already overdue.
        overdue = (now - self._due) * 1000 if self._handle is not None else 0.0
        mean = self.window.mean_ms(now)
        return max(mean, overdue) if overdue > self.interval * 1000 else mean
