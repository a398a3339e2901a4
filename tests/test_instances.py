"""Two relay instances as one: two ``python app.py`` processes on two ports, one real Redis.

Each instance is a real process configured by its environment (``tests/instances.py``), both
with the same ``PUBLIC_URL`` as behind a load balancer, so that a call's webhook, stream and
action request can each reach either instance. The agent is the strict fake, in this process.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from relay import twiml as twiml_module
from relay.local.caller import SimulatedCall, new_sid, parse_stream
from relay.security import twilio_signature
from tests.conftest import AUTH_TOKEN, MS
from tests.fakes import KEY, FakeAgent
from tests.helpers import echoed
from tests.instances import RelayProcess
from tests.redis_server import RedisServer

LEASE = 1.5  # CALL_LEASE of the instances: short, so that a crashed instance frees fast


@pytest.fixture
async def agent() -> AsyncIterator[FakeAgent]:
    async with FakeAgent(echo=True).running() as fake:
        yield fake


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    # The test's own view of Redis; it reconnects once when the tests restart the server.
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True,
                                     retry=Retry(NoBackoff(), 1),
                                     retry_on_error=[redis.exceptions.ConnectionError])
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


async def started(pair: Callable[..., tuple[RelayProcess, ...]],
                  **env: str) -> tuple[RelayProcess, RelayProcess]:
    """Instances A and B from ``pair(**env)``, both up."""
    a, b = pair(**env)
    await asyncio.gather(a.start(), b.start())
    return a, b


def dial(webhook_to: RelayProcess, stream_to: RelayProcess,
         **options: Any) -> AbstractAsyncContextManager[SimulatedCall]:
    """A call whose webhook reaches one instance and whose stream reaches the other (or the
    same), as a load balancer may send them."""
    return SimulatedCall.dial(webhook_to.base_url, auth_token=AUTH_TOKEN,
                              connect_to=ws_base(stream_to), **options)


async def live_entry(client: aioredis.Redis, call_sid: str) -> dict[str, object] | None:
    raw = await client.get(f"relay:value:live:{call_sid}")
    return orjson.loads(raw) if raw else None


async def session_kept(client: aioredis.Redis, call_sid: str, session_id: str | None) -> bool:
    """The call's entry holds its agent session (what another instance resumes)."""
    entry = await live_entry(client, call_sid)
    return entry is not None and entry["session_id"] == session_id


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


@pytest.mark.anyio
async def test_webhook_on_one_instance_and_stream_on_the_other(
        pair: Callable[..., tuple[RelayProcess, ...]], agent: FakeAgent,
        redis_client: aioredis.Redis) -> None:
    a, b = await started(pair)
    async with dial(a, b) as call:
        session = await agent.session(0, timeout=5 * MS)
        await session.ready.wait()
        await echoed(call, bytes(range(160)), 5 * MS)

        # written once the session is ready, not before
        await eventually(lambda: session_kept(redis_client, call.call_sid, session.session_id),
                         3 * MS)
        entry = await live_entry(redis_client, call.call_sid)  # held by B, for everyone
        assert entry is not None and b.proc is not None
        assert f":{b.proc.pid}:" in str(entry["instance"])
        await call.hang_up()
        await call.wait_closed(5 * MS)
    await eventually(lambda: gone(redis_client, call.call_sid), 3 * MS)
    assert agent.sessions[0].violations == []


@pytest.mark.anyio
async def test_a_killed_instance_frees_its_calls_within_the_lease(
        pair: Callable[..., tuple[RelayProcess, ...]], agent: FakeAgent,
        redis_client: aioredis.Redis) -> None:
    a, b = await started(pair)
    async with dial(a, b) as call:
        await (await agent.session(0, timeout=5 * MS)).ready.wait()
        await eventually(lambda: held(redis_client, call.call_sid), 3 * MS)
        await b.kill()
        freed = await eventually(lambda: gone(redis_client, call.call_sid), LEASE + 1.0 * MS)
        assert freed <= LEASE + 0.2 * MS
        await call.wait_closed(1 * MS)


@pytest.mark.anyio
async def test_the_calls_page_of_one_instance_lists_and_hangs_up_the_others_call(
        pair: Callable[..., tuple[RelayProcess, ...]], agent: FakeAgent,
        redis_client: aioredis.Redis) -> None:
    a, b = await started(pair)
    async with (dial(a, b) as call,
                httpx.AsyncClient(base_url=a.base_url, timeout=5) as page):
        await (await agent.session(0, timeout=5 * MS)).ready.wait()
        await eventually(lambda: held(redis_client, call.call_sid), 3 * MS)
        live = (await page.get("/api/calls")).json()["live"]
        assert [c["call_sid"] for c in live] == [call.call_sid]
        assert live[0]["activity"] == "on another instance"
        assert live[0]["caller"] != "+15550001111" and live[0]["caller"].endswith("1111")
        assert (await page.get(f"/api/calls/{call.call_sid}")).json()["live"] is True

        hangup = await page.post(f"/api/calls/{call.call_sid}/hangup?now=1",
                                 headers={"X-Relay-Request": "1"})
        assert hangup.status_code == 202, hangup.text
        assert await call.wait_closed(5 * MS) == 1000  # B hung up the call A was asked about
        await eventually(lambda: gone(redis_client, call.call_sid), 3 * MS)
        assert (await page.get("/api/calls")).json()["live"] == []
        missing = await page.post(f"/api/calls/{call.call_sid}/hangup",
                                  headers={"X-Relay-Request": "1"})
        assert missing.status_code == 404


def log_lines(instance: RelayProcess, level: str) -> list[str]:
    return [line for line in instance.log().splitlines() if f" {level} " in line]


@pytest.mark.anyio
async def test_redis_stopped_mid_call_fails_open_and_shares_again_when_back(
        pair: Callable[..., tuple[RelayProcess, ...]], agent: FakeAgent,
        redis_server: RedisServer, redis_client: aioredis.Redis) -> None:
    a, b = await started(pair)
    async with dial(a, b) as first:
        await echoed(first, b"\x01" * 160, 5 * MS)
        await eventually(lambda: held(redis_client, first.call_sid), 3 * MS)
        redis_server.stop()
        await echoed(first, b"\x02" * 160, 5 * MS)  # the call in progress goes on
        for _ in range(3):  # new calls are served, on either instance
            async with dial(a, b) as call:
                await echoed(call, b"\x03" * 160, 5 * MS)
                await call.hang_up()
        errors = [line for line in log_lines(b, "ERROR") if "shared store unavailable" in line]
        assert len(errors) == 1, b.log()  # one per outage, not per call
        assert "redis://" not in b.log()
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(b.base_url + "/metrics")).text
        assert re.search(r"^relay_store_errors_total ([1-9]\d*)\.0$", metrics, re.M), metrics

        redis_server.start()  # empty: what was shared before is gone, as after a restart
        await eventually(lambda: held(redis_client, first.call_sid), (LEASE + 2) * MS)
        await echoed(first, b"\x04" * 160, 5 * MS)
        async with dial(a, b) as call:
            await echoed(call, b"\x05" * 160, 5 * MS)
            await eventually(lambda: held(redis_client, call.call_sid), 3 * MS)
            await call.hang_up()
    assert any("shared store available again" in line for line in log_lines(b, "INFO"))
    assert len([ln for ln in log_lines(b, "ERROR") if "shared store unavailable" in ln]) == 1
    assert all(not s.violations for s in agent.sessions)


async def webhook(instance: RelayProcess, caller: str, call_sid: str | None = None) -> str:
    """Twilio's voice webhook posted to ``instance``, signed over the public URL."""
    url = instance.env["PUBLIC_URL"] + "/twiml"
    form = {"CallSid": call_sid or new_sid("CA"), "AccountSid": "AC" + "0" * 32,
            "From": caller, "To": "+15550002222", "CallStatus": "ringing",
            "Direction": "inbound"}
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.post(instance.base_url + "/twiml", data=form, headers={
            "X-Twilio-Signature": twilio_signature(AUTH_TOKEN, url, form)})
    response.raise_for_status()
    return response.text


def refused(instance: RelayProcess, why: str) -> int:
    return instance.log().count(f"refused ({why})")


@pytest.mark.anyio
async def test_agent_sessions_are_counted_across_instances_and_a_dead_ones_free_in_a_lease(
        pair: Callable[..., tuple[RelayProcess, ...]], agent: FakeAgent,
        redis_client: aioredis.Redis) -> None:
    a, b = await started(pair, AGENT_MAX_SESSIONS="2", CALLER_RATE_LIMIT="off")
    async with (dial(a, b, caller="+15550001111") as on_b,
                dial(a, a, caller="+15550003333") as on_a):
        await echoed(on_b, b"\x01" * 160, 5 * MS)
        await echoed(on_a, b"\x02" * 160, 5 * MS)
        assert await redis_client.zcard("relay:slots:agent-sessions") == 2
        assert "<Connect" not in await webhook(b, "+15550004444")  # B counts A's call too
        assert refused(b, "refused_busy") == 1
        await b.kill()  # B dies holding on_b: its slot frees itself within the lease
        await on_b.wait_closed(5 * MS)
        freed = await eventually(
            lambda: slots(redis_client, "agent-sessions", 1), (LEASE + 1) * MS)
        assert freed <= LEASE + 0.2 * MS
        assert "<Connect" in await webhook(a, "+15550005555")
        await echoed(on_a, b"\x03" * 160, 5 * MS)  # A's call never noticed


async def slots(client: aioredis.Redis, pool: str, count: int) -> bool:
    """``pool`` has ``count`` unexpired slots (as the store's script counts them)."""
    now_s, now_us = await client.time()
    now_ms = now_s * 1000 + now_us // 1000
    return int(await client.zcount(f"relay:slots:{pool}", now_ms, "+inf")) == count


@pytest.mark.anyio
async def test_a_callers_rate_limit_holds_across_instances(
        pair: Callable[..., tuple[RelayProcess, ...]]) -> None:
    a, b = await started(pair, CALLER_RATE_LIMIT="3/minute")
    for instance in (a, b, a):
        assert "<Connect" in await webhook(instance, "+15550007777")
    assert "<Connect" not in await webhook(b, "+15550007777")  # the fourth, on either
    assert "<Connect" not in await webhook(a, "+15550007777")
    assert refused(a, "refused_rate_limited") == refused(b, "refused_rate_limited") == 1
    assert "<Connect" in await webhook(b, "+15550008888")  # another caller is not limited
    assert "+15550007777" not in a.log() + b.log()  # numbers are masked in the logs


@pytest.mark.anyio
async def test_sigkill_of_the_instance_holding_a_call_resumes_it_on_the_survivor(
        pair: Callable[..., tuple[RelayProcess, ...]], agent: FakeAgent,
        redis_client: aioredis.Redis) -> None:
    a, b = await started(pair)
    async with dial(a, b) as call:
        before = bytes(range(160))
        await echoed(call, before, 5 * MS)
        session_id = agent.sessions[0].session_id
        assert session_id is not None

        await eventually(lambda: session_kept(redis_client, call.call_sid, session_id), 3 * MS)
        await b.kill()  # the instance holding the stream dies: no outcome, no goodbye
        killed = time.monotonic()
        await call.wait_closed(5 * MS)
        call.connect_to = ws_base(a)  # Twilio's action request reaches the survivor
        step = await call.follow_action()
        assert step is not None and "<Stream" in step.twiml, step
        async with SimulatedCall.stream_again(call, step.twiml) as again:
            assert again.stream.parameters["restream"] == "1"
            after = bytes(range(160, 256)) + bytes(range(64))
            await echoed(again, after, 5 * MS)
            gap = time.monotonic() - killed
            resumed = [s for s in agent.sessions if s.resumed]
            assert len(resumed) == 1 and resumed[0].session_id == session_id
            assert resumed[0].received[0] == {"type": "session.resume", "session_id": session_id}
            entry = await live_entry(redis_client, call.call_sid)  # now held by A
            assert entry is not None and a.proc is not None
            assert f":{a.proc.pid}:" in str(entry["instance"]) and entry["restreams"] == 1
            await again.hang_up()
            await again.wait_closed(5 * MS)
    print(f"\ncaller's gap after SIGKILL of its instance: {gap * 1000:.0f} ms "
          "(kill to the agent's audio again)")
    assert gap < 3.0 * MS
    assert all(not s.violations for s in agent.sessions), [s.violations for s in agent.sessions]
    assert "taking over the call" in a.log()


@pytest.mark.anyio
async def test_a_frozen_instance_that_wakes_after_its_call_moved_leaves_the_new_stream_alone(
        pair: Callable[..., tuple[RelayProcess, ...]], agent: FakeAgent,
        redis_client: aioredis.Redis) -> None:
    a, b = await started(pair, AGENT_MAX_SESSIONS="5")
    async with dial(a, b) as call:
        await echoed(call, bytes(range(160)), 5 * MS)
        session_id = agent.sessions[0].session_id

        await eventually(lambda: session_kept(redis_client, call.call_sid, session_id), 3 * MS)
        b.freeze()  # B stalls with the call: Twilio's side of its stream is lost meanwhile
        try:
            call.ws.transport.abort()
            call.connect_to = ws_base(a)
            step = await call.follow_action()  # within B's lease: its entry is still there
            assert step is not None and "<Stream" in step.twiml, step
            async with SimulatedCall.stream_again(call, step.twiml) as again:
                await echoed(again, bytes(range(160, 256)) + bytes(range(64)), 5 * MS)
                resumed = agent.sessions[-1]
                assert resumed.resumed and resumed.session_id == session_id
                b.thaw()  # B wakes, finds its Twilio stream gone and tears the call down
                await b.wait_for_log(r"call ended: Twilio stream failed", timeout=10 * MS)
                assert a.proc is not None
                for _ in range(2):  # at once (B logs the end after its teardown), and once
                    entry = await live_entry(redis_client, call.call_sid)  # B's renewal had
                    assert entry is not None  # its turn too
                    assert f":{a.proc.pid}:" in str(entry["instance"]), entry
                    assert entry["restreams"] == 1
                    await asyncio.sleep(LEASE)
                slots = await redis_client.zrange("relay:slots:agent-sessions", 0, -1)
                assert slots == [f"{call.call_sid}#1"]  # B gave back its own place only
                assert not resumed.of_type("session.end")  # B did not end the moved session
                await echoed(again, b"\x42" * 160, 5 * MS)  # the call goes on, on A
                await again.hang_up()
                await again.wait_closed(5 * MS)
        finally:
            b.thaw()
    await eventually(lambda: gone(redis_client, call.call_sid), 3 * MS)
    assert await redis_client.zcard("relay:slots:agent-sessions") == 0
    assert all(not s.violations for s in agent.sessions), [s.violations for s in agent.sessions]


@pytest.mark.anyio
async def test_a_token_used_on_one_instance_is_refused_on_the_other(
        pair: Callable[..., tuple[RelayProcess, ...]], agent: FakeAgent) -> None:
    a, b = await started(pair)
    async with dial(a, b) as call:
        await echoed(call, b"\x06" * 160, 5 * MS)
        twiml = twiml_module.connect_stream(call.stream.url, call.stream.parameters,
                                            action=call.stream.action)
        async with SimulatedCall.stream_again(call, twiml, connect_to=ws_base(a)) as replay:
            assert await replay.wait_closed(5 * MS) == 1008  # the same token, on A: refused
        await echoed(call, b"\x07" * 160, 5 * MS)  # the call on B goes on
    assert "token already opened a stream" in a.log()


async def action(instance: RelayProcess, call_sid: str, status: str = "in-progress") -> str:
    """Twilio's <Connect action> request for ``call_sid``, posted to ``instance``."""
    url = instance.env["PUBLIC_URL"] + "/call-action"
    form = {"CallSid": call_sid, "AccountSid": "AC" + "0" * 32, "From": "+15550001111",
            "To": "+15550002222", "CallStatus": status}
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.post(instance.base_url + "/call-action", data=form, headers={
            "X-Twilio-Signature": twilio_signature(AUTH_TOKEN, url, form)})
    response.raise_for_status()
    return response.text


@pytest.mark.anyio
async def test_a_call_is_streamed_again_a_bounded_number_of_times(
        pair: Callable[..., tuple[RelayProcess, ...]], redis_client: aioredis.Redis) -> None:
    (a,) = pair(count=1)
    await a.start()

    async def entry(call_sid: str, restreams: int, session_id: str | None) -> None:
        """A live call's entry as a dead instance leaves it behind."""
        await redis_client.set(f"relay:value:live:{call_sid}", orjson.dumps({
            "call_sid": call_sid, "instance": "gone:1:ab", "started_at": time.time(),
            "parameters": {"caller": "+15550001111", "restream": str(restreams)},
            "session_id": session_id, "resume_token": "rt", "restreams": restreams}).decode(),
            px=10_000)

    await entry("CA1", 1, "sess_1")
    stream = parse_stream(await action(a, "CA1"))
    assert stream.parameters["restream"] == "2" and stream.parameters["token"]
    await entry("CA2", 2, "sess_2")  # the attempts are used up: the fallback
    assert "<Stream" not in await action(a, "CA2") and "<Say" in await action(a, "CA2")
    await entry("CA3", 0, None)  # no session to resume: the fallback
    assert "<Say" in await action(a, "CA3")
    await entry("CA4", 0, "sess_4")  # the caller hung up: nothing to stream
    assert "<Hangup" in await action(a, "CA4", status="completed")
