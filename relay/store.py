"""Cross-call state behind one small interface: values with an expiry, and leased slots.

Everything one call leaves for another request to read (the outcome the ``<Connect action>``
request answers with, a stream token already used, an agent session slot) goes through a
``Store``. ``MemoryStore`` keeps it in this process; a shared store (Redis) implements the same
interface for several instances, and both pass the same contract tests. Values are strings
(callers encode JSON); every key expires, so nothing a crashed call left behind lives forever.
The clock is passed in, so expiry is tested without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

# A limit no pool reaches: the limit of a renewal, so that a slot already held is never refused.
UNLIMITED = 1 << 30


class Store(Protocol):
    async def put(self, key: str, value: str, ttl: float) -> None:
        """Set ``key`` to ``value`` for ``ttl`` seconds (replacing any value)."""

    async def put_new(self, key: str, value: str, ttl: float) -> bool:
        """Set ``key`` only if it is not set (Redis ``SET NX``); True when this call set it."""
        ...

    async def get(self, key: str) -> str | None:
        """The value of ``key``, or None when it is unset or expired."""
        ...

    async def delete(self, key: str) -> None:
        """Forget ``key`` (no error when it is unset)."""

    async def put_marked(self, key: str, mark: str, value: str, ttl: float) -> bool:
        """Set ``key`` to ``value`` (which starts with ``mark``) for ``ttl`` seconds if it is
        unset or its value starts with ``mark``; True when this call set it.

        A writer whose values all start with a mark of its own renews what it wrote without
        overwriting what another writer wrote since.
        """
        ...

    async def delete_marked(self, key: str, mark: str) -> bool:
        """Forget ``key`` only while its value starts with ``mark``: a writer takes back its
        own value, never another's. False when the key holds another writer's value (True
        when it was forgotten, or was already unset)."""
        ...

    async def acquire(self, pool: str, holder: str, *, limit: int, ttl: float) -> bool:
        """Take (or renew) ``holder``'s slot in ``pool`` if fewer than ``limit`` are held.

        A slot expires ``ttl`` seconds after it was last taken, so the slots of a crashed
        holder free themselves; a live holder renews it by calling ``acquire`` again.
        """
        ...

    async def release(self, pool: str, holder: str) -> None:
        """Give ``holder``'s slot in ``pool`` back (no error when it holds none)."""

    async def held(self, pool: str) -> int:
        """How many unexpired slots ``pool`` has."""
        ...

    async def holders(self, pool: str) -> list[str]:
        """The holders of ``pool``'s unexpired slots, in no particular order."""
        ...


class MemoryStore:
    """The store of one process: dicts of expiry times, swept when read."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._values: dict[str, tuple[str, float]] = {}
        self._pools: dict[str, dict[str, float]] = {}

    def _live(self, key: str) -> str | None:
        entry = self._values.get(key)
        if entry is None:
            return None
        if entry[1] <= self._clock():
            del self._values[key]
            return None
        return entry[0]

    def _sweep(self) -> None:
        # Bounded memory: expired keys nobody reads again are dropped on writes.
        if len(self._values) > 1024:
            now = self._clock()
            self._values = {k: v for k, v in self._values.items() if v[1] > now}

    async def put(self, key: str, value: str, ttl: float) -> None:
        self._sweep()
        self._values[key] = (value, self._clock() + ttl)

    async def put_new(self, key: str, value: str, ttl: float) -> bool:
        if self._live(key) is not None:
            return False
        await self.put(key, value, ttl)
        return True

    async def get(self, key: str) -> str | None:
        return self._live(key)

    async def delete(self, key: str) -> None:
        self._values.pop(key, None)

    async def put_marked(self, key: str, mark: str, value: str, ttl: float) -> bool:
        current = self._live(key)
        if current is not None and not current.startswith(mark):
            return False
        await self.put(key, value, ttl)
        return True

    async def delete_marked(self, key: str, mark: str) -> bool:
        current = self._live(key)
        if current is None:
            return True
        if not current.startswith(mark):
            return False
        del self._values[key]
        return True

    def _slots(self, pool: str) -> dict[str, float]:
        now = self._clock()
        slots = {h: t for h, t in self._pools.get(pool, {}).items() if t > now}
        self._pools[pool] = slots
        return slots

    async def acquire(self, pool: str, holder: str, *, limit: int, ttl: float) -> bool:
        slots = self._slots(pool)
        if holder not in slots and len(slots) >= limit:
            return False
        slots[holder] = self._clock() + ttl
        return True

    async def release(self, pool: str, holder: str) -> None:
        self._pools.get(pool, {}).pop(holder, None)

    async def held(self, pool: str) -> int:
        return len(self._slots(pool))

    async def holders(self, pool: str) -> list[str]:
        return list(self._slots(pool))
