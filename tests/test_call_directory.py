"""The live-call directory: every instance's calls, leases that outlive no holder, hang-ups
across instances; against a real redis-server, and in memory for one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import pytest
import redis.asyncio as aioredis

from relay.bus import MemoryBus, RedisBus
from relay.call_directory import CallDirectory, HangUp, LiveEntry
from relay.fail_open import FailOpenStore
from relay.redis_store import RedisStore
from relay.store import MemoryStore
from tests.conftest import MS
from tests.helpers import GatedStore, subscribed
from tests.redis_server import RedisServer

TIMEOUT = 0.25 * MS


@pytest.fixture
async def make_directory(
        redis_server: RedisServer) -> AsyncIterator[Callable[..., CallDirectory]]:
    clients: list[aioredis.Redis] = []

    def make(name: str, lease: float = 5.0) -> CallDirectory:
        store = RedisStore.from_url(redis_server.url, timeout=TIMEOUT)
        bus_client = aioredis.Redis.from_url(redis_server.url)
        clients.extend([store.client, bus_client])
        return CallDirectory(FailOpenStore(store, retry_after=0.1),
                             RedisBus(bus_client, timeout=TIMEOUT, retry_after=0.1),
                             instance=name, lease=lease)

    yield make
    async with asyncio.timeout(10):  # a hang here is a failure, never a stuck run
        for client in clients:
            await client.aclose()


def entry(call_sid: str, holder: str = "", **changes: object) -> LiveEntry:
    return LiveEntry(call_sid=call_sid, instance="?", started_at=1000.0, direction="inbound",
                     parameters={"caller": "+15550001111"}, holder=holder or f"h-{call_sid}",
                     **changes)  # type: ignore[arg-type]


class HangUps:
    """The hang-up callbacks of one test: which calls were hung up, and a wait for one."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self._changed = asyncio.Event()

    def of(self, call_sid: str) -> HangUp:
        def hang_up(*, now: bool) -> None:
            self.calls.append(call_sid + (" now" if now else ""))
            self._changed.set()
        return hang_up

    async def wait_for(self, call_sid: str, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while call_sid not in self.calls:
                self._changed.clear()
                await self._changed.wait()


@contextlib.asynccontextmanager
async def running(*directories: CallDirectory) -> AsyncIterator[None]:
    """The directories' renewals and hang-up listeners, once every listener is subscribed."""
    tasks = [asyncio.create_task(directory.run()) for directory in directories]
    try:
        if isinstance(directories[0].bus, RedisBus):
            await subscribed(directories[0], len(directories), 5 * MS)
        yield
    finally:
        for task in tasks:
            task.cancel()
        async with asyncio.timeout(5):
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task


@pytest.mark.anyio
async def test_one_instance_lists_finds_and_hangs_up_the_others_calls(
        make_directory: Callable[..., CallDirectory]) -> None:
    a, b = make_directory("A"), make_directory("B")
    hung_up = HangUps()
    async with running(a, b):
        await a.add(entry("CA1"), hung_up.of("CA1"))
        await b.add(entry("CA2"), hung_up.of("CA2"))
        assert sorted((e.call_sid, e.instance) for e in await b.all()) == [("CA1", "A"),
                                                                            ("CA2", "B")]
        await a.update("CA1", "h-CA1", session_id="sess_1", resume_token="rt_1")
        found = await b.find("CA1")
        assert found is not None and (found.session_id, found.resume_token) == ("sess_1", "rt_1")
        assert found.parameters == {"caller": "+15550001111"}

        assert await b.hang_up("CA1", now=True)  # held by A: through the bus
        await hung_up.wait_for("CA1 now", 2 * MS)
        assert hung_up.calls == ["CA1 now"]
        await a.remove("CA1", "h-CA1")
        assert [e.call_sid for e in await b.all()] == ["CA2"]
        assert await b.find("CA1") is None


@pytest.mark.anyio
async def test_entries_live_while_renewed_and_vanish_with_their_holder(
        make_directory: Callable[..., CallDirectory]) -> None:
    lease = 0.6 * MS
    a, b = make_directory("A", lease=lease), make_directory("B", lease=lease)
    async with running(a):
        await a.add(entry("CA1"), lambda: None)
        await asyncio.sleep(lease * 2.5)  # renewed every lease / 3
        assert [e.call_sid for e in await b.all()] == ["CA1"]
    # A is gone without a word (as after SIGKILL): its entry lasts at most one more lease.
    await asyncio.sleep(lease * 1.1)
    assert await b.all() == [] and await b.find("CA1") is None


@pytest.mark.anyio
async def test_redis_down_keeps_this_instances_own_calls(
        redis_server: RedisServer, make_directory: Callable[..., CallDirectory],
        caplog: pytest.LogCaptureFixture) -> None:
    a, b = make_directory("A"), make_directory("B")
    hung_up = HangUps()
    async with running(a, b):
        await a.add(entry("CA1"), hung_up.of("CA1"))
        redis_server.stop()
        await a.add(entry("CA2"), hung_up.of("CA2"))
        assert sorted(e.call_sid for e in await a.all()) == ["CA1", "CA2"]
        assert await a.hang_up("CA2")  # its own call: no Redis needed
        assert hung_up.calls == ["CA2"]
        assert not await b.hang_up("CA1")  # cannot reach A: says so
        redis_server.start()
        await asyncio.sleep(0.2 * MS)  # past retry_after; the listeners resubscribe
        await a.renew()  # the next renewal puts A's calls back in the shared directory
        assert sorted(e.call_sid for e in await b.all()) == ["CA1", "CA2"]
        await subscribed(b, 2, 3 * MS)  # both listeners subscribe again by themselves
        assert await b.hang_up("CA1")
        await hung_up.wait_for("CA1", 2 * MS)
    errors = [r.name for r in caplog.records if r.levelno == logging.ERROR]
    assert errors in (["relay.fail_open"], ["relay.fail_open"] * 2)  # one per store at most


@pytest.mark.anyio
async def test_in_memory_for_one_process() -> None:
    directory = CallDirectory(MemoryStore(), MemoryBus(), instance="only")
    hung_up = HangUps()
    async with running(directory):
        await directory.add(entry("CA1"), hung_up.of("CA1"))
        assert [e.instance for e in await directory.all()] == ["only"]
        assert await directory.hang_up("CA1") and hung_up.calls == ["CA1"]
        await directory.remove("CA1", "h-CA1")
        assert await directory.all() == []


@pytest.mark.anyio
async def test_the_stream_a_call_was_taken_from_removes_only_its_own_entry(
        make_directory: Callable[..., CallDirectory]) -> None:
    a, b = make_directory("A"), make_directory("B")
    hung_up = HangUps()
    await a.add(entry("CA1", "first"), hung_up.of("first"))
    await b.add(entry("CA1", "second", restreams=1), hung_up.of("second"))  # B took it over
    await a.update("CA1", "first", session_id="sess_stale")  # the old stream's late news
    assert await a.remove("CA1", "first") is False  # it ends after the takeover: not its call
    found = await a.find("CA1")
    assert found is not None and (found.instance, found.holder) == ("B", "second")
    assert found.session_id is None
    assert [e.call_sid for e in await a.all()] == ["CA1"]  # still listed, held by B
    assert await b.remove("CA1", "second") is True
    assert await a.find("CA1") is None and await a.all() == []
    assert await a.remove("CA9", "never-listed") is True  # nothing took it over


@pytest.mark.anyio
async def test_a_stream_taken_over_in_the_same_process_leaves_the_new_one_alone() -> None:
    directory = CallDirectory(MemoryStore(), MemoryBus(), instance="only")
    hung_up = HangUps()
    await directory.add(entry("CA1", "first"), hung_up.of("first"))
    await directory.add(entry("CA1", "second", restreams=1), hung_up.of("second"))
    assert await directory.remove("CA1", "first") is False
    assert [e.holder for e in directory.mine()] == ["second"]
    assert [e.holder for e in await directory.all()] == ["second"]
    assert await directory.hang_up("CA1") and hung_up.calls == ["second"]


@pytest.mark.anyio
async def test_a_kept_entry_outlives_its_stream_for_one_lease(
        make_directory: Callable[..., CallDirectory]) -> None:
    lease = 0.6 * MS
    a, b = make_directory("A", lease=lease), make_directory("B", lease=lease)
    await a.add(entry("CA1", session_id="sess_1"), lambda *, now: None)
    await a.remove("CA1", "h-CA1", keep=True)  # Twilio's stream lost: kept for a re-stream
    assert a.mine() == []
    found = await b.find("CA1")
    assert found is not None and found.session_id == "sess_1"
    await asyncio.sleep(lease * 1.2)  # nobody renews it
    assert await b.find("CA1") is None and await b.all() == []


@pytest.mark.anyio
async def test_a_renewal_in_flight_never_brings_back_a_call_that_ended() -> None:
    store = GatedStore()
    directory = CallDirectory(store, MemoryBus(), instance="only")
    await directory.add(entry("CA1"), lambda *, now: None)
    store.gate = gate = asyncio.Event()
    renewal = asyncio.create_task(directory.renew())
    await asyncio.wait_for(store.at_gate.wait(), 2)  # the renewal is writing CA1's slot
    ending = asyncio.create_task(directory.remove("CA1", "h-CA1"))
    await asyncio.sleep(0.05)
    assert not ending.done()  # the end waits for the write in flight, no longer
    store.gate = None
    gate.set()
    await asyncio.wait_for(asyncio.gather(renewal, ending), 2)
    assert await store.get("live:CA1") is None
    assert await store.holders("live") == []


@pytest.mark.anyio
async def test_a_stream_renews_and_removes_its_entry_even_after_a_write_was_lost() -> None:
    store = MemoryStore()
    directory = CallDirectory(store, MemoryBus(), instance="only")
    await directory.add(entry("CA1"), lambda *, now: None)
    stale = await store.get("live:CA1")  # the entry before the session was ready
    await directory.update("CA1", "h-CA1", session_id="sess_1")
    assert stale is not None
    await store.put("live:CA1", stale, ttl=60)  # as if that update was lost in an outage
    await directory.renew()  # still this stream's entry: renewed with what it knows now
    found = await directory.find("CA1")
    raw = await store.get("live:CA1")
    assert found is not None and raw is not None and LiveEntry.from_json(raw) == found
    assert found.session_id == "sess_1"
    await store.put("live:CA1", stale, ttl=60)
    await directory.remove("CA1", "h-CA1")
    assert await store.get("live:CA1") is None and await store.holders("live") == []


@pytest.mark.anyio
async def test_a_stream_whose_call_moved_stops_renewing_its_places(
        caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore()
    renewed: list[str] = []

    async def renewal(call_sid: str, lease: float) -> None:
        renewed.append(call_sid)

    directory = CallDirectory(store, MemoryBus(), instance="stalled", renewals=[renewal])
    await directory.add(entry("CA1"), lambda *, now: None)
    await directory.add(entry("CA2"), lambda *, now: None)
    await directory.renew()
    assert sorted(renewed) == ["CA1", "CA2"]
    moved = replace(entry("CA1", "elsewhere"), instance="other")
    await store.put("live:CA1", moved.to_json(), ttl=60)  # another instance took CA1 over
    renewed.clear()
    for _ in range(2):
        await directory.renew()
    assert renewed == ["CA2", "CA2"]  # CA1's places are the new stream's to renew
    assert await store.get("live:CA1") == moved.to_json()
    warnings = [r for r in caplog.records if "held by another stream" in r.getMessage()]
    assert len(warnings) == 1  # once per stream, not once per renewal
    assert await directory.remove("CA1", "h-CA1") is False


@pytest.mark.anyio
async def test_a_kept_entry_carries_the_session_even_if_its_update_was_lost() -> None:
    store = MemoryStore()
    directory = CallDirectory(store, MemoryBus(), instance="only")
    await directory.add(entry("CA1"), lambda *, now: None)  # session.ready's update never came
    assert await directory.remove("CA1", "h-CA1", keep=True, session_id="sess_1",
                                  resume_token="rt_1") is True
    found = await directory.find("CA1")
    assert found is not None and (found.session_id, found.resume_token) == ("sess_1", "rt_1")
