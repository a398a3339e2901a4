"""``python app.py`` as a real process for the tests, configured only by its environment.

``RelayProcess`` starts the relay on a free loopback port with the built-in local agent (or
the agent a test names), logs to a file the test can read, waits until ``/healthz`` answers,
and stops it by its process id: SIGTERM (then SIGKILL after a bound), or SIGKILL at once to
play a crash. Nothing of the developer's ``.env`` leaks in: every key the relay reads from a
``.env`` is given here, empty when the test does not set it.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent
# Keys whose value in a stray .env would change what the test runs.
CLEARED = ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_PHONE_NUMBER", "TWILIO_API_BASE_URL",
           "ASSEMBLYAI_API_KEY", "AGENT_WS_URL", "RELAY_SECRET", "PHONE_ENABLED",
           "PHONE_PASSWORD", "TRANSFER_NUMBER", "TRANSFER_ALLOWED", "TOOLS_DIR", "WORKERS",
           "REDIS_URL", "WEB_CONCURRENCY", "ADMIN_TOKEN", "CALL_LOG_DIR", "REDACT_TRANSCRIPTS",
           "LOG_FORMAT", "MAX_CONCURRENT_CALLS", "AGENT_MAX_SESSIONS", "CALLER_RATE_LIMIT",
           "DRAIN_SECONDS")
STARTED = re.compile(r"Started server process \[(\d+)\]")


class RelayProcess:
    def __init__(self, log_path: Path, **env: str) -> None:
        self.port = free_port()
        self.log_path = log_path
        inherited = {k: v for k, v in os.environ.items() if k != "WEB_CONCURRENCY"}
        self.env = {**inherited, **dict.fromkeys(CLEARED, ""), "HOST": "127.0.0.1",
                    "PORT": str(self.port), "LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1",
                    # the lag of a loaded test machine is not the relay's: its tests set it
                    "ADMISSION_MAX_LAG_MS": "off", **env}
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def worker_pids(self) -> list[int]:
        """Every process that logged that it serves, in order (a restarted worker is new)."""
        return [int(pid) for pid in STARTED.findall(self.log())]

    async def start(self, timeout: float = 20.0) -> None:
        assert self.proc is None
        with self.log_path.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, str(ROOT / "app.py"), cwd=ROOT, env=self.env,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(timeout=1.0) as http:
            while True:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"app.py exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    if (await http.get(self.base_url + "/healthz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"app.py did not answer /healthz:\n{self.log()}")
                await asyncio.sleep(0.05)

    async def wait_for_log(self, pattern: str, count: int = 1, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while len(re.findall(pattern, self.log())) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {count} × {pattern!r} in the log:\n{self.log()}")
            await asyncio.sleep(0.05)

    async def kill(self) -> None:
        """SIGKILL: the process dies as in a crash, with no shutdown at all."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(self.proc.wait(), 5)

    def freeze(self) -> None:
        """SIGSTOP: the process stops answering, as a stalled or partitioned machine does."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT: a frozen process goes on where it stopped."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGCONT)

    async def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit status."""
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None:
            proc.send_signal(signal.SIGCONT)  # a frozen process could not act on SIGTERM
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                proc.kill()
                await asyncio.wait_for(proc.wait(), 5)
        for pid in self.worker_pids():  # workers outlive a parent that was killed
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        return proc.returncode


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie has exited: only its parent's wait is missing
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
