"""Two relay instances as one: two ``python app.py`` processes on two ports, one real Redis.

Each instance is a real process configured by its environment (``tests/instances.py``), both
with the same ``PUBLIC_URL`` as behind a load balancer, so that a call's webhook, stream and
action request can each reach either instance. The agent is the strict fake, in this process.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import orjson
import pytest
import redis.asyncio as aioredis

from relay.local.caller import SimulatedCall
from tests.conftest import AUTH_TOKEN, MS
from tests.fakes import KEY, FakeAgent
from tests.instances import RelayProcess
from tests.redis_server import RedisServer

LEASE = 1.5  # CALL_LEASE of the instances: short, so that a crashed instance frees fast


@pytest.fixture
async def agent() -> AsyncIterator[FakeAgent]:
    async with FakeAgent(echo=True).running() as fake:
        yield fake


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def pair(tmp_path: Path, redis_server: RedisServer,
               agent: FakeAgent) -> AsyncIterator[Callable[..., tuple[RelayProcess, ...]]]:
    """``pair(**env)``: instances A and B sharing Redis and PUBLIC_URL (A's), not yet started."""
    started: list[RelayProcess] = []

    def make(count: int = 2, **env: str) -> tuple[RelayProcess, ...]:
        made = [RelayProcess(
            tmp_path / f"relay-{len(started) + i}.log", TWILIO_AUTH_TOKEN=AUTH_TOKEN,
            ASSEMBLYAI_API_KEY=KEY, AGENT_WS_URL=agent.url, REDIS_URL=redis_server.url,
            CALL_LEASE=str(LEASE), START_TIMEOUT="5", AGENT_GREETING="", **env)
            for i in range(count)]
        for instance in made:  # as behind a load balancer: one public URL (here A's)
            instance.env["PUBLIC_URL"] = made[0].base_url
        started.extend(made)
        return tuple(made)

    yield make
    for instance in started:
        await instance.stop()


def ws_base(instance: RelayProcess) -> str:
    return f"ws://127.0.0.1:{instance.port}"


async def live_entry(client: aioredis.Redis, call_sid: str) -> dict[str, object] | None:
    raw = await client.get(f"relay:value:live:{call_sid}")
    return orjson.loads(raw) if raw else None


async def held(client: aioredis.Redis, call_sid: str) -> bool:
    """The call has its entry and its slot in the live-call directory."""
    slot = await client.zscore("relay:slots:live", call_sid)
    return slot is not None and await live_entry(client, call_sid) is not None


async def gone(client: aioredis.Redis, call_sid: str) -> bool:
    slot = await client.zscore("relay:slots:live", call_sid)
    return slot is None and await live_entry(client, call_sid) is None


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float) -> float:
    """Poll ``check`` until it holds; how long that took (the state is in other processes)."""
    started = time.monotonic()
    async with asyncio.timeout(timeout):
        for _ in itertools.count():
            if await check():
                break
            await asyncio.sleep(0.02)
    return time.monotonic() - started


async def echoed(call: SimulatedCall, payload: bytes, timeout: float) -> None:
    """Send one frame and wait until the agent's echo of exactly those bytes comes back."""
    before = len(call.events("media"))
    await call.send_media(base64.b64encode(payload).decode())
    found = await call.wait_for("media", before + 1, timeout=timeout)
    assert base64.b64decode(found[-1]["media"]["payload"]) == payload


@pytest.mark.anyio
async def test_webhook_on_one_instance_and_stream_on_the_other(
        pair: Callable[..., tuple[RelayProcess, ...]], agent: FakeAgent,
        redis_client: aioredis.Redis) -> None:
    a, b = pair()
    await asyncio.gather(a.start(), b.start())
    async with SimulatedCall.dial(a.base_url, auth_token=AUTH_TOKEN,
                                  connect_to=ws_base(b)) as call:
        session = await agent.session(0, timeout=5 * MS)
        await session.ready.wait()
        await echoed(call, bytes(range(160)), 5 * MS)
        entry = await live_entry(redis_client, call.call_sid)  # held by B, for everyone
        assert entry is not None and b.proc is not None
        assert f":{b.proc.pid}:" in str(entry["instance"])
        assert entry["session_id"] == session.session_id
        await call.hang_up()
        await call.wait_closed(5 * MS)
    await eventually(lambda: gone(redis_client, call.call_sid), 3 * MS)
    assert agent.sessions[0].violations == []


@pytest.mark.anyio
async def test_a_killed_instance_frees_its_calls_within_the_lease(
        pair: Callable[..., tuple[RelayProcess, ...]], agent: FakeAgent,
        redis_client: aioredis.Redis) -> None:
    a, b = pair()
    await asyncio.gather(a.start(), b.start())
    async with SimulatedCall.dial(a.base_url, auth_token=AUTH_TOKEN,
                                  connect_to=ws_base(b)) as call:
        await (await agent.session(0, timeout=5 * MS)).ready.wait()
        await eventually(lambda: held(redis_client, call.call_sid), 3 * MS)
        await b.kill()
        freed = await eventually(lambda: gone(redis_client, call.call_sid), LEASE + 1.0 * MS)
        assert freed <= LEASE + 0.2 * MS
        await call.wait_closed(1 * MS)
