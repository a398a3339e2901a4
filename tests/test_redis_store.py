"""The Redis store beyond the contract: shared by several stores, bounded, and failing open.

All against a real redis-server of the test's own (``redis_server``), stopped, paused and
started again to make the outages.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis
from limits import parse
from limits.aio.strategies import MovingWindowRateLimiter

from relay.errors import StoreUnavailable
from relay.fail_open import FailOpenStore
from relay.redis_store import RedisStore
from relay.shared_state import SharedState
from tests import conftest
from tests.conftest import MS
from tests.helpers import subscribed
from tests.redis_server import RedisServer

TIMEOUT = 0.25 * MS


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def make_store(redis_server: RedisServer) -> AsyncIterator[Callable[[], RedisStore]]:
    stores: list[RedisStore] = []

    def make() -> RedisStore:
        stores.append(RedisStore.from_url(redis_server.url, timeout=TIMEOUT))
        return stores[-1]

    yield make
    for store in stores:
        await store.aclose()


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "relay.fail_open" and r.levelno == logging.ERROR]


@pytest.mark.anyio
async def test_two_stores_on_one_redis_share_tokens_and_slots(
        make_store: Callable[[], RedisStore]) -> None:
    a, b = make_store(), make_store()
    assert await a.put_new("used:tok1", "1", ttl=60)
    assert not await b.put_new("used:tok1", "1", ttl=60)
    await b.put("outcome:CA1", '{"outcome": "completed"}', ttl=60)
    assert await a.get("outcome:CA1") == '{"outcome": "completed"}'
    assert await a.acquire("agent", "CA1", limit=2, ttl=60)
    assert await b.acquire("agent", "CA2", limit=2, ttl=60)
    assert not await a.acquire("agent", "CA3", limit=2, ttl=60)
    assert not await b.acquire("agent", "CA3", limit=2, ttl=60)
    await a.release("agent", "CA2")  # any instance may give a slot back
    assert await b.acquire("agent", "CA3", limit=2, ttl=60)
    assert await a.held("agent") == await b.held("agent") == 2


@pytest.mark.anyio
async def test_a_pool_key_expires_with_its_last_slot(make_store: Callable[[], RedisStore]) -> None:
    store = make_store()
    assert await store.acquire("agent", "CA1", limit=2, ttl=60)
    assert await store.acquire("agent", "CA2", limit=2, ttl=0.2)  # shorter: key keeps 60 s
    ttl_ms = await store.client.pttl("relay:slots:agent")
    assert 59_000 < ttl_ms <= 60_000
    assert await store.acquire("short", "CA1", limit=1, ttl=0.2)
    time.sleep(0.3)  # noqa: ASYNC251 - Redis's own clock must pass, nothing else runs
    assert await store.client.exists("relay:slots:short") == 0  # nothing left behind
    assert await store.held("agent") == 1


@pytest.mark.anyio
async def test_redis_stopped_fails_open_once_and_recovers(
        redis_server: RedisServer, make_store: Callable[[], RedisStore],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "relay.fail_open")
    clock = Clock()
    a = FailOpenStore(make_store(), retry_after=1.0, clock=clock)
    b = FailOpenStore(make_store(), retry_after=1.0, clock=clock)
    assert await a.put_new("used:tok1", "1", ttl=60)
    assert not await b.put_new("used:tok1", "1", ttl=60)
    assert a.available and a.errors == 0

    redis_server.stop()
    with pytest.raises(StoreUnavailable):
        await a.inner.get("used:tok1")
    caplog.clear()
    started = time.monotonic()
    for n in range(20):  # twenty calls during the outage: every check passes
        assert await a.put_new(f"used:tok{n}", "1", ttl=60) is True
        assert await a.acquire("agent", f"CA{n}", limit=1, ttl=60) is True
        assert await a.get(f"outcome:CA{n}") is None
        await a.put(f"outcome:CA{n}", "x", ttl=60)
        await a.release("agent", f"CA{n}")
    assert time.monotonic() - started < 2 * TIMEOUT + 0.5 * MS  # one try waited, no more
    assert not a.available
    assert a.errors == 100
    assert len(errors(caplog)) == 1

    redis_server.start()
    assert await a.put_new("used:tokX", "1", ttl=60) is True  # still inside retry_after
    assert a.errors == 101
    clock.now += 1.0
    caplog.clear()
    assert await a.put_new("used:tokY", "1", ttl=60) is True
    assert a.available
    assert [r.levelname for r in caplog.records if r.name == "relay.fail_open"] == ["INFO"]
    assert await b.put_new("used:tokY", "1", ttl=60) is False  # shared again
    assert await b.acquire("agent", "CA1", limit=1, ttl=60)
    assert await a.acquire("agent", "CA2", limit=1, ttl=60) is False
    assert a.errors == 101


@pytest.mark.anyio
async def test_a_redis_that_does_not_answer_costs_one_timeout(
        redis_server: RedisServer, make_store: Callable[[], RedisStore],
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    store = FailOpenStore(make_store(), retry_after=1.0, clock=clock)
    assert await store.acquire("agent", "CA1", limit=1, ttl=60)
    redis_server.pause()  # accepts connections, answers nothing
    try:
        started = time.monotonic()
        assert await store.acquire("agent", "CA2", limit=1, ttl=60) is True
        waited = time.monotonic() - started
        assert TIMEOUT * 0.9 <= waited < TIMEOUT + 0.5 * MS
        started = time.monotonic()
        assert await store.put_new("used:tok", "1", ttl=60) is True
        assert time.monotonic() - started < 0.05 * MS  # inside retry_after: no wait at all
        assert len(errors(caplog)) == 1
    finally:
        redis_server.resume()
    clock.now += 1.0
    assert await store.acquire("agent", "CA2", limit=1, ttl=60) is False  # CA1 still holds it
    assert store.available


@pytest.mark.anyio
async def test_the_shared_state_closes_every_redis_connection_it_opened(
        redis_server: RedisServer) -> None:
    watcher = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        async def others() -> int:  # connections to Redis besides the watcher's own
            return len(await watcher.client_list()) - 1

        assert await others() == 0
        shared = SharedState.from_settings(conftest.test_settings(0, "ws://127.0.0.1:9",
                                                         redis_url=redis_server.url))
        limiter = MovingWindowRateLimiter(shared.limiter_storage)
        async with shared.running():
            assert await shared.limited(
                lambda: limiter.hit(parse("5/minute"), "caller", "digest"))
            await shared.store.put("k", "v", ttl=10)
            await subscribed(shared.directory, 1, 5 * MS)  # the bus listens too
            assert await others() >= 3  # the store's, the bus's and the limiter's
        assert await others() == 0
    finally:
        await watcher.aclose()
