"""Fixtures: the real server on an ephemeral port, against the fake agent, over real sockets.

``AUTH_TOKEN`` and ``MS`` live in ``tests.helpers`` and are re-exported here.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.routing import BaseRoute

from app import local_routes
from relay import serving
from relay.config import Settings
from relay.monitor import CallEndedHook
from relay.routes import Relay, create_app
from relay.store import Store
from relay.tools import Registry
from tests.fakes import KEY, FakeAgent
from tests.helpers import AUTH_TOKEN, MS, bound_socket, run_server
from tests.redis_server import REDIS_SERVER, RedisServer


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class RunLog:
    """Every log record of the whole test run, in one file (scanned by test_zz_log_scan)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handler = logging.FileHandler(path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def attach(self) -> None:
        root = logging.getLogger()
        if self.handler not in root.handlers:  # a test that configures logging removes it
            root.addHandler(self.handler)
        if root.level > logging.INFO:
            root.setLevel(logging.INFO)


@pytest.fixture(scope="session")
def run_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunLog]:
    log = RunLog(tmp_path_factory.mktemp("run-log") / "run.log")
    yield log
    logging.getLogger().removeHandler(log.handler)
    log.handler.close()


@pytest.fixture(autouse=True)
def _log_to_run_log(run_log: RunLog) -> None:
    run_log.attach()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server of this test's own, started and stopped by its process id."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@dataclass
class RunningRelay:
    settings: Settings
    server: uvicorn.Server

    @property
    def base_url(self) -> str:
        return self.settings.public_base


def test_settings(port: int, agent_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        host="127.0.0.1", port=port, public_url=f"http://127.0.0.1:{port}",
        twilio_account_sid="AC" + "0" * 32, twilio_auth_token=AUTH_TOKEN,
        relay_secret=AUTH_TOKEN, assemblyai_api_key=KEY, agent_ws_url=agent_url,
        agent_greeting="Hello from the test agent.", phone_enabled=False,
        start_timeout=2 * MS, agent_open_timeout=2 * MS, agent_close_timeout=1 * MS,
        tool_timeout=1 * MS, hangup_timeout=3 * MS,
        # Tests place many calls from one number, and their own side shares the server's event
        # loop (its lag is theirs too): the tests of those limits set them.
        caller_rate_limit="10000/minute", admission_max_lag_ms=None,
    )
    values.update(overrides)
    return Settings(**values)


@contextlib.asynccontextmanager
async def run_relay(
    settings_for: Callable[[int], Settings],
    registry: Registry,
    extra_routes: Callable[[Relay], list[BaseRoute]] | None = None,
    call_ended: CallEndedHook | None = None,
    store: Store | None = None,
    **server_options: Any,
) -> AsyncIterator[RunningRelay]:
    """uvicorn serving the real app on 127.0.0.1:0, configured as ``app.py`` configures it."""
    sock = bound_socket()
    settings = settings_for(sock.getsockname()[1])
    # The routes app.py adds (the local agent, the softphone) unless a test names its own.
    app = create_app(settings, registry,
                     extra_routes=extra_routes or functools.partial(local_routes, settings),
                     call_ended=call_ended, store=store)
    config = serving.config(app, log_level="warning", lifespan="on", **server_options)
    async with run_server(config, sock) as server:
        yield RunningRelay(settings, server)


@pytest.fixture
def make_relay() -> Callable[..., contextlib.AbstractAsyncContextManager[RunningRelay]]:
    """``async with make_relay(agent, tools=[...], server={...}, **settings) as relay``."""

    @contextlib.asynccontextmanager
    async def make(agent: FakeAgent, *, tools: Iterable[Callable[..., Any]] = (),
                   server: dict[str, Any] | None = None, call_ended: CallEndedHook | None = None,
                   store: Store | None = None,
                   **overrides: Any) -> AsyncIterator[RunningRelay]:
        async with run_relay(lambda port: test_settings(port, agent.url, **overrides),
                             Registry(tools), call_ended=call_ended, store=store,
                             **(server or {})) as relay:
            yield relay

    return make
