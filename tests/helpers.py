"""What several test modules share: the server on port 0, audio frames, scripted agent turns,
a signed webhook, polling. Test modules import from here (and from the fakes), never from
each other.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import socket
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from relay.bus import RedisBus
from relay.call_directory import HANGUP_CHANNEL, CallDirectory
from relay.local.caller import SimulatedCall, new_sid
from relay.record_log import read_records
from relay.security import twilio_signature
from relay.store import MemoryStore
from relay.tools import tool
from tests.fakes import AgentSession

AUTH_TOKEN = "test-twilio-auth-token"
# Scales every timeout in the tests for slow machines: RELAY_TEST_MS=3 triples them.
MS = float(os.environ.get("RELAY_TEST_MS", "1"))
FRAME_SECONDS = 160 / 8000  # one 160-byte μ-law frame


# ---------------------------------------------------------------------- a server on port 0


def bound_socket() -> socket.socket:
    """A TCP socket bound to 127.0.0.1 on a free port (its port is known before serving)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.asynccontextmanager
async def run_server(config: uvicorn.Config, sock: socket.socket) -> AsyncIterator[uvicorn.Server]:
    """uvicorn serving ``config`` on ``sock`` until the block ends; the socket is closed after."""
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(5 * MS):
            while not server.started:  # noqa: ASYNC110 (uvicorn sets a flag, not an event)
                if task.done():
                    task.result()
                await asyncio.sleep(0.005)
        yield server
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10 * MS)
        sock.close()


# ---------------------------------------------------------------------- audio and agent turns


def frame(i: int) -> str:
    """A distinct 160-byte μ-law frame, base64 as Twilio sends it."""
    return base64.b64encode(i.to_bytes(4, "big") + bytes([0xFF]) * 156).decode()


async def greet(session: AgentSession) -> None:
    await session.send({"type": "reply.started", "reply_id": "greet"})
    for i in range(3):
        await session.send({"type": "reply.audio", "reply_id": "greet", "data": frame(900 + i)})
    await session.send({"type": "transcript.agent", "reply_id": "greet", "text": "Hello."})
    await session.send({"type": "reply.done", "reply_id": "greet", "status": "completed"})


async def reply_with_tool_call(session: AgentSession, reply_id: str, call_id: str, name: str,
                               **fields: Any) -> None:
    """A tool turn as the API sends it: ``reply.started``, ``tool.call``, ``reply.done``."""
    await session.send({"type": "reply.started", "reply_id": reply_id})
    await session.tool_call(call_id, name, **fields)
    await session.send({"type": "reply.done", "reply_id": reply_id, "status": "completed"})


async def speak(session: AgentSession, reply_id: str, frames: int, text: str, *,
                first: int = 0) -> None:
    await session.send({"type": "reply.started", "reply_id": reply_id})
    for i in range(frames):
        await session.send({"type": "reply.audio", "reply_id": reply_id, "data": frame(first + i)})
    await session.send({"type": "transcript.agent", "reply_id": reply_id, "text": text})
    await session.send({"type": "reply.done", "reply_id": reply_id, "status": "completed"})


# ---------------------------------------------------------------------- a scripted conversation


@tool
def lookup_order(order_id: str) -> dict[str, str]:
    """Look up an order."""
    raise ValueError(f"There is no order {order_id} for this phone number.")


async def conversation(session: AgentSession) -> None:
    """A greeting, a question with a tool that fails, an answer, and an answer cut short."""
    await speak(session, "r1", 3, "Hello, how can I help?")
    await asyncio.sleep(0.1)  # the greeting's mark comes back: the caller talks after it
    await session.send({"type": "input.speech.started"})
    await session.send({"type": "input.speech.stopped"})
    await session.send({"type": "transcript.user",
                        "text": "My card is 4111 1111 1111 1111, where is order 42? At 10:30?"})
    await reply_with_tool_call(session, "r2", "c1", "lookup_order", arguments={"order_id": "42"})
    await session.wait_for("tool.result")
    await speak(session, "r3", 4, "Sorry, I cannot find order 42.", first=100)
    # The caller asks again, and talks over the answer after about 0.3 s of it.
    await asyncio.sleep(0.1)
    await session.send({"type": "input.speech.started"})
    await session.send({"type": "input.speech.stopped"})
    await session.send({"type": "transcript.user", "text": "Write to jane@example.com"})
    await session.send({"type": "reply.started", "reply_id": "r4"})
    for i, (word, end_ms) in enumerate([("I", 100), ("will", 2000), ("write", 3000)]):
        await session.send({"type": "transcript.agent.delta", "reply_id": "r4", "delta": word,
                            "start_ms": end_ms - 100, "end_ms": end_ms})
        await session.send({"type": "reply.audio", "reply_id": "r4", "data": frame(200 + i)})
    await asyncio.sleep(0.3)
    await session.send({"type": "input.speech.started"})
    await session.send({"type": "transcript.agent", "reply_id": "r4", "text": "I will write",
                        "interrupted": True})
    await session.send({"type": "reply.done", "reply_id": "r4", "status": "interrupted"})
    await session.send({"type": "input.speech.stopped"})


# ---------------------------------------------------------------------- webhooks and polling


def parse(twiml: str) -> ET.Element:
    return ET.fromstring(twiml)


async def post_twiml(base_url: str, *, caller: str = "+15550001111",
                     call_sid: str | None = None) -> tuple[str, ET.Element]:
    call_sid = call_sid or new_sid("CA")
    params = {"CallSid": call_sid, "AccountSid": "AC" + "0" * 32, "From": caller,
              "To": "+15550002222", "CallStatus": "ringing", "Direction": "inbound"}
    url = base_url + "/twiml"
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(url, data=params, headers={
            "X-Twilio-Signature": twilio_signature(AUTH_TOKEN, url, params)})
    response.raise_for_status()
    return call_sid, parse(response.text)


def refused(doc: ET.Element) -> str | None:
    """``busy`` for ``<Reject reason="busy"/>``, ``dial:N`` for a ``<Dial>``, None if admitted."""
    if doc.find("Connect") is not None:
        return None
    (verb,) = list(doc)
    return "busy" if verb.tag == "Reject" and verb.get("reason") == "busy" else f"dial:{verb.text}"


async def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    """Poll ``check`` (state another task or process changes) until it holds."""
    async with asyncio.timeout(within * MS):
        while True:
            if check():
                return
            await asyncio.sleep(0.02)


async def wait_for_records(directory: Path, count: int) -> list[dict[str, Any]]:
    await eventually(lambda: len(read_records(directory)) >= count)
    return read_records(directory)


async def echoed(call: SimulatedCall, payload: bytes, timeout: float) -> float:
    """Send frames until the agent's echo of exactly ``payload`` comes back; how long it took.

    Caller audio before the agent's ``session.ready`` is dropped by design, so the first
    frames of a call (or of a resumed call) may get no echo: keep sending, as a caller talks.
    """
    encoded = base64.b64encode(payload).decode()
    started = time.monotonic()
    async with asyncio.timeout(timeout):
        for _ in itertools.count():
            seen = len(call.events("media"))
            await call.send_media(encoded)
            with contextlib.suppress(TimeoutError):
                found = await call.wait_for("media", seen + 1, timeout=0.02)  # 20 ms frames
                if any(m["media"]["payload"] == encoded for m in found[seen:]):
                    break
    return time.monotonic() - started


async def listeners(directory: CallDirectory) -> int:
    """How many instances listen for hang-ups (Redis's count of the channel's subscribers)."""
    assert isinstance(directory.bus, RedisBus)
    counts = await directory.bus.client.pubsub_numsub("relay:" + HANGUP_CHANNEL)
    return int(counts[0][1])


async def subscribed(directory: CallDirectory, count: int, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        for _ in itertools.count():
            if await listeners(directory) >= count:
                return
            await asyncio.sleep(0.01)


class GatedStore(MemoryStore):
    """A store whose slot writes can be held at a gate: a slow store, in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: asyncio.Event | None = None
        self.at_gate = asyncio.Event()

    async def acquire(self, pool: str, holder: str, *, limit: int, ttl: float) -> bool:
        if self.gate is not None:
            self.at_gate.set()
            await self.gate.wait()
        return await super().acquire(pool, holder, limit=limit, ttl=ttl)


class NetworkPath:
    """A TCP path to a local server that a test can cut as the network would: every
    connection through it is dropped at once, both ways, with no close from either end's
    protocol. New connections pass again right after."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._pumps: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> NetworkPath:
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        for task in list(self._pumps):
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        await self._server.wait_closed()

    def cut(self) -> None:
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    async def _connect(self, down_r: asyncio.StreamReader, down_w: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._open |= {down_w, up_w}
        for r, w in ((down_r, up_w), (up_r, down_w)):
            task = asyncio.create_task(self._pump(r, w))
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        if writer in self._open:  # the other end closed properly: pass that on
            self._open.discard(writer)
            with contextlib.suppress(OSError):
                writer.close()


async def audio_both_ways(call: SimulatedCall, session: AgentSession, payload: str) -> None:
    """The caller's frame reaches the agent, and the agent's echo reaches the caller."""
    heard = len(call.events("media"))
    await call.send_media(payload)
    echoed = await call.wait_for("media", heard + 1, timeout=3 * MS)
    assert echoed[-1]["media"]["payload"] == payload
    assert session.of_type("input.audio")[-1]["audio"] == payload
