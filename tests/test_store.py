"""The store contract: every Store implementation passes these (the clock is the test's)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from relay.store import MemoryStore, Store


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["memory"])
async def store(request: pytest.FixtureRequest, clock: Clock) -> AsyncIterator[Store]:
    # Shared stores join the params; time-dependent tests advance ``clock`` (memory) or wait.
    yield MemoryStore(clock)


@pytest.mark.anyio
async def test_values_expire(store: Store, clock: Clock) -> None:
    assert await store.get("a") is None
    await store.put("a", "1", ttl=10)
    assert await store.get("a") == "1"
    await store.put("a", "2", ttl=10)
    assert await store.get("a") == "2"
    clock.now += 10.5
    assert await store.get("a") is None


@pytest.mark.anyio
async def test_put_new_sets_once_until_expiry(store: Store, clock: Clock) -> None:
    assert await store.put_new("token", "A", ttl=5) is True
    assert await store.put_new("token", "B", ttl=5) is False
    assert await store.get("token") == "A"
    clock.now += 6
    assert await store.put_new("token", "C", ttl=5) is True
    await store.delete("token")
    await store.delete("token")  # deleting twice is no error
    assert await store.get("token") is None


@pytest.mark.anyio
async def test_slots_are_limited_renewed_released_and_expire(store: Store, clock: Clock) -> None:
    assert await store.acquire("agent", "CA1", limit=2, ttl=30)
    assert await store.acquire("agent", "CA2", limit=2, ttl=30)
    assert not await store.acquire("agent", "CA3", limit=2, ttl=30)
    assert await store.acquire("agent", "CA1", limit=2, ttl=30)  # a holder renews its slot
    assert await store.held("agent") == 2
    await store.release("agent", "CA2")
    await store.release("agent", "CA2")
    assert await store.acquire("agent", "CA3", limit=2, ttl=30)
    clock.now += 20
    assert await store.acquire("agent", "CA1", limit=2, ttl=30)  # renewed: lives 30 s more
    clock.now += 15  # CA3's slot has expired, CA1's has not
    assert await store.held("agent") == 1
    assert await store.acquire("agent", "CA4", limit=2, ttl=30)
    assert await store.held("other") == 0
