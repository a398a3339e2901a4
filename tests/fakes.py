"""A strict in-process fake of the Voice Agent API over a real WebSocket server.

It follows ``shared/spec/agent-api.md``: Bearer auth (a bad key gets ``session.error``
``unauthorized`` then close 1008), ``session.update`` first with ``audio/pcmu`` both ways,
``input.audio`` only after ``session.ready``, ``tool.result`` with a string ``result`` for a
known ``call_id``, and ``session.end`` answered by ``session.ended`` and close 1000. Every breach
is recorded in ``violations`` (and answered as the real API would), so tests assert there are none.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

KEY = "test-agent-key"


@dataclass
class AgentSession:
    ws: ServerConnection
    received: list[dict[str, Any]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    tool_calls: set[str] = field(default_factory=set)
    _new: asyncio.Event = field(default_factory=asyncio.Event)

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(orjson.dumps(message), text=True)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.received if m.get("type") == kind]

    async def wait_for(self, kind: str, count: int = 1,
                       timeout: float = 5.0) -> list[dict[str, Any]]:
        async with asyncio.timeout(timeout):
            while len(found := self.of_type(kind)) < count:
                self._new.clear()
                await self._new.wait()
        return found

    async def tool_call(self, call_id: str, name: str, **fields: Any) -> None:
        self.tool_calls.add(call_id)
        await self.send({"type": "tool.call", "call_id": call_id, "name": name, **fields})


Script = Callable[[AgentSession], Awaitable[None]]


class FakeAgent:
    """``script`` runs after ``session.ready``; ``echo`` answers every input.audio with it."""

    def __init__(self, *, script: Script | None = None, echo: bool = False,
                 refuse_status: int | None = None, ready: bool = True,
                 answer_end: bool = True) -> None:
        self.answer_end = answer_end
        self.script = script
        self.echo = echo
        self.refuse_status = refuse_status
        self.send_ready = ready
        self.sessions: list[AgentSession] = []
        self.connections = 0
        self._server: Server | None = None
        self._new = asyncio.Event()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/v1/ws"

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FakeAgent]:
        async with serve(self._handler, "127.0.0.1", 0, compression=None,
                         process_request=self._process_request) as server:
            self._server = server
            yield self

    async def session(self, index: int = 0, timeout: float = 5.0) -> AgentSession:
        async with asyncio.timeout(timeout):
            while len(self.sessions) <= index:
                self._new.clear()
                await self._new.wait()
        return self.sessions[index]

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        self.connections += 1
        if self.refuse_status:
            status = HTTPStatus(self.refuse_status)
            return Response(status.value, status.phrase, Headers(), b"refused\n")
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        session = AgentSession(ws)
        self.sessions.append(session)
        self._new.set()
        script_task: asyncio.Task[None] | None = None
        try:
            if ws.request is None or ws.request.headers.get("Authorization") != f"Bearer {KEY}":
                await session.send({"type": "session.error", "code": "unauthorized",
                                    "message": "Invalid API key"})
                await ws.close(1008)
                return
            async for raw in ws:
                msg = orjson.loads(raw)
                session.received.append(msg)
                session._new.set()
                kind = msg.get("type")
                if len(session.received) == 1:
                    if not await self._first_update(session, msg):
                        return
                    if self.script is not None:
                        script_task = asyncio.create_task(self.script(session))
                elif kind == "input.audio":
                    if not session.ready.is_set():
                        await self._violation(session, "input.audio before session.ready")
                    elif not isinstance(msg.get("audio"), str):
                        await self._violation(session, "input.audio without audio")
                    elif self.echo:
                        await session.send({"type": "reply.audio", "reply_id": "echo",
                                            "data": msg["audio"]})
                elif kind == "tool.result":
                    if msg.get("call_id") not in session.tool_calls:
                        await self._violation(
                            session, f"tool.result for unknown call {msg.get('call_id')}")
                    if not isinstance(msg.get("result"), str):
                        await self._violation(session, "tool.result.result is not a string")
                    if not isinstance(msg.get("is_error", False), bool):
                        await self._violation(session, "tool.result.is_error is not a boolean")
                elif kind == "session.end":
                    session.ended.set()
                    if not self.answer_end:
                        continue  # a stalled agent: the relay must close on its own
                    await session.send({"type": "session.ended", "session_duration_seconds": 1.0,
                                        "audio_duration_seconds": None})
                    await ws.close(1000)
                    return
                elif kind not in ("reply.create", "session.update"):
                    await self._violation(session, f"unknown message type {kind!r}")
        except ConnectionClosed:
            pass
        finally:
            if script_task is not None:
                script_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await script_task
            session.closed.set()
            session._new.set()

    async def _first_update(self, session: AgentSession, msg: dict[str, Any]) -> bool:
        config = msg.get("session") if msg.get("type") == "session.update" else None
        problems = []
        if not isinstance(config, dict):
            problems.append("first message is not session.update")
        else:
            for side in ("input", "output"):
                if config.get(side, {}).get("format", {}).get("encoding") != "audio/pcmu":
                    problems.append(f"{side}.format.encoding is not audio/pcmu")
            if "greeting" in config and not isinstance(config["greeting"], str):
                problems.append("greeting must be a string or omitted")
            for tool in config.get("tools", []):
                if tool.get("type") != "function" or not tool.get("name"):
                    problems.append(f"bad tool definition {tool!r}")
        if problems:
            session.violations.extend(problems)
            await session.send({"type": "session.error", "code": "invalid_config",
                                "message": "; ".join(problems)})
            await session.ws.close(1008)
            return False
        if self.send_ready:
            await session.send({"type": "session.ready", "session_id": "sess_test",
                                "resume_token": "resume_test"})
            session.ready.set()
        return True

    async def _violation(self, session: AgentSession, problem: str) -> None:
        session.violations.append(problem)
        await session.send({"type": "session.error", "code": "invalid_format", "message": problem})
