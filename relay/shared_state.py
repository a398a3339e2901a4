"""What the relay shares across calls, and with other instances when ``REDIS_URL`` is set.

``SharedState.from_settings`` builds, once per process, the ``Store`` (outcome records,
single-use tokens, agent-session slots), the ``Bus`` (hang-ups across instances), the live-call
``CallDirectory`` and the ``limits`` storage of the caller rate limit: all in this process's
memory without ``REDIS_URL``, all in that Redis with it. The Redis store is wrapped in
``FailOpenStore``, so a Redis that is down or slow never takes the phone line down.
``running()`` is the lifespan of it all: the directory's renewals and hang-up listener run
while the app serves, and the Redis connections are closed at the end.

Nothing here is on a call's audio path: the store is used when a call starts and ends, when its
agent session is ready, and by the directory's renewal task.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from limits.errors import StorageError
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, Metric
from redis.exceptions import RedisError

from relay.background import running_task
from relay.bus import Bus, MemoryBus
from relay.call_directory import CallDirectory
from relay.config import Settings
from relay.errors import StoreUnavailable
from relay.fail_open import FailOpenStore
from relay.store import MemoryStore, Store


@dataclass
class SharedState:
    store: Store
    bus: Bus
    directory: CallDirectory
    shared: bool  # True: other instances see the same state (Redis)
    limiter_storage: Any = None  # limits' async storage; None: its memory storage
    errors: FailOpenStore | None = None  # the counter of store operations that failed open
    timeout: float = 0.25  # REDIS_TIMEOUT
    _closers: list[Any] = field(default_factory=list)

    @classmethod
    def from_settings(cls, settings: Settings) -> SharedState:
        if not settings.redis_url:
            store: Store = MemoryStore()
            bus: Bus = MemoryBus()
            return cls(store, bus, CallDirectory(store, bus, lease=settings.call_lease),
                       shared=False)
        import redis.asyncio as aioredis
        from limits.aio.storage import RedisStorage

        from relay.bus import RedisBus
        from relay.redis_store import RedisStore

        url, timeout = settings.redis_url, settings.redis_timeout
        redis_store = RedisStore.from_url(url, timeout=timeout)
        guarded = FailOpenStore(redis_store)
        # Pub/sub waits for messages: a client of its own, without the operations' timeout.
        bus_client = aioredis.Redis.from_url(url, socket_connect_timeout=timeout,
                                             health_check_interval=30)
        bus = RedisBus(bus_client, timeout=timeout)
        # The limiter's connections come from a pool of ours (a documented option of its
        # storage), so that they are closed with the others: the storage has no close.
        limiter_pool = aioredis.ConnectionPool.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout)
        limiter = RedisStorage("async+" + url, implementation="redispy", wrap_exceptions=True,
                               connection_pool=limiter_pool)  # type: ignore[arg-type]
        directory = CallDirectory(guarded, bus, lease=settings.call_lease)
        return cls(guarded, bus, directory, shared=True, limiter_storage=limiter,
                   errors=guarded, timeout=timeout,
                   _closers=[redis_store.aclose, bus_client.aclose, limiter_pool.aclose])

    async def limited(self, hit: Callable[[], Awaitable[bool]]) -> bool:
        """One hit of the caller rate limiter: its answer, or True (allowed) when its Redis
        fails; an outage of the limiter's Redis is the store's outage, logged and counted once.
        """
        if self.errors is None:
            return await hit()

        async def bounded() -> bool:
            try:
                async with asyncio.timeout(self.timeout):
                    return await hit()
            except (StorageError, RedisError, OSError, TimeoutError) as exc:
                raise StoreUnavailable(f"rate limiter: {type(exc).__name__}: {exc}") from exc

        return await self.errors.guard(bounded, True)

    @property
    def store_errors(self) -> int:
        """``relay_store_errors_total``: store operations that failed open."""
        return self.errors.errors if self.errors is not None else 0

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Add ``relay_store_errors_total`` to the process's metrics (read when scraped)."""
        registry.register(_StoreErrors(self))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        try:
            async with running_task(self.directory.run(), "call directory"):
                yield
        finally:
            for close in self._closers:
                with contextlib.suppress(RedisError, OSError):
                    await close()


class _StoreErrors:
    def __init__(self, shared: SharedState) -> None:
        self._shared = shared

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "relay_store_errors",
            "Shared-store (Redis) operations that failed or timed out; the relay failed open.",
            value=self._shared.store_errors)
