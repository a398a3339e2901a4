"""The example deployment's reverse proxy: ``deploy/Caddyfile`` in front of two instances.

The Caddyfile is used as shipped, with only the names compose gives the instances replaced
by their loopback ports, and Caddy's admin endpoint and automatic HTTPS off (loopback, no
certificates here). Calls go through the proxy for the webhook, the media stream (a WebSocket
upgrade) and the action request, as Twilio's would.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from relay.local.caller import SimulatedCall
from tests.conftest import AUTH_TOKEN, MS
from tests.fakes import KEY, FakeAgent
from tests.instances import ROOT, RelayProcess
from tests.redis_server import RedisServer, free_port
from tests.test_instances import echoed

CADDY = shutil.which("caddy")
pytestmark = pytest.mark.skipif(CADDY is None, reason="caddy is not installed")


@pytest.fixture
async def proxied(tmp_path: Path, redis_server: RedisServer
                  ) -> AsyncIterator[Callable[[], tuple[str, list[RelayProcess]]]]:
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    async with FakeAgent(echo=True).running() as agent:
        instances = [RelayProcess(tmp_path / f"relay-{i}.log", PUBLIC_URL=public,
                                  TWILIO_AUTH_TOKEN=AUTH_TOKEN, ASSEMBLYAI_API_KEY=KEY,
                                  AGENT_WS_URL=agent.url, REDIS_URL=redis_server.url,
                                  AGENT_GREETING="") for i in range(2)]
        caddyfile = (ROOT / "deploy" / "Caddyfile").read_text()
        assert "relay-a:8080 relay-b:8080" in caddyfile
        caddyfile = caddyfile.replace(
            "relay-a:8080 relay-b:8080",
            " ".join(f"127.0.0.1:{instance.port}" for instance in instances))
        config = tmp_path / "Caddyfile"
        config.write_text("{\n\tadmin off\n\tauto_https off\n}\n" + caddyfile)
        env = {**os.environ, "RELAY_DOMAIN": public, "XDG_DATA_HOME": str(tmp_path / "data"),
               "XDG_CONFIG_HOME": str(tmp_path / "config"), "HOME": str(tmp_path)}
        await asyncio.gather(*(instance.start() for instance in instances))
        log = (tmp_path / "caddy.log").open("wb")
        assert CADDY is not None
        caddy = await asyncio.create_subprocess_exec(
            CADDY, "run", "--config", str(config), "--adapter", "caddyfile", env=env,
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            async with httpx.AsyncClient(timeout=1) as http, asyncio.timeout(10 * MS):
                while True:
                    try:
                        if (await http.get(public + "/healthz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.05)
            yield lambda: (public, instances)
        finally:
            if caddy.returncode is None:
                caddy.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(caddy.wait(), 5)
                except TimeoutError:
                    caddy.kill()
                    await caddy.wait()
            log.close()
            for instance in instances:
                await instance.stop()


@pytest.mark.anyio
async def test_calls_through_the_example_proxy_reach_both_instances(
        proxied: Callable[[], tuple[str, list[RelayProcess]]]) -> None:
    public, instances = proxied()
    for n in range(4):
        async with SimulatedCall.dial(public, auth_token=AUTH_TOKEN) as call:
            assert call.stream.url == public.replace("http", "ws") + "/media"
            await echoed(call, bytes([n]) * 160, 5 * MS)
            await call.hang_up()
    # Round robin over both: webhooks and streams alike reach either instance (here each
    # call's webhook one and its stream the other), and every call was served.
    webhooks = [instance.log().count("POST /twiml") for instance in instances]
    streams = [instance.log().count("call started") for instance in instances]
    assert sum(webhooks) == sum(streams) == 4
    assert all(w + s > 0 for w, s in zip(webhooks, streams, strict=True))
