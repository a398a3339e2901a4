"""The calls in progress on every instance: who holds each, and what a survivor needs of it.

Each live call has an entry (``LiveEntry``): the store value ``live:<CallSid>`` and a slot of
the ``live`` pool, both with a lease of ``lease`` seconds. The instance holding the call renews
the leases of all its calls in one task of its own every ``lease / 3`` seconds (never from a
call's audio path), so the entries of an instance that died vanish within ``lease`` seconds.
An entry carries what the calls page shows (the instance, when it started, the direction) and
what another instance needs to take the call over when its holder died mid-call: the agent's
``session_id`` and resume token, the stream's ``<Parameter>``s, and how many times the call
has already been streamed again.

Each entry names its ``holder``, the stream that wrote it: a call streamed again (after a lost
stream, or on another instance) gets a new holder, and the stream it replaced renews, updates
and takes back only its own entry (``Store.put_marked``, ``Store.delete_marked``: each entry's
value starts with its holder), never the new one, whichever instance each is on. A stream
lost with its agent session live may leave its entry (``keep``): it outlives the stream by up
to ``lease`` seconds, for the ``<Connect action>`` to stream the call again. A renewal and the
end of the same call never interleave (one lock), so a renewal cannot bring back the entry of
a call that has just ended.

Hanging up a call held elsewhere goes through the bus (``hangup`` channel): every instance
listens, and the one holding the call hangs it up.

Store round trips per call: 2 when it starts (value and slot), 1 when the agent session is
ready, 2 when it ends (none when the entry is kept), and 2 per renewal (every ``lease / 3``
seconds) while it lasts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

import orjson

from relay.bus import Bus
from relay.store import UNLIMITED, Store

log = logging.getLogger(__name__)
POOL = "live"
KEY_PREFIX = "live:"
HANGUP_CHANNEL = "hangup"
# Well above a renewal period, well inside the agent's 30 s resume grace window.
DEFAULT_LEASE = 15.0


class HangUp(Protocol):
    """How the holder of a call hangs it up: after a short goodbye, or ``now``."""

    def __call__(self, *, now: bool) -> None: ...


def instance_name() -> str:
    """This process among the instances: host, pid and a random tail (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"


@dataclass(frozen=True, slots=True)
class LiveEntry:
    call_sid: str
    instance: str
    started_at: float  # Unix time
    direction: str = "inbound"
    parameters: dict[str, str] = field(default_factory=dict)  # the stream's, without the token
    session_id: str | None = None
    resume_token: str | None = None
    restreams: int = 0
    holder: str = ""  # the stream that wrote the entry (``new_holder``)

    def to_json(self) -> str:
        # The holder first, so that the value starts with its stream's ``mark``.
        return orjson.dumps({"holder": self.holder, **asdict(self)}).decode()

    @property
    def mark(self) -> str:
        """How every value its stream writes starts (``Store.put_marked``)."""
        return '{"holder":' + orjson.dumps(self.holder).decode() + ","

    @classmethod
    def from_json(cls, raw: str) -> LiveEntry | None:
        try:
            data: dict[str, Any] = orjson.loads(raw)
            return cls(call_sid=str(data["call_sid"]), instance=str(data["instance"]),
                       started_at=float(data["started_at"]),
                       direction=str(data.get("direction") or "inbound"),
                       parameters={str(k): str(v) for k, v in
                                   (data.get("parameters") or {}).items()},
                       session_id=data.get("session_id") or None,
                       resume_token=data.get("resume_token") or None,
                       restreams=int(data.get("restreams") or 0),
                       holder=str(data.get("holder") or ""))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            return None


def new_holder() -> str:
    """A stream's name in its call's entry: unique among the streams of every instance."""
    return secrets.token_hex(8)


class CallDirectory:
    """This process's view of every instance's live calls, and the keeper of its own."""

    def __init__(self, store: Store, bus: Bus, *, instance: str | None = None,
                 lease: float = DEFAULT_LEASE,
                 renewals: list[Callable[[str, float], Any]] | None = None) -> None:
        self.store = store
        self.bus = bus
        self.instance = instance or instance_name()
        self.lease = lease
        # Other leases to renew with each call's entry (e.g. its agent-session slot):
        # coroutine functions taking the CallSid and the lease.
        self.renewals = renewals if renewals is not None else []
        self._mine: dict[str, LiveEntry] = {}
        self._hang_ups: dict[str, HangUp] = {}
        # Held while one call's leases are written: its end waits for that write, no longer.
        self._writing = asyncio.Lock()
        self._moved: set[str] = set()  # holders whose call another stream took over, logged

    def mine(self) -> list[LiveEntry]:
        return list(self._mine.values())

    def _holds(self, call_sid: str, holder: str) -> LiveEntry | None:
        entry = self._mine.get(call_sid)
        return entry if entry is not None and entry.holder == holder else None

    async def add(self, entry: LiveEntry, hang_up: HangUp) -> None:
        """A stream of this instance has started its call (or taken it over)."""
        assert entry.holder, "an entry names the stream that holds it"
        entry = replace(entry, instance=self.instance)
        async with self._writing:
            self._mine[entry.call_sid] = entry
            self._hang_ups[entry.call_sid] = hang_up
            await self._write(entry, claim=True)

    async def update(self, call_sid: str, holder: str, **changes: Any) -> None:
        async with self._writing:
            entry = self._holds(call_sid, holder)
            if entry is None:
                return
            self._mine[call_sid] = entry = replace(entry, **changes)
            await self._put_own(entry)

    async def remove(self, call_sid: str, holder: str, *, keep: bool = False,
                     **last: Any) -> bool:
        """``holder``'s stream has ended here: its entry goes at once, or, with ``keep``, is
        left to its lease (the call may be streamed again), written once more with the
        ``last`` changes (the session to resume, even if an update did not get through). A
        newer holder's entry stays.

        Returns False when another stream (here or on another instance) has taken the call
        over, so the agent session is that stream's now; True otherwise.
        """
        async with self._writing:
            entry = self._holds(call_sid, holder)
            if entry is None:
                return call_sid not in self._mine  # a newer stream of this instance holds it
            del self._mine[call_sid]
            self._hang_ups.pop(call_sid, None)
            self._moved.discard(holder)
            if keep:
                return await self._put_own(replace(entry, **last))
            # Only if no other stream (here or elsewhere) has written the call's entry since.
            if not await self.store.delete_marked(KEY_PREFIX + call_sid, entry.mark):
                return False  # (an entry that expired meanwhile is nobody's: True)
            await self.store.release(POOL, call_sid)
            return True

    async def find(self, call_sid: str) -> LiveEntry | None:
        entry = self._mine.get(call_sid)
        if entry is not None:
            return entry
        raw = await self.store.get(KEY_PREFIX + call_sid)
        return LiveEntry.from_json(raw) if raw is not None else None

    async def all(self) -> list[LiveEntry]:
        """Every instance's live calls (this one's even while the store is unavailable)."""
        entries = dict(self._mine)
        for call_sid in await self.store.holders(POOL):
            if call_sid not in entries:
                entry = await self.find(call_sid)
                if entry is not None:
                    entries[call_sid] = entry
        return sorted(entries.values(), key=lambda e: e.started_at)

    async def hang_up(self, call_sid: str, *, now: bool = False) -> bool:
        """Hang up a live call wherever it is held; False when it could not be asked."""
        local = self._hang_ups.get(call_sid)
        if local is not None:
            local(now=now)
            return True
        message = orjson.dumps({"call_sid": call_sid, "now": now}).decode()
        return await self.bus.publish(HANGUP_CHANNEL, message)

    def _hang_up_here(self, message: str) -> None:
        try:
            request = orjson.loads(message)
            call_sid, now = str(request["call_sid"]), bool(request.get("now"))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("ignored a malformed hang-up request on the bus")
            return
        local = self._hang_ups.get(call_sid)
        if local is not None:
            log.info("[%s] hang-up asked by another instance", call_sid)
            local(now=now)

    async def _write(self, entry: LiveEntry, *, claim: bool = False) -> bool:
        """Write the call's entry: ``claim`` it (a stream that starts or takes the call over),
        or renew it unless another stream has written it since (an entry that expired, as
        in a store outage, is written back). False when another stream holds the call."""
        if claim:
            await self.store.put(KEY_PREFIX + entry.call_sid, entry.to_json(), self.lease)
        elif not await self._put_own(entry):
            return False
        await self.store.acquire(POOL, entry.call_sid, limit=UNLIMITED, ttl=self.lease)
        return True

    async def _put_own(self, entry: LiveEntry) -> bool:
        """Write the entry unless another stream holds the call (False then)."""
        return await self.store.put_marked(KEY_PREFIX + entry.call_sid, entry.mark,
                                           entry.to_json(), self.lease)

    async def renew(self) -> None:
        """One renewal of every lease of this instance's calls."""
        for call_sid in list(self._mine):
            async with self._writing:
                entry = self._mine.get(call_sid)
                if entry is None:
                    continue  # ended meanwhile
                if not await self._write(entry):
                    # Streamed again elsewhere while this stream lives on (this instance
                    # stalled, say): its places are not renewed, so they are not counted twice.
                    if entry.holder not in self._moved:
                        self._moved.add(entry.holder)
                        log.warning("[%s] the call is held by another stream now: this "
                                    "stream's leases are no longer renewed", call_sid)
                    continue
                for renewal in self.renewals:
                    await renewal(call_sid, self.lease)

    async def run(self) -> None:
        """Renew this instance's leases and answer hang-ups from others, until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.bus.listen(HANGUP_CHANNEL, self._hang_up_here),
                           name="hang-up listener")
            while True:
                await asyncio.sleep(self.lease / 3)
                started = time.monotonic()
                await self.renew()  # the store fails open: nothing to catch here
                if time.monotonic() - started > self.lease / 3:
                    log.warning("renewing %d call leases took %.1f s", len(self._mine),
                                time.monotonic() - started)
