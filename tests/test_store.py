"""The store contract: every Store implementation passes these.

Time is measured in the store's own unit and passes through ``Time.wait``: the memory store's
clock is the test's and jumps, while Redis expires keys by its own clock, so for it the unit
is a tenth of a second and the wait is real. The assertions are the same for both.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from relay.redis_store import RedisStore
from relay.store import MemoryStore, Store
from tests.conftest import MS


class Time:
    """The test's view of time for one store: ``unit`` seconds per step, ``wait`` to let it pass."""

    def __init__(self, unit: float, *, real: bool = False) -> None:
        self.unit = unit
        self.now = 1000.0
        self.real = real

    def __call__(self) -> float:
        return self.now

    def s(self, units: float) -> float:
        return units * self.unit

    async def wait(self, units: float) -> None:
        if self.real:
            await asyncio.sleep(units * self.unit)
        else:
            self.now += units * self.unit


@pytest.fixture(params=["memory", "redis"])
async def store_and_time(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Store, Time]]:
    if request.param == "memory":
        time = Time(1.0)
        yield MemoryStore(time), time
        return
    server = request.getfixturevalue("redis_server")
    store = RedisStore.from_url(server.url, timeout=1.0 * MS)
    try:
        yield store, Time(0.1 * MS, real=True)
    finally:
        await store.aclose()


@pytest.fixture
def store(store_and_time: tuple[Store, Time]) -> Store:
    return store_and_time[0]


@pytest.fixture
def t(store_and_time: tuple[Store, Time]) -> Time:
    return store_and_time[1]


@pytest.mark.anyio
async def test_values_expire(store: Store, t: Time) -> None:
    assert await store.get("a") is None
    await store.put("a", "1", ttl=t.s(10))
    assert await store.get("a") == "1"
    await store.put("a", "2", ttl=t.s(10))
    assert await store.get("a") == "2"
    await t.wait(10.5)
    assert await store.get("a") is None


@pytest.mark.anyio
async def test_put_new_sets_once_until_expiry(store: Store, t: Time) -> None:
    assert await store.put_new("token", "A", ttl=t.s(5)) is True
    assert await store.put_new("token", "B", ttl=t.s(5)) is False
    assert await store.get("token") == "A"
    await t.wait(6)
    assert await store.put_new("token", "C", ttl=t.s(5)) is True
    await store.delete("token")
    await store.delete("token")  # deleting twice is no error
    assert await store.get("token") is None


@pytest.mark.anyio
async def test_put_marked_sets_an_unset_key_or_one_its_writer_marked(store: Store, t: Time) -> None:
    assert await store.put_marked("entry", "mine:", "mine:1", ttl=t.s(10)) is True  # unset
    assert await store.put_marked("entry", "mine:", "mine:2", ttl=t.s(10)) is True
    assert await store.get("entry") == "mine:2"
    await store.put("entry", "theirs:1", ttl=t.s(10))  # another writer took it over
    assert await store.put_marked("entry", "mine:", "mine:3", ttl=t.s(10)) is False
    assert await store.get("entry") == "theirs:1"
    assert await store.put_marked("entry", "theirs:", "theirs:2", ttl=t.s(2)) is True
    await t.wait(3)  # the new value's ttl is the one given
    assert await store.get("entry") is None


@pytest.mark.anyio
async def test_delete_marked_forgets_only_its_writers_value(store: Store, t: Time) -> None:
    await store.put("entry", "mine:1", ttl=t.s(10))
    assert await store.delete_marked("entry", "theirs:") is False
    assert await store.get("entry") == "mine:1"
    await store.put("entry", "theirs:1", ttl=t.s(10))  # another writer took it over
    assert await store.delete_marked("entry", "mine:") is False
    assert await store.get("entry") == "theirs:1"
    assert await store.delete_marked("entry", "theirs:") is True
    assert await store.get("entry") is None
    assert await store.delete_marked("entry", "theirs:") is True  # gone: nobody else's
    await store.put("entry", "mine:2", ttl=t.s(2))
    await t.wait(3)
    assert await store.delete_marked("entry", "mine:") is True  # expired: nobody else's
    assert await store.get("entry") is None


@pytest.mark.anyio
async def test_slots_are_limited_renewed_released_and_expire(store: Store, t: Time) -> None:
    ttl = t.s(30)
    assert await store.acquire("agent", "CA1", limit=2, ttl=ttl)
    assert await store.acquire("agent", "CA2", limit=2, ttl=ttl)
    assert not await store.acquire("agent", "CA3", limit=2, ttl=ttl)
    assert await store.acquire("agent", "CA1", limit=2, ttl=ttl)  # a holder renews its slot
    assert await store.held("agent") == 2
    await store.release("agent", "CA2")
    await store.release("agent", "CA2")
    assert await store.acquire("agent", "CA3", limit=2, ttl=ttl)
    await t.wait(20)
    assert await store.acquire("agent", "CA1", limit=2, ttl=ttl)  # renewed: lives 30 more
    await t.wait(15)  # CA3's slot has expired, CA1's has not
    assert await store.held("agent") == 1
    assert await store.holders("agent") == ["CA1"]
    assert await store.acquire("agent", "CA4", limit=2, ttl=ttl)
    assert sorted(await store.holders("agent")) == ["CA1", "CA4"]
    assert await store.held("other") == 0
    assert await store.holders("other") == []


@pytest.mark.anyio
async def test_a_value_key_is_never_a_pool(store: Store, t: Time) -> None:
    await store.put("slots:agent", "a value", ttl=t.s(10))
    assert await store.acquire("agent", "CA1", limit=1, ttl=t.s(10))
    assert await store.get("slots:agent") == "a value"
