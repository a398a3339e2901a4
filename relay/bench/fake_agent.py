"""A fake Voice Agent API server that echoes caller audio straight back.

Protocol (``agent-api.md`` §2, §3.1, §3.3, §4.1, §4.8): the upgrade must carry
``Authorization: Bearer …``; the first message must be a ``session.update`` asking for
``audio/pcmu`` both ways, answered by ``session.ready``; every ``input.audio`` is answered at
once by a ``reply.audio`` carrying the very same base64 string; ``session.end`` is answered by
``session.ended`` and a 1000 close. When the update sets a ``greeting``, the agent speaks
first, as the real one does: ``reply.started`` and one ``reply.audio`` right after
``session.ready``. Every ``TURN_FRAMES`` echoed frames (2 s) it ends the reply and starts the
next (``reply.done``, ``reply.started``), so the relay does its per-reply work under load too:
a Twilio ``mark`` after each reply, echoed by the load generator, and a log line when heard.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import orjson
from websockets.http11 import Request

from relay.bench.ws_endpoint import ServerEndpoint

REPLY_ID = "reply_bench"
GREETING_AUDIO = base64.b64encode(b"\xff" * 160).decode()
_AUDIO_PREFIX = b'{"type":"input.audio"'
_READY = b'{"type":"session.ready","session_id":"sess_%s"}'
_REPLY_AUDIO = b'{"type":"reply.audio","reply_id":"' + REPLY_ID.encode() + b'","data":%b}'
_NEXT_TURN = (b'{"type":"reply.done","reply_id":"' + REPLY_ID.encode()
              + b'","status":"completed"}', b'{"type":"reply.started","reply_id":"'
              + REPLY_ID.encode() + b'"}')
TURN_FRAMES = 100


@dataclass
class AgentStats:
    """Counters across all sessions; read by the benchmark between and during levels."""

    connections: int = 0
    refused: int = 0
    ready: int = 0
    greetings: int = 0
    audio_in: int = 0
    turns: int = 0
    ended: int = 0
    closed_without_end: int = 0
    bad_messages: int = 0
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(text)


class AgentSession(ServerEndpoint):
    """One agent WebSocket connection."""

    def __init__(self, stats: AgentStats) -> None:
        super().__init__()
        self.stats = stats
        self.updated = False
        self.ended = False
        self.echoed = 0

    def refuse(self, request: Request) -> HTTPStatus | None:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or len(auth) <= 7:
            self.stats.refused += 1
            self.stats.problem(f"upgrade without Bearer authorization: {auth[:20]!r}")
            return HTTPStatus.UNAUTHORIZED
        self.stats.connections += 1
        return None

    def on_message(self, message: bytes) -> None:
        if self.updated and message.startswith(_AUDIO_PREFIX):
            # {"type":"input.audio","audio":"<b64>"}: echo the string as it came.
            start = message.find(b'"audio":', 20)
            end = message.rfind(b"}")
            if start > 0 and end > start and message.count(b'"', start) == 4:
                self.stats.audio_in += 1
                self.send(_REPLY_AUDIO % message[start + 8 : end].strip())
                self._turn()
                return
        try:
            msg = orjson.loads(message)
        except orjson.JSONDecodeError:
            self._bad(f"not JSON: {message[:60]!r}")
            return
        kind = msg.get("type") if isinstance(msg, dict) else None
        if not self.updated:
            self._first(msg, kind)
        elif kind == "input.audio":
            self.stats.audio_in += 1
            self.send(orjson.dumps({"type": "reply.audio", "reply_id": REPLY_ID,
                                    "data": msg.get("audio")}))
            self._turn()
        elif kind == "session.end":
            self.ended = True
            self.stats.ended += 1
            self.send(b'{"type":"session.ended"}')
            self.close(1000)
        elif kind not in ("session.update", "reply.create", "tool.result"):
            self._bad(f"unexpected message type {kind!r}")

    def _turn(self) -> None:
        self.echoed += 1
        if self.echoed % TURN_FRAMES == 0:
            self.stats.turns += 1
            for message in _NEXT_TURN:
                self.send(message)

    def _first(self, msg: object, kind: object) -> None:
        session: dict[str, Any] = {}
        if isinstance(msg, dict) and isinstance(msg.get("session"), dict):
            session = msg["session"]
        formats = [(session.get(side) or {}).get("format") or {} for side in ("input", "output")]
        if kind != "session.update" or any(f.get("encoding") != "audio/pcmu" for f in formats):
            self._bad(f"first message is not a pcmu session.update: {str(msg)[:120]}")
            self.close(1008)
            return
        self.updated = True
        self.stats.ready += 1
        self.send(_READY % secrets.token_hex(8).encode())
        if session.get("greeting"):
            self.stats.greetings += 1
            self.send(b'{"type":"reply.started","reply_id":"' + REPLY_ID.encode() + b'"}')
            self.send(orjson.dumps({"type": "reply.audio", "reply_id": REPLY_ID,
                                    "data": GREETING_AUDIO}))

    def _bad(self, text: str) -> None:
        self.stats.bad_messages += 1
        self.stats.problem(text)

    def on_closed(self) -> None:
        if self.updated and not self.ended:
            self.stats.closed_without_end += 1


class FakeAgent:
    """The server: ``async with FakeAgent() as agent: agent.url``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.stats = AgentStats()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    async def __aenter__(self) -> FakeAgent:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: AgentSession(self.stats), self.host, self.port, backlog=1024
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await asyncio.wait_for(self._server.wait_closed(), 5)

    def reset(self) -> AgentStats:
        """Start counting afresh; return the counters so far."""
        old, self.stats = self.stats, AgentStats()
        return old
