"""Draining on deploy, end to end: a real ``python app.py`` process, signalled as a deploy does.

SIGTERM during a call: the call goes on with audio both ways, new calls are refused, ``/readyz``
turns 503 while ``/healthz`` stays 200, and the process exits 0 once the call has ended (after
the few seconds it keeps answering Twilio's action requests). At the drain deadline the calls
still up are handed to FALLBACK_NUMBER, or end after the agent's goodbye, and Twilio's action
request that follows is answered accordingly; a second signal ends everything at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from relay.draining import ACTION_GRACE
from relay.local.caller import SimulatedCall
from tests.conftest import AUTH_TOKEN, MS
from tests.fakes import KEY, AgentSession, FakeAgent
from tests.helpers import audio_both_ways, post_twiml, refused
from tests.test_call_action import post_action, twilio_form

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[1]
FALLBACK = "+15550009999"
FULL_NUMBER = re.compile(r"\+[1-9]\d{6,14}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AppProcess:
    def __init__(self, proc: subprocess.Popen[bytes], base_url: str, log: Path) -> None:
        self.proc = proc
        self.base_url = base_url
        self.log = log

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    async def exited(self, within: float) -> int:
        deadline = time.monotonic() + within
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"app.py still running after {within} s:\n{self.text()}")
            await asyncio.sleep(0.05)
        return self.proc.returncode


def spawn(environ: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``python app.py`` as a user starts it, its output to ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=environ, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


@contextlib.asynccontextmanager
async def app_process(agent: FakeAgent, tmp_path: Path, **env: str) -> AsyncIterator[AppProcess]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "AGENT_"))}
    environ.update({
        "HOST": "127.0.0.1", "PORT": str(port), "PUBLIC_URL": base,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN, "ASSEMBLYAI_API_KEY": KEY, "AGENT_WS_URL": agent.url,
        "AGENT_GREETING": "", "LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1",
        "TOKEN_TTL": "60", "ADMISSION_MAX_LAG_MS": "off", **env,
    })
    log = tmp_path / "app.log"
    proc = spawn(environ, log)
    app = AppProcess(proc, base, log)
    try:
        async with httpx.AsyncClient(timeout=1) as http:
            deadline = time.monotonic() + 20 * MS
            while True:
                assert proc.poll() is None, app.text()
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(base + "/healthz")).status_code == 200:
                        break
                assert time.monotonic() < deadline, app.text()
                await asyncio.sleep(0.1)
        yield app
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        # the process's own log: no full phone number, no secret
        text = app.text()
        assert not FULL_NUMBER.findall(text), FULL_NUMBER.findall(text)
        assert AUTH_TOKEN not in text and KEY not in text


async def status(base_url: str, path: str) -> int:
    async with httpx.AsyncClient(timeout=2) as http:
        return (await http.get(base_url + path)).status_code


async def test_sigterm_during_a_call_drains_and_exits_0_when_the_call_ends(tmp_path) -> None:
    async with FakeAgent(echo=True).running() as agent, \
            app_process(agent, tmp_path, DRAIN_SECONDS="60") as app:
        async with SimulatedCall.dial(app.base_url, auth_token=AUTH_TOKEN) as call:
            session = await agent.session()
            await session.ready.wait()
            await audio_both_ways(call, session, "AAAA")
            assert await status(app.base_url, "/readyz") == 200
            app.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 3 * MS
            while await status(app.base_url, "/readyz") != 503:
                assert time.monotonic() < deadline, "readyz never turned 503"
                await asyncio.sleep(0.05)
            assert await status(app.base_url, "/healthz") == 200
            _, doc = await post_twiml(app.base_url, caller="+15550007777")
            assert refused(doc) == "busy"
            for i in range(10):  # the live call is untouched, audio both ways
                await audio_both_ways(call, session, f"AAA{'ABCDEFGHIJ'[i]}")
                await asyncio.sleep(0.1)
            assert app.proc.poll() is None
            assert session.violations == []
            await call.hang_up()
            ended = time.monotonic()
        assert await app.exited(ACTION_GRACE + 5 * MS) == 0
        assert time.monotonic() - ended >= ACTION_GRACE - 0.5, "answers action requests a while"
        assert session.ended.is_set()
    log = app.text()
    assert "draining: refusing new calls; 1 call(s) may go on" in log
    assert "refused (refused_busy): draining" in log
    assert "1012" not in log and "Traceback" not in log


async def test_drain_deadline_ends_calls_after_the_agents_goodbye(tmp_path) -> None:
    async def goodbye(session: AgentSession) -> None:
        (ask,) = await session.wait_for("reply.create", timeout=30)
        assert "end the call" in ask["instructions"]
        await session.send({"type": "reply.started", "reply_id": "bye"})
        await session.send({"type": "reply.audio", "reply_id": "bye", "data": "////"})
        await session.send({"type": "reply.done", "reply_id": "bye", "status": "completed"})

    async with FakeAgent(script=goodbye).running() as agent, \
            app_process(agent, tmp_path, DRAIN_SECONDS="1") as app:
        async with SimulatedCall.dial(app.base_url, auth_token=AUTH_TOKEN) as call:
            session = await agent.session()
            await session.ready.wait()
            app.proc.send_signal(signal.SIGTERM)
            assert await call.wait_closed(10 * MS) == 1000
            assert [m["media"]["payload"] for m in call.events("media")] == ["////"]
            assert [m["mark"]["name"] for m in call.events("mark")][-1] == "hangup"
        # Twilio asks what next right after the stream closed: a hang-up, not the apology
        action = await post_action(app.base_url, twilio_form(call.call_sid))
        assert action.status_code == 200 and "<Hangup />" in action.text
        assert await app.exited(ACTION_GRACE + 5 * MS) == 0
        assert session.ended.is_set() and session.violations == []
    log = app.text()
    assert "drain deadline: ending 1 call(s)" in log
    assert "goodbye heard" in log
    assert "call ended: the server is shutting down (drain deadline)" in log


async def test_drain_deadline_hands_calls_to_the_fallback_number(tmp_path) -> None:
    async with FakeAgent().running() as agent, \
            app_process(agent, tmp_path, DRAIN_SECONDS="1", FALLBACK_NUMBER=FALLBACK) as app:
        async with SimulatedCall.dial(app.base_url, auth_token=AUTH_TOKEN) as call:
            session = await agent.session()
            await session.ready.wait()
            app.proc.send_signal(signal.SIGTERM)
            assert await call.wait_closed(5 * MS) == 1000
            assert session.of_type("reply.create") == [], "handed over, no goodbye asked"
        action = await post_action(app.base_url, twilio_form(call.call_sid))
        assert action.status_code == 200
        assert f"<Dial>{FALLBACK}</Dial>" in action.text
        assert await app.exited(ACTION_GRACE + 5 * MS) == 0
        assert session.ended.is_set() and session.violations == []
    assert "drain deadline: handing the call to +1555***9999" in app.text()


async def test_a_second_signal_ends_everything_at_once(tmp_path) -> None:
    async with FakeAgent().running() as agent, \
            app_process(agent, tmp_path, DRAIN_SECONDS="60") as app:
        async with SimulatedCall.dial(app.base_url, auth_token=AUTH_TOKEN) as call:
            await (await agent.session()).ready.wait()
            app.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            assert app.proc.poll() is None and not call.closed.is_set()
            app.proc.send_signal(signal.SIGINT)
            assert await call.wait_closed(5 * MS) is not None
        assert await app.exited(5 * MS) == 1
