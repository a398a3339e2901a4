"""Draining on deploy: on SIGTERM (or the first Ctrl-C) live calls finish before the process exits.

uvicorn's own shutdown closes every WebSocket with 1012 (each deploy would hang up every call)
and re-raises the signal it caught (exit -15). ``DrainingServer`` runs the relay's drain first:

1. stop taking calls: ``/twiml`` refuses them (``relay.admission``), ``/readyz`` answers 503,
   ``/healthz`` stays 200;
2. let the live calls go on, untouched, for up to ``DRAIN_SECONDS``;
3. at that deadline, end the calls still up politely: with ``FALLBACK_NUMBER`` set, each is
   handed there through its ``<Connect action>`` (the outcome record says "dial"); otherwise the
   agent says a short goodbye and the call hangs up once it is heard (``HANGUP_TIMEOUT``);
4. keep answering requests (Twilio asks for the ``<Connect action>`` right after a stream
   ends) for ``ACTION_GRACE`` seconds after the last call ended, then let uvicorn shut down,
   with no call left for it to cut, and exit 0.

A second SIGTERM or Ctrl-C ends everything at once (uvicorn's forced exit; exit code 1).

``drain_step`` is the pure schedule; ``LiveCalls`` knows the streams being served;
``Drainer`` and ``DrainingServer`` are the thin owners of the waiting and the signals.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Literal, Protocol

import uvicorn

from relay.outcomes import Outcome

log = logging.getLogger("relay.drain")

# Twilio requests the <Connect action> URL right after the stream closes: answer for this long.
ACTION_GRACE = 5.0
POLL = 0.1
# What the agent is asked to say when the drain deadline ends its call.
GOODBYE_INSTRUCTIONS = ("The service has to restart now. Tell the caller, in one short "
                        "sentence, that you must end the call and that they can call back, "
                        "then say goodbye.")
# The drained calls end as ``Outcome.DRAINED`` (routes passes it); this is their reason text.
DRAINED_REASON = "the server is shutting down (drain deadline)"

Step = Literal["wait", "end_calls", "exit"]


@dataclass(frozen=True, slots=True)
class DrainTimes:
    drain_seconds: float  # how long live calls may go on
    goodbye_seconds: float  # how long a call ended by the deadline may take to say goodbye
    action_grace: float = ACTION_GRACE


def drain_step(times: DrainTimes, *, now: float, started: float, active: int,
               last_end: float | None, asked_to_end: bool) -> Step:
    """What the drain does next (pure: times in seconds on one clock).

    ``last_end`` is when the last call ended during the drain (None: none did).
    """
    deadline = started + times.drain_seconds
    if active:
        if now < deadline:
            return "wait"
        if not asked_to_end:
            return "end_calls"
        if now < deadline + times.goodbye_seconds:
            return "wait"
        return "exit"  # a call that outlived its goodbye bound is cut by the server's shutdown
    if last_end is not None and now < last_end + times.action_grace:
        return "wait"
    return "exit"


class Endable(Protocol):
    @property
    def opened_call_sid(self) -> str | None: ...  # the Twilio call of the stream, once admitted

    def say_goodbye_and_end(self, instructions: str, reason: str, outcome: Outcome) -> None: ...

    def end_now(self, reason: str, outcome: Outcome, number: str | None = None) -> None: ...


class LiveCalls:
    """The streams this process is serving, and when the last one ended."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._calls: set[Endable] = set()
        self.last_end: float | None = None

    def add(self, call: Endable) -> None:
        self._calls.add(call)

    def discard(self, call: Endable) -> None:
        if call in self._calls:
            self._calls.discard(call)
            self.last_end = self._clock()

    def __len__(self) -> int:
        return len(self._calls)

    def __iter__(self) -> Iterator[Endable]:
        return iter(list(self._calls))


class Drainable(Protocol):
    """What the drain needs of the application (``relay.routes.Relay``)."""

    calls: LiveCalls

    def start_draining(self) -> None: ...

    async def end_calls(self) -> int:
        """End every live call politely (the drain deadline); returns how many."""
        ...


class Drainer:
    """Runs the drain of one application, on the schedule ``drain_step`` gives."""

    def __init__(self, app: Drainable, times: DrainTimes,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._app = app
        self._times = times
        self._clock = clock

    async def run(self) -> None:
        app, times = self._app, self._times
        started = self._clock()
        app.start_draining()
        app.calls.last_end = None
        log.info("draining: refusing new calls; %d call(s) may go on for up to %.0f s",
                 len(app.calls), times.drain_seconds)
        asked = False
        while True:
            step = drain_step(times, now=self._clock(), started=started, active=len(app.calls),
                              last_end=app.calls.last_end, asked_to_end=asked)
            if step == "exit":
                break
            if step == "end_calls":
                asked = True
                count = await app.end_calls()
                log.info("drain deadline: ending %d call(s)", count)
            await asyncio.sleep(POLL)
        if app.calls:
            log.warning("drain: %d call(s) did not end in time; the shutdown closes them",
                        len(app.calls))
        log.info("drained in %.1f s", self._clock() - started)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with the relay's drain between the first signal and its shutdown."""

    def __init__(self, config: uvicorn.Config, app: Drainable, times: DrainTimes) -> None:
        super().__init__(config)
        self._drainer = Drainer(app, times)
        self._drain_requested = False
        self._drain: asyncio.Task[None] | None = None
        self.forced = False
        # Signals left to someone else: a worker's parent turns Ctrl-C (SIGINT, sent to the
        # whole process group) into one SIGTERM per worker (relay.workers).
        self.ignored_signals: frozenset[int] = frozenset()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: set flags only; the loop's next tick acts on them.
        if sig in self.ignored_signals:
            return
        if not self._drain_requested and not self.should_exit:
            self._drain_requested = True
            return
        # The second signal (or one after the drain): end everything now, no re-raise.
        self.forced = True
        self.should_exit = True
        self.force_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self._drain_requested and self._drain is None and not self.should_exit:
            self._drain = asyncio.get_running_loop().create_task(self._drainer.run(),
                                                                 name="drain")
        if self._drain is not None and self._drain.done():
            self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        drain = self._drain
        if drain is not None and not drain.done():
            drain.cancel()
        if drain is not None:
            await asyncio.wait([drain])
            if drain.cancelled():
                log.warning("drain cut short: closing every call now")
            elif drain.exception() is not None:
                log.error("drain failed", exc_info=drain.exception())
        await super().shutdown(sockets)
