"""What the relay does when its shared store fails: it fails open, says so once, and recovers.

The store holds limits and single-use checks; the phone line must not depend on it. When the
wrapped store raises ``StoreUnavailable`` (Redis down, or slower than its timeout), every
operation answers as if the check had passed: ``acquire`` and ``put_new`` return True, ``get``
returns None, writes are dropped (``put_marked`` says it wrote its own value), and
``delete_marked`` says it forgot the key (it expires instead). The Twilio signature and the
HMAC stream token still protect each call; what is lost for the outage is only what several
instances share (a token used twice, a limit counted per instance).

One ERROR line marks the start of an outage and one INFO line its end, however many calls pass
in between. After a failure the store is left alone for ``retry_after`` seconds, so calls
during an outage do not each wait out the timeout; the first operation after that tries again.
``errors`` counts the operations that failed open (``relay_store_errors_total``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from relay.errors import StoreUnavailable
from relay.store import Store

log = logging.getLogger(__name__)
T = TypeVar("T")


class FailOpenStore:
    """A ``Store`` that answers "allowed" while the store it wraps is unavailable."""

    def __init__(self, inner: Store, *, retry_after: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.inner = inner
        self.retry_after = retry_after
        self._clock = clock
        self.errors = 0  # operations answered without the store; read by the metrics
        self._down_since: float | None = None
        self._next_try = 0.0

    @property
    def available(self) -> bool:
        """False from a failure until an operation succeeds again."""
        return self._down_since is None

    async def guard(self, op: Callable[[], Awaitable[T]], fallback: T) -> T:
        """Run ``op`` as one of this store's operations: ``fallback`` when it raises
        ``StoreUnavailable``, with the same outage log and count (for other clients of the
        same Redis, such as the rate limiter's)."""
        return await self._call(op, fallback)

    async def _call(self, op: Callable[[], Awaitable[T]], fallback: T) -> T:
        now = self._clock()
        if self._down_since is not None and now < self._next_try:
            self.errors += 1
            return fallback
        try:
            result = await op()
        except StoreUnavailable as exc:
            self.errors += 1
            self._next_try = self._clock() + self.retry_after
            if self._down_since is None:
                self._down_since = now
                log.error("shared store unavailable (%s): limits and single-use checks are "
                          "not shared until it answers again", exc)
            return fallback
        if self._down_since is not None:
            log.info("shared store available again after %.1f s", now - self._down_since)
            self._down_since = None
        return result

    async def put(self, key: str, value: str, ttl: float) -> None:
        await self._call(lambda: self.inner.put(key, value, ttl), None)

    async def put_new(self, key: str, value: str, ttl: float) -> bool:
        return await self._call(lambda: self.inner.put_new(key, value, ttl), True)

    async def get(self, key: str) -> str | None:
        return await self._call(lambda: self.inner.get(key), None)

    async def delete(self, key: str) -> None:
        await self._call(lambda: self.inner.delete(key), None)

    async def put_marked(self, key: str, mark: str, value: str, ttl: float) -> bool:
        # Unknown while unavailable: as if no other writer had taken the key (dropped).
        return await self._call(lambda: self.inner.put_marked(key, mark, value, ttl), True)

    async def delete_marked(self, key: str, mark: str) -> bool:
        # Unknown while unavailable: as if the writer's own value went (it expires instead).
        return await self._call(lambda: self.inner.delete_marked(key, mark), True)

    async def acquire(self, pool: str, holder: str, *, limit: int, ttl: float) -> bool:
        return await self._call(lambda: self.inner.acquire(pool, holder, limit=limit, ttl=ttl),
                                True)

    async def release(self, pool: str, holder: str) -> None:
        await self._call(lambda: self.inner.release(pool, holder), None)

    async def held(self, pool: str) -> int:
        return await self._call(lambda: self.inner.held(pool), 0)

    async def holders(self, pool: str) -> list[str]:
        return await self._call(lambda: self.inner.holders(pool), [])
