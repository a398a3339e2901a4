"""WORKERS: several ``python app.py`` processes on one socket, as the README runs them."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from relay.draining import ACTION_GRACE
from relay.local.caller import SimulatedCall
from relay.worker_metrics import PUBLISH_INTERVAL
from tests.conftest import MS
from tests.fakes import KEY, FakeAgent
from tests.helpers import audio_both_ways, eventually, post_twiml, refused
from tests.instances import RelayProcess, alive

PROMTOOL = shutil.which("promtool")


@pytest.fixture
async def make_instance(tmp_path: Path) -> AsyncIterator[Callable[..., RelayProcess]]:
    started: list[RelayProcess] = []

    def make(**env: str) -> RelayProcess:
        started.append(RelayProcess(tmp_path / f"relay-{len(started)}.log", **env))
        return started[-1]

    yield make
    for instance in started:
        await instance.stop()


def environ(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    return dict(entry.split("=", 1) for entry in entries if "=" in entry)


async def place_call(base_url: str) -> None:
    """A whole call through the local agent: webhook, stream, the agent's chime, hang-up."""
    async with SimulatedCall.dial(base_url) as call:
        await call.wait_for("media", timeout=10 * MS)
        await call.hang_up()


@pytest.mark.anyio
async def test_workers_share_the_socket_and_are_restarted(
        make_instance: Callable[..., RelayProcess]) -> None:
    # Twelve calls from one number: the caller rate limit is not what this test is about.
    relay = make_instance(WORKERS="2", CALLER_RATE_LIMIT="off")
    await relay.start()
    await relay.wait_for_log(r"Started server process", count=2)
    assert relay.proc is not None
    parent, (first, second) = relay.proc.pid, relay.worker_pids()
    assert parent not in (first, second)
    assert relay.log().count("without REDIS_URL: each worker process counts its own limits") == 1
    # One token key for all: the webhook and the stream of a call may reach different workers.
    keys = {environ(pid).get("RELAY_SECRET") for pid in (first, second)}
    assert len(keys) == 1 and len(keys.pop() or "") >= 32
    await asyncio.gather(*(place_call(relay.base_url) for _ in range(8)))

    os.kill(first, signal.SIGKILL)  # a worker dies: the parent starts another
    await relay.wait_for_log(r"Started server process", count=3)
    third = relay.worker_pids()[2]
    assert third not in (first, second) and alive(second)
    await asyncio.gather(*(place_call(relay.base_url) for _ in range(4)))

    assert await relay.stop() == 0  # SIGTERM to the parent stops every worker
    assert not alive(second) and not alive(third)


@pytest.mark.anyio
async def test_a_broken_configuration_stops_the_parent_once(
        make_instance: Callable[..., RelayProcess]) -> None:
    relay = make_instance(WORKERS="2", TOOL_TIMEOUT="soon")
    with pytest.raises(RuntimeError, match="exited with 2"):
        await relay.start()
    assert relay.log().count("TOOL_TIMEOUT") == 1
    assert relay.worker_pids() == []


# ---------------------------------------------------------------------- draining workers

FALLBACK = "+15550009999"


def agent_env(agent: FakeAgent, **env: str) -> dict[str, str]:
    return {"WORKERS": "2", "CALLER_RATE_LIMIT": "off", "ASSEMBLYAI_API_KEY": KEY,
            "AGENT_WS_URL": agent.url, "AGENT_GREETING": "", **env}


async def status(base_url: str, path: str) -> int:
    async with httpx.AsyncClient(timeout=2) as http:
        return (await http.get(base_url + path)).status_code


async def exit_status(relay: RelayProcess, within: float) -> int | None:
    assert relay.proc is not None
    return await asyncio.wait_for(relay.proc.wait(), within)


@pytest.mark.anyio
async def test_sigterm_drains_each_worker_and_the_tree_exits_0(
        make_instance: Callable[..., RelayProcess]) -> None:
    drain = 4 * MS
    async with FakeAgent(echo=True).running() as agent:
        relay = make_instance(**agent_env(agent, DRAIN_SECONDS=str(drain),
                                          FALLBACK_NUMBER=FALLBACK))
        await relay.start()
        await relay.wait_for_log(r"Started server process", count=2)
        workers = relay.worker_pids()
        assert relay.proc is not None
        async with SimulatedCall.dial(relay.base_url) as call:
            session = await agent.session()
            await session.ready.wait()
            await audio_both_ways(call, session, "AAAA")
            relay.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            await eventually(lambda: relay.log().count("draining: refusing new calls") == 2)
            # the worker without a call is gone at once; the one with it answers, draining
            assert await status(relay.base_url, "/readyz") == 503
            assert await status(relay.base_url, "/healthz") == 200
            _, doc = await post_twiml(relay.base_url, caller="+15550007777")
            assert refused(doc) == f"dial:{FALLBACK}"  # refused as busy: sent to the fallback
            for i in range(5):  # the live call is untouched, audio both ways
                await audio_both_ways(call, session, f"AAA{'ABCDE'[i]}")
                await asyncio.sleep(0.1)
            assert relay.proc.returncode is None
            # the drain deadline hands the call over: it ends by itself, politely
            assert await call.wait_closed(drain + 10 * MS) == 1000
            assert time.monotonic() - signalled >= drain - 0.5
        assert await exit_status(relay, ACTION_GRACE + 10 * MS) == 0
        assert session.ended.is_set() and session.violations == []
    assert not any(alive(pid) for pid in workers)
    log = relay.log()
    assert "draining: refusing new calls; 1 call(s) may go on" in log
    assert "draining: refusing new calls; 0 call(s) may go on" in log
    assert "refused (refused_busy): draining" in log
    assert "drain deadline: handing the call to" in log
    assert "1012" not in log and "Traceback" not in log


def send_ctrl_c(relay: RelayProcess) -> None:
    """What a terminal's Ctrl-C does: SIGINT to every process of the group."""
    assert relay.proc is not None
    for pid in (relay.proc.pid, *relay.worker_pids()):
        if alive(pid):  # a worker without calls is gone after the first
            os.kill(pid, signal.SIGINT)


async def two_workers(make_instance: Callable[..., RelayProcess], agent: FakeAgent,
                      ) -> tuple[RelayProcess, list[int], asyncio.subprocess.Process]:
    """``python app.py`` with two workers, both serving: the relay, their pids, the parent."""
    relay = make_instance(**agent_env(agent, DRAIN_SECONDS="60"))
    await relay.start()
    await relay.wait_for_log(r"Started server process", count=2)
    assert relay.proc is not None
    return relay, relay.worker_pids(), relay.proc


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["sigterm", "ctrl_c"])
async def test_a_second_signal_ends_every_worker_at_once(
        make_instance: Callable[..., RelayProcess], how: str) -> None:
    async with FakeAgent(echo=True).running() as agent:
        relay, workers, proc = await two_workers(make_instance, agent)
        signal_all = (lambda: proc.send_signal(signal.SIGTERM)) if how == "sigterm" else (
            lambda: send_ctrl_c(relay))
        async with SimulatedCall.dial(relay.base_url) as call:
            session = await agent.session()
            await session.ready.wait()
            signal_all()
            await eventually(lambda: "draining: refusing new calls; 1 call(s)" in relay.log())
            await asyncio.sleep(0.5)
            assert proc.returncode is None and not call.closed.is_set()
            await audio_both_ways(call, session, "AAAA")  # one signal: still draining
            signal_all()
            assert await call.wait_closed(5 * MS) == 1012
        assert await exit_status(relay, 5 * MS) == 1  # as a single process after two signals
    assert not any(alive(pid) for pid in workers)
    assert "second signal: ending the 1 worker(s) still draining at once" in relay.log()


@pytest.mark.anyio
async def test_two_signals_at_once_end_every_worker_at_once(
        make_instance: Callable[..., RelayProcess]) -> None:
    async with FakeAgent(echo=True).running() as agent:
        relay, workers, proc = await two_workers(make_instance, agent)
        async with SimulatedCall.dial(relay.base_url) as call:
            await (await agent.session()).ready.wait()
            # Both within one tick of the parent's loop (two signals of one kind would merge
            # into one before Python's handler runs: these are two kinds).
            proc.send_signal(signal.SIGTERM)
            proc.send_signal(signal.SIGINT)
            assert await call.wait_closed(5 * MS) == 1012
        assert await exit_status(relay, 5 * MS) == 1
    assert not any(alive(pid) for pid in workers)
    assert "second signal: ending the" in relay.log()


# ---------------------------------------------------------------------- metrics over workers

SILENCE = base64.b64encode(b"\xff" * 160).decode()  # one 20 ms μ-law frame
FRAMES = 5  # sent by each caller once the agent is heard


def merged(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def scrape(base_url: str) -> str:
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.get(base_url + "/metrics")
    response.raise_for_status()
    return response.text


def figures_of(directory: Path, pid: int, kind: str) -> dict[str, float]:
    """One worker's own file of ``kind`` (counter, gauge_livesum), read as prometheus-client
    merges it: what that worker counted."""
    path = directory / f"{kind}_{pid}.db"
    if not path.exists():
        return {}
    totals: dict[str, float] = {}
    for family in MultiProcessCollector.merge([str(path)]):
        for s in family.samples:
            totals[s.name] = totals.get(s.name, 0.0) + s.value
    return totals


async def short_call(base_url: str, http: httpx.AsyncClient) -> None:
    async with SimulatedCall.dial(base_url, http=http) as call:
        await call.wait_for("media", timeout=10 * MS)  # the local agent's chime: it is ready
        for _ in range(FRAMES):
            await call.send_media(SILENCE)
        await call.hang_up()
        await call.wait_closed(5 * MS)


@pytest.mark.anyio
async def test_metrics_add_up_over_the_workers(
        make_instance: Callable[..., RelayProcess]) -> None:
    relay = make_instance(WORKERS="2", CALLER_RATE_LIMIT="off", AGENT_GREETING="Hello")
    await relay.start()
    await relay.wait_for_log(r"Started server process", count=2)
    first, second = relay.worker_pids()
    directory = Path(environ(first)["PROMETHEUS_MULTIPROC_DIR"])
    assert environ(second)["PROMETHEUS_MULTIPROC_DIR"] == str(directory)
    assert os.stat(directory).st_mode & 0o077 == 0, "private to the relay's user"

    def calls_of(pid: int) -> float:
        return figures_of(directory, pid, "counter").get("relay_calls_total", 0.0)

    made = 0
    async with httpx.AsyncClient(timeout=10) as http:
        while min(calls_of(first), calls_of(second)) == 0:  # until both workers had calls
            assert made < 60, f"all {made} calls reached one worker"
            await asyncio.gather(*(short_call(relay.base_url, http) for _ in range(6)))
            made += 6

        async def settled() -> str:  # every call counted where it ended
            while True:
                text = await scrape(relay.base_url)
                if merged(text)[("relay_calls_total", (("outcome", "caller_hung_up"),))] >= made:
                    return text
                await asyncio.sleep(0.2)

        text = await asyncio.wait_for(settled(), 10 * MS)
        await asyncio.sleep(PUBLISH_INTERVAL * 1.5)  # past one copy of every worker's figures
        scrapes = [merged(await scrape(relay.base_url)) for _ in range(8)]  # both workers answer
    for s in scrapes:
        assert s[("relay_calls_total", (("outcome", "caller_hung_up"),))] == made
        assert sum(v for (name, _), v in s.items() if name == "relay_calls_total") == made
        assert s[("relay_frames_total", (("direction", "to_agent"),))] >= made * FRAMES
        assert s[("relay_frames_total", (("direction", "to_caller"),))] > 0
        assert s[("relay_calls_active", ())] == 0 and s[("relay_agent_sessions_open", ())] == 0
        assert ("relay_store_errors_total", ()) in s
        assert s == scrapes[0], "every worker serves the same merged figures"
    assert calls_of(first) + calls_of(second) == made
    assert not any(name.startswith(("process_", "python_gc_")) for name, _ in scrapes[0])
    if PROMTOOL is not None:
        checked = await asyncio.to_thread(subprocess.run, [PROMTOOL, "check", "metrics"],
                                          input=text.encode(), capture_output=True, timeout=30)
        assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
        assert checked.stdout.decode().strip() == "", checked.stdout.decode()

    # A worker killed with a call up: its live gauges go, its counters stay.
    async with SimulatedCall.dial(relay.base_url) as call:
        await call.wait_for("media", timeout=10 * MS)
        for _ in range(FRAMES):
            await call.send_media(SILENCE)

        def holder() -> int | None:
            return next((pid for pid in (first, second) if figures_of(
                directory, pid, "gauge_livesum").get("relay_calls_active")), None)

        await eventually(lambda: holder() is not None, within=5)
        victim = holder()
        assert victim is not None
        before = merged(await scrape(relay.base_url))
        assert before[("relay_calls_active", ())] == 1
        assert before[("relay_agent_sessions_open", ())] >= 1
        os.kill(victim, signal.SIGKILL)
        await call.wait_closed(5 * MS)
    await relay.wait_for_log(r"Started server process", count=3)
    await eventually(lambda: not (directory / f"gauge_livesum_{victim}.db").exists(), within=5)
    after = merged(await scrape(relay.base_url))
    assert after[("relay_calls_active", ())] == 0
    assert after[("relay_agent_sessions_open", ())] == 0
    assert after[("relay_calls_total", (("outcome", "caller_hung_up"),))] == made
    assert (after[("relay_frames_total", (("direction", "to_agent"),))]
            >= before[("relay_frames_total", (("direction", "to_agent"),))])
    assert (directory / f"counter_{victim}.db").exists()

    assert await relay.stop() == 0
    assert not await asyncio.to_thread(directory.exists), "the parent removes the directory when it exits"
