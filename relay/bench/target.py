"""The relay under test as its own process: started, pinned, probed and stopped.

``ours`` is started as a user would, ``python app.py`` in the project root configured only by
environment variables; ``floor`` is ``python -m relay.bench.floor``. Both are pinned to core 0
when the machine has two cores or more, and read through their own CPU and memory counters.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

PROJECT_ROOT = Path(__file__).resolve().parents[2]
RELAY_CORE = 0
LOAD_CORE = 1
BENCH_TOKEN = "bench-" + secrets.token_hex(16)
BENCH_ACCOUNT = "AC" + secrets.token_hex(16)
GREETING = "Hello from the benchmark."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_PINNABLE = hasattr(os, "sched_setaffinity") and {RELAY_CORE, LOAD_CORE} <= set(
    os.sched_getaffinity(0))


def can_pin() -> bool:
    """True when this process may use both the relay core and the load core."""
    return _PINNABLE


@dataclass
class CpuSample:
    at: float
    cpu: float


class RelayProcess:
    """One relay process; ``kind`` is ``"ours"`` or ``"floor"``."""

    def __init__(self, kind: str, agent_url: str, log_path: Path, *, greeting: bool = False,
                 pin: bool = True) -> None:
        self.kind = kind
        self.agent_url = agent_url
        self.log_path = log_path
        self.greeting = greeting
        self.pin = pin and can_pin()
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ps: psutil.Process | None = None

    def command(self) -> tuple[list[str], dict[str, str]]:
        env = dict(os.environ)
        if self.kind == "ours":
            env.update({
                "HOST": "127.0.0.1", "PORT": str(self.port), "PUBLIC_URL": self.base_url,
                "TWILIO_AUTH_TOKEN": BENCH_TOKEN, "TWILIO_ACCOUNT_SID": BENCH_ACCOUNT,
                "ASSEMBLYAI_API_KEY": "bench-key", "AGENT_WS_URL": self.agent_url,
                "AGENT_GREETING": GREETING if self.greeting else "", "LOG_LEVEL": "INFO",
                # Every benchmark call comes from one number: its limit is set out of reach
                # (it still counts each call, so its cost is measured).
                "CALLER_RATE_LIMIT": "1000000/minute",
                # The levels search for the most calls a core sustains, set up all at once:
                # the lag gate would refuse calls there by design. It still measures the lag.
                "ADMISSION_MAX_LAG_MS": "off",
            })
            return [sys.executable, "app.py"], env
        env["ASSEMBLYAI_API_KEY"] = "bench-key"
        return [sys.executable, "-m", "relay.bench.floor", "--host", "127.0.0.1",
                "--port", str(self.port), "--agent-url", self.agent_url], env

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start the process, output to the log file, pinned to the relay core."""
        argv, env = self.command()
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(argv, cwd=PROJECT_ROOT, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if self.pin:
            os.sched_setaffinity(proc.pid, {RELAY_CORE})
        self.ps = psutil.Process(proc.pid)
        return proc

    async def start(self, within: float = 20.0) -> None:
        """Spawn, then poll ``/healthz`` until it answers 200."""
        self.proc = self.spawn()
        deadline = time.monotonic() + within
        async with httpx.AsyncClient(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.kind} relay exited with {self.proc.returncode}:\n"
                                       + self.log_tail())
                try:
                    if (await client.get(self.base_url + "/healthz")).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        await self.stop()
        raise RuntimeError(f"{self.kind} relay not healthy within {within} s:\n"
                           + self.log_tail())

    def _procs(self) -> list[psutil.Process]:
        assert self.ps is not None
        try:
            return [self.ps, *self.ps.children(recursive=True)]
        except psutil.Error:
            return [self.ps]

    def cpu(self) -> CpuSample:
        """User + system CPU seconds of the relay (and any children it started)."""
        total = 0.0
        for p in self._procs():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return CpuSample(time.monotonic(), total)

    def rss(self) -> int:
        total = 0
        for p in self._procs():
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    async def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; return the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait, 5)
        return self.proc.returncode

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def log_findings(self, limit: int = 10) -> dict[str, object]:
        """Counts of warning/error lines and tracebacks in the relay's output, with examples."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return {}
        bad = [line for line in text if any(w in line for w in ("ERROR", "Traceback",
                                                                  "CRITICAL", "Exception"))]
        warn = [line for line in text if "WARNING" in line]
        return {"lines": len(text), "errors": len(bad), "warnings": len(warn),
                "examples": [line[:300] for line in (bad + warn)[:limit]]}


def cpu_ticks() -> dict[str, list[int]]:
    """Jiffies per line of /proc/stat: ``cpu`` (all) and ``cpu0``, ``cpu1``…; {} elsewhere.

    Fields: user nice system idle iowait irq softirq steal.
    """
    out: dict[str, list[int]] = {}
    try:
        with open("/proc/stat") as f:
            for line in f:
                if not line.startswith("cpu"):
                    break
                name, *fields = line.split()
                out[name] = [int(x) for x in fields[:8]] + [0] * (8 - len(fields[:8]))
    except (OSError, ValueError):
        return {}
    return out


def steal_pct(before: dict[str, list[int]], after: dict[str, list[int]]) -> float | None:
    """Hypervisor steal, % of all CPU time between two samples."""
    if "cpu" not in before or "cpu" not in after:
        return None
    delta = [a - b for a, b in zip(after["cpu"], before["cpu"], strict=True)]
    total = sum(delta)
    return round(delta[7] / total * 100, 2) if total else None


def busy_pct(before: dict[str, list[int]], after: dict[str, list[int]], core: int,
             ) -> float | None:
    """% of the time core ``core`` was not idle (user, system, irq, softirq, steal)."""
    name = f"cpu{core}"
    if name not in before or name not in after:
        return None
    delta = [a - b for a, b in zip(after[name], before[name], strict=True)]
    total = sum(delta)
    return round((total - delta[3] - delta[4]) / total * 100, 1) if total else None


def busy_seconds(before: dict[str, list[int]], after: dict[str, list[int]],
                 ) -> tuple[float, float] | None:
    """CPU seconds all cores together spent (in tasks, in interrupts) between two samples.

    Interrupt time (irq + softirq) is mostly the kernel moving loopback packets; task time is
    user + system (+ nice), which process counters account for.
    """
    if "cpu" not in before or "cpu" not in after:
        return None
    d = [a - b for a, b in zip(after["cpu"], before["cpu"], strict=True)]
    hz = os.sysconf("SC_CLK_TCK")
    return (d[0] + d[1] + d[2]) / hz, (d[5] + d[6]) / hz
