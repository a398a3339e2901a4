"""Admission: which calls the relay takes at ``/twiml``, and which stream each token opens.

A call that cannot be served well is refused at the webhook, before anything is spent. The
checks, in order (the first that fails names the refusal):

1. ``CALLER_RATE_LIMIT``: calls from one ``From`` number, counted by the ``limits`` library
   (moving window; memory storage in this process, its Redis storage when shared). Counted first,
   so every attempt of a caller who dials again and again counts, whatever else refuses it.
2. Draining: a process that is shutting down takes no new call.
3. Load: the event loop's lag over the last second (``relay.load``) above
   ``ADMISSION_MAX_LAG_MS``: the calls already up would suffer from one more.
4. ``MAX_CONCURRENT_CALLS``: calls this process serves, counted from the ``/twiml`` answer
   until the stream ends; a call whose stream never comes frees its place when its token
   expires (``TOKEN_TTL``), so a burst of webhooks cannot overshoot the cap.
5. ``AGENT_MAX_SESSIONS``: the agent account's concurrency, as slots of the shared ``Store``
   (every instance sharing the store shares the count), with the same lifetime until the
   stream starts, then a lease of ``CALL_LEASE`` renewed while the call lives.

A refusal for lack of capacity (2–5) is sent to ``FALLBACK_NUMBER`` with ``<Dial>`` when it is
set (overflow to people); a rate-limited caller always gets ``<Reject reason="busy"/>``.

Stream tokens are single-use: the first stream that presents a token records its id in the
store until the token expires, and any later stream with it is refused.

``refusal_twiml`` and ``load_refusal`` are pure; ``Admission`` is the thin owner of the
counters, the limiter and the store.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from twilio.twiml.voice_response import VoiceResponse

from relay.config import Settings
from relay.masking import mask_number
from relay.outcomes import Outcome
from relay.security import StreamTokens
from relay.store import UNLIMITED, MemoryStore, Store

log = logging.getLogger("relay.admission")

AGENT_SESSIONS = "agent-sessions"  # the Store pool of the agent account's sessions
CALLS = "calls"  # the pool of this process's calls (always in this process's memory)
TOKEN_KEY = "stream-token:"
CALL_KEY = "stream-call:"
# This process's place of a call is kept for its longest possible life once its stream starts
# (a crashed process takes its places with it). The agent-session slot, which other instances
# count too, is a lease of CALL_LEASE seconds instead, renewed while the call lives.
SLOT_MARGIN = 60.0
RESTREAM_MARK = "#"  # between a CallSid and its re-stream's number, in the name of its places
# How one hit reaches the rate limiter (the shared store's guard fails it open).
Limited = Callable[[Callable[[], Awaitable[bool]]], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a call is refused: ``reason`` for the log, ``outcome`` from the shared set."""

    reason: str
    outcome: Outcome = Outcome.REFUSED_BUSY

    @property
    def for_capacity(self) -> bool:
        """Capacity refusals may overflow to people; a rate-limited caller never does."""
        return self.outcome is Outcome.REFUSED_BUSY


RATE_LIMITED = Refusal("caller rate limit (CALLER_RATE_LIMIT)", Outcome.REFUSED_RATE_LIMITED)
DRAINING = Refusal("draining: the server is shutting down")
MAX_CALLS = Refusal("MAX_CONCURRENT_CALLS reached")
MAX_SESSIONS = Refusal("AGENT_MAX_SESSIONS reached")


def load_refusal(*, draining: bool, lag_ms: float, max_lag_ms: float | None) -> Refusal | None:
    """The refusal the process's own state gives a new call, if any (pure)."""
    if draining:
        return DRAINING
    if max_lag_ms is not None and lag_ms > max_lag_ms:
        return Refusal(f"overloaded: event loop lag {lag_ms:.0f} ms over the last second "
                       f"(ADMISSION_MAX_LAG_MS {max_lag_ms:.0f})")
    return None


def refusal_twiml(refusal: Refusal, fallback_number: str | None, *,
                  outbound: bool = False) -> str:
    """``<Dial>`` to the fallback for a capacity refusal when one is set, else busy (pure).

    An outbound call (placed by the relay) cannot be rejected once answered: it hangs up.
    """
    response = VoiceResponse()
    if outbound:
        response.hangup()
    elif refusal.for_capacity and fallback_number:
        response.dial(fallback_number)
    else:
        response.reject(reason="busy")
    return str(response)


def places_name(call_sid: str, restream: int, open_here: set[str]) -> str:
    """The name of a stream's places (pure): its call's first stream renews those /twiml
    took (named by the CallSid); a re-stream, or any other stream open here, has its own."""
    if not restream and call_sid not in open_here:
        return call_sid
    name = base = f"{call_sid}{RESTREAM_MARK}{restream}"
    n = 1
    while name in open_here:
        n += 1
        name = f"{base}.{n}"
    return name


def token_id(token: str) -> str:
    """What the store keeps of a used token: a digest, never the token."""
    return hashlib.sha256(token.encode()).hexdigest()[:32]


class Admission:
    """The counters, the rate limiter and the single-use tokens of one process."""

    def __init__(self, settings: Settings, store: Store, *,
                 lag_ms: Callable[[], float] = lambda: 0.0,
                 limiter_storage: Storage | None = None,
                 limited: Limited | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._store = store
        self._local: Store = MemoryStore(clock)
        self._lag_ms = lag_ms
        self.draining = False
        self._rate: RateLimitItem | None = (
            parse(settings.caller_rate_limit) if settings.caller_rate_limit else None)
        self._limiter = MovingWindowRateLimiter(
            limiter_storage or MemoryStorage())
        # How a hit reaches the limiter: as it is, or failing open when its storage fails.
        self._limited = limited or _as_is
        self._caller_key = hashlib.sha256(b"relay-caller:" + settings.relay_secret.encode())
        self._streams: dict[str, set[str]] = {}  # CallSid -> the places of its streams here

    def _caller(self, number: str) -> str:
        # The limiter's keys are digests: a shared store holds no list of who called.
        digest = self._caller_key.copy()
        digest.update(number.encode())
        return digest.hexdigest()[:24]

    async def admit(self, call_sid: str, caller: str, *, outbound: bool = False,
                    ) -> Refusal | None:
        """Take the call (holding its places until its stream ends or its token expires).

        Outbound calls are the relay's own: they are not counted against their ``From``
        (the relay's number), only against capacity.
        """
        refusal = await self._check(call_sid, caller, outbound)
        if refusal is not None:
            log.warning("[%s] call from %s refused (%s): %s", call_sid,
                        mask_number(caller) or "unknown", refusal.outcome, refusal.reason)
        return refusal

    async def _check(self, call_sid: str, caller: str, outbound: bool) -> Refusal | None:
        s = self._settings
        rate = self._rate
        if rate is not None and not outbound and not await self._limited(
                lambda: self._limiter.hit(rate, "caller", self._caller(caller or "unknown"))):
            return RATE_LIMITED
        refusal = load_refusal(draining=self.draining, lag_ms=self._lag_ms(),
                               max_lag_ms=s.admission_max_lag_ms)
        if refusal is not None:
            return refusal
        ttl = s.token_ttl
        if s.max_concurrent_calls is not None and not await self._local.acquire(
                CALLS, call_sid, limit=s.max_concurrent_calls, ttl=ttl):
            return MAX_CALLS
        if s.agent_max_sessions is not None and not await self._store.acquire(
                AGENT_SESSIONS, call_sid, limit=s.agent_max_sessions, ttl=ttl):
            await self._local.release(CALLS, call_sid)
            return MAX_SESSIONS
        return None

    async def open_stream(self, call_sid: str, token: str, restream: int = 0) -> str | None:
        """A stream presents ``token`` (already verified): on its first use, the name of the
        stream's places (for ``close_stream``), else None.

        The token's id is kept until the token expires (and a second longer). A call streamed
        again (``restream``: how many times) has places of its own, never refused (the call
        is already up), so the stream it replaced, when it ends, gives back only its own.
        """
        expires = StreamTokens.expiry(token)
        ttl = max(1.0, (expires or 0) - time.time() + 1.0) if expires else self._settings.token_ttl
        # Twilio has been reported to open a second stream during a network handover: both
        # cases are logged, so the choice of refusing it can be revisited with data.
        if not await self._store.put_new(TOKEN_KEY + token_id(token), call_sid, ttl):
            log.warning("[%s] a second stream for this CallSid refused: its token already "
                        "opened a stream", call_sid)
            return None
        s = self._settings
        if not await self._store.put_new(CALL_KEY + call_sid, "1", s.max_call_seconds) \
                and not restream:
            log.warning("[%s] a second stream for this CallSid let in: it has a token of its "
                        "own (a second webhook)", call_sid)
        open_here = self._streams.setdefault(call_sid, set())
        places = places_name(call_sid, restream, open_here)
        open_here.add(places)
        life = s.max_call_seconds + SLOT_MARGIN
        if s.max_concurrent_calls is not None:
            await self._local.acquire(CALLS, places, limit=UNLIMITED, ttl=life)
        if s.agent_max_sessions is not None:  # a lease, renewed while the call lives
            await self._store.acquire(AGENT_SESSIONS, places, limit=UNLIMITED, ttl=s.call_lease)
        return places

    async def renew(self, call_sid: str, lease: float) -> None:
        """Renew the agent-session slots of a call this process streams (the directory's
        renewal task calls it): a crashed instance's slots free themselves within ``lease``."""
        if self._settings.agent_max_sessions is None:
            return
        for places in list(self._streams.get(call_sid, ())):
            await self._store.acquire(AGENT_SESSIONS, places, limit=UNLIMITED, ttl=lease)
            if places not in self._streams.get(call_sid, ()):
                # the stream ended while its lease was renewed: the renewal must not outlive it
                await self._store.release(AGENT_SESSIONS, places)

    async def close_stream(self, places: str) -> None:
        """A stream ``open_stream`` let in has ended: its places are free again."""
        call_sid = places.partition(RESTREAM_MARK)[0]
        open_here = self._streams.get(call_sid, set())
        if places not in open_here:
            return
        open_here.discard(places)
        if not open_here:
            del self._streams[call_sid]
            # a second stream matters while one is up
            await self._store.delete(CALL_KEY + call_sid)
        await self._local.release(CALLS, places)
        if self._settings.agent_max_sessions is not None:
            await self._store.release(AGENT_SESSIONS, places)

    async def calls(self) -> int:
        """Calls this process holds a place for (answered, or streaming)."""
        return await self._local.held(CALLS)


async def _as_is(hit: Callable[[], Awaitable[bool]]) -> bool:
    return await hit()
