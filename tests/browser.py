"""Headless Chromium for the browser tests (the softphone, the calls page), driven over DevTools.

Debian's ``chromium`` runs with a fake microphone fed from a WAV file; the test talks to it over
the Chrome DevTools Protocol and stops it, and everything it started, by process id.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import signal
import struct
import subprocess
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.helpers import MS

CHROMIUM = shutil.which("chromium")


class DevTools:
    """Just enough of the Chrome DevTools Protocol: commands, and the page's console."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.console: list[str] = []
        self._next = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}

    async def read(self) -> None:
        async for raw in self.ws:
            msg = orjson.loads(raw)
            future = self._pending.pop(msg.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(msg)
            elif msg.get("method") == "Runtime.consoleAPICalled":
                args = msg["params"].get("args", [])
                self.console.append(" ".join(str(a.get("value", a.get("description")))
                                             for a in args))
            elif msg.get("method") == "Runtime.exceptionThrown":
                details = msg["params"]["exceptionDetails"]
                self.console.append(str(details.get("exception", {}).get("description")
                                        or details.get("text")))

    async def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._next += 1
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[self._next] = future
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        await self.ws.send(orjson.dumps(message).decode())
        async with asyncio.timeout(5 * MS):
            reply = await future
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]  # type: ignore[no-any-return]

    async def evaluate(self, session: str, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", session, expression=expression,
                                 returnByValue=True, awaitPromise=True, userGesture=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def open(self, url: str) -> str:
        """A new tab showing the softphone at ``url``, ready to call; its session id."""
        target = await self.call("Target.createTarget", url=url)
        page = (await self.call("Target.attachToTarget", targetId=target["targetId"],
                                flatten=True))["sessionId"]
        await self.call("Runtime.enable", page)
        await self.wait_until(page, "window.phoneStats && phoneStats.state === 'idle'", 5 * MS)
        return page

    async def wait_until(self, session: str, expression: str, within: float) -> Any:
        """Poll ``expression`` in the page until it is truthy; its value."""
        try:
            async with asyncio.timeout(within):
                while True:
                    value = await self.evaluate(session, expression)
                    if value:
                        return value
                    await asyncio.sleep(0.05)
        except TimeoutError:
            state = await self.evaluate(session, "JSON.stringify({stats: window.phoneStats, "
                                        "status: document.getElementById('status').textContent, "
                                        "transcript: document.getElementById('transcript')"
                                        ".innerText})")
            raise AssertionError(f"timed out waiting for {expression}; page: {state}; "
                                 f"console: {self.console}") from None


def speech_like_wav(path: Path, rate: int = 48000, seconds: float = 2.0) -> None:
    """Syllable-like bursts: 4 per second, each a rising vowel-like buzz, with short gaps."""
    frames = bytearray()
    for i in range(int(rate * seconds)):
        t = i / rate
        envelope = max(0.0, math.sin(math.pi * ((t * 4) % 1))) ** 2
        pitch = 160 + 60 * ((t * 4) % 1)
        value = sum(math.sin(2 * math.pi * k * pitch * t) / k for k in (1, 2, 3, 5))
        frames += struct.pack("<h", int(12000 * envelope * value))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(bytes(frames))


def log_file(path: Path) -> BinaryIO:
    return path.open("wb")


@contextlib.asynccontextmanager
async def chromium(tmp_path: Path, microphone: Path) -> AsyncIterator[DevTools]:
    """Headless Chromium with a fake microphone, and a DevTools connection to it."""
    assert CHROMIUM is not None
    profile = tmp_path / "profile"
    profile.mkdir()
    flags = [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={microphone}",
        "--autoplay-policy=no-user-gesture-required", "--remote-debugging-port=0",
        "about:blank",
    ]
    with log_file(tmp_path / "chromium.log") as log:
        proc = await asyncio.create_subprocess_exec(
            CHROMIUM, *flags, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True)
    try:
        port_file = profile / "DevToolsActivePort"
        # A browser's first start on a busy machine (fonts, a new profile) can take many
        # seconds; this bounds start-up only, never what the tests then check.
        async with asyncio.timeout(25 * MS):
            while len(lines := (port_file.read_text().split() if port_file.exists() else [])) < 2:
                if proc.returncode is not None:
                    raise RuntimeError(f"chromium exited with {proc.returncode}: "
                                       f"{(tmp_path / 'chromium.log').read_text()[-2000:]}")
                await asyncio.sleep(0.05)
        async with connect(f"ws://127.0.0.1:{lines[0]}{lines[1]}", compression=None,
                           max_size=None, open_timeout=5 * MS) as ws:
            devtools = DevTools(ws)
            reader = asyncio.create_task(devtools.read())
            try:
                yield devtools
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(devtools.call("Browser.close"), 2)
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await reader
    finally:
        if proc.returncode is None:
            proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 3)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its renderers and helpers, if any are left
        await proc.wait()
