"""WORKERS: several ``python app.py`` processes on one socket, as the README runs them."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from relay.local.caller import SimulatedCall
from tests.conftest import MS
from tests.instances import RelayProcess, alive


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
