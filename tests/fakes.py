"""A strict in-process fake of the Voice Agent API over a real WebSocket server.

It follows ``shared/spec/agent-api.md``: Bearer auth (a bad key gets ``session.error``
``unauthorized`` then close 1008), ``session.update`` first with ``audio/pcmu`` both ways,
``input.audio`` only after ``session.ready``, ``tool.result`` with a string ``result`` for a
known ``call_id``, and ``session.end`` answered by ``session.ended`` and close 1000. Every breach
is recorded in ``violations`` (and answered as the real API would), so tests assert there are none.

``session.resume`` (agent-api.md §3.2): a session whose socket dropped without ``session.end``
stays resumable for ``grace`` seconds (30 on the real API). A new connection authenticated with
the API key or that session's ``resume_token`` may send ``session.resume`` as its first message
and gets ``session.ready`` with the same ``session_id`` (and a new ``resume_token``); its tool
calls still wait for their results. An unknown or expired id is ``session_not_found``, another
session's token ``session_forbidden``, both followed by close 1008. ``session.end`` ends a
session for good.

Fault modes, for every connection or per connection (``faults[i]`` for the i-th upgrade, then
normal): ``http:NNN`` refuses the upgrade with that status, ``hang`` never answers the
handshake, ``silent`` never sends ``session.ready``, ``error:CODE`` (or ``error:CODE:PARAM``)
answers the first message with ``session.error`` CODE and closes (1011 for internal/server
errors, else 1008).
``resume="refuse"`` answers every resume with ``session_not_found``; ``resume="silent"`` never
answers one. ``AgentSession.drop()`` cuts the TCP connection without a close frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

KEY = "test-agent-key"
GRACE = 30.0  # seconds a dropped session stays resumable


@dataclass
class Resumable:
    """One agent session as the server keeps it, across connections."""

    session_id: str
    resume_token: str
    tool_calls: set[str] = field(default_factory=set)
    dropped_at: float | None = None  # monotonic; None while a connection holds it


@dataclass
class AgentSession:
    """One connection to the fake agent (a resumed session gets a new one)."""

    ws: ServerConnection
    received: list[dict[str, Any]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    tool_calls: set[str] = field(default_factory=set)
    authorization: str = ""
    fault: str | None = None
    session_id: str | None = None
    resumed: bool = False  # this connection resumed an earlier session
    _state: Resumable | None = None
    _new: asyncio.Event = field(default_factory=asyncio.Event)

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(orjson.dumps(message), text=True)

    def drop(self) -> None:
        """Cut the connection as a network failure would: no close frame, no session.ended."""
        transport = self.ws.transport
        transport.abort()

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
                 answer_end: bool = True, faults: Sequence[str | None] = (),
                 resume: str = "accept", resume_script: Script | None = None,
                 grace: float = GRACE) -> None:
        self.answer_end = answer_end
        self.script = script
        self.resume_script = resume_script
        self.echo = echo
        self.refuse_status = refuse_status
        self.send_ready = ready
        self.faults = list(faults)
        self.resume = resume
        self.grace = grace
        self.sessions: list[AgentSession] = []
        self.connections = 0
        self.upgrade_times: list[float] = []  # monotonic time of each upgrade request
        self.resumable: dict[str, Resumable] = {}
        self._ids = itertools.count(1)
        self._faults_by_conn: dict[int, str | None] = {}
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

    async def _process_request(self, conn: ServerConnection,
                               request: Request) -> Response | None:
        fault = self.faults[self.connections] if self.connections < len(self.faults) else None
        self.connections += 1
        self.upgrade_times.append(time.monotonic())
        self._faults_by_conn[id(conn)] = fault
        status_code = self.refuse_status
        if fault is not None and fault.startswith("http:"):
            status_code = int(fault.removeprefix("http:"))
        if status_code:
            status = HTTPStatus(status_code)
            return Response(status.value, status.phrase, Headers(), b"refused\n")
        if fault == "hang":
            await asyncio.sleep(3600)  # the relay's open timeout must give up first
        return None

    def _authorized(self, authorization: str) -> bool:
        if authorization == f"Bearer {KEY}":
            return True
        return any(authorization == f"Bearer {r.resume_token}" for r in self.resumable.values())

    async def _handler(self, ws: ServerConnection) -> None:
        session = AgentSession(ws)
        session.fault = self._faults_by_conn.pop(id(ws), None)
        self.sessions.append(session)
        self._new.set()
        script_task: asyncio.Task[None] | None = None
        try:
            session.authorization = (ws.request.headers.get("Authorization", "")
                                     if ws.request is not None else "")
            if not self._authorized(session.authorization):
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
                    if kind == "session.resume":
                        if not await self._resume(session, msg):
                            return
                        script = self.resume_script if session.resumed else None
                    else:
                        if not await self._first_update(session, msg):
                            return
                        script = self.script
                    if script is not None and session.ready.is_set():  # it speaks once ready
                        script_task = asyncio.create_task(script(session))
                elif kind == "session.resume":
                    await self._violation(session, "session.resume after the first message")
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
                    if session.session_id is not None:  # ended for good: never resumable
                        self.resumable.pop(session.session_id, None)
                        session._state = None
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
            if session._state is not None and not session.ended.is_set():
                session._state.dropped_at = time.monotonic()  # the grace window starts
            session.closed.set()
            session._new.set()

    async def _refuse(self, session: AgentSession, code: str, message: str,
                      close: int = 1008) -> bool:
        await session.send({"type": "session.error", "code": code, "message": message})
        await session.ws.close(close)
        return False

    async def _resume(self, session: AgentSession, msg: dict[str, Any]) -> bool:
        """``session.resume`` as the first message (agent-api.md §3.2)."""
        session_id = msg.get("session_id")
        if not isinstance(session_id, str) or not session_id:
            session.violations.append("session.resume without a session_id")
            return await self._refuse(session, "invalid_format", "session_id is required")
        if self.resume == "silent":
            return True  # never answers: the relay's resume timeout must give up
        state = self.resumable.get(session_id)
        if state is not None and state.dropped_at is not None and (
                time.monotonic() - state.dropped_at > self.grace):
            del self.resumable[session_id]
            state = None
        if self.resume == "refuse" or state is None:
            return await self._refuse(session, "session_not_found",
                                      "Session not found or grace window has expired")
        if session.authorization not in (f"Bearer {KEY}", f"Bearer {state.resume_token}"):
            return await self._refuse(session, "session_forbidden",
                                      "Session belongs to another credential")
        for other in self.sessions:  # a connection the server still holds is cut
            if other is not session and other._state is state and not other.closed.is_set():
                other._state = None
                other.ws.transport.abort()
        state.dropped_at = None
        state.resume_token = f"resume_{session_id}_{len(self.sessions)}"
        session._state, session.session_id, session.resumed = state, session_id, True
        session.tool_calls = state.tool_calls
        await session.send({"type": "session.ready", "session_id": session_id,
                            "resume_token": state.resume_token})
        session.ready.set()
        return True

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
            return await self._refuse(session, "invalid_config", "; ".join(problems))
        fault = session.fault or ""
        if fault.startswith("error:"):  # error:CODE or error:CODE:PARAM
            code, _, param = fault.removeprefix("error:").partition(":")
            close = 1011 if code in ("internal_error", "server_error") else 1008
            error = {"type": "session.error", "code": code, "message": f"fault injected: {code}"}
            if param:
                error["param"] = param
            await session.send(error)
            await session.ws.close(close)
            return False
        if self.send_ready and fault != "silent":
            n = next(self._ids)
            session_id = "sess_test" if n == 1 else f"sess_test_{n}"
            state = Resumable(session_id, f"resume_test_{n}" if n > 1 else "resume_test")
            state.tool_calls = session.tool_calls
            self.resumable[session_id] = state
            session._state, session.session_id = state, session_id
            await session.send({"type": "session.ready", "session_id": session_id,
                                "resume_token": state.resume_token})
            session.ready.set()
        return True

    async def _violation(self, session: AgentSession, problem: str) -> None:
        session.violations.append(problem)
        await session.send({"type": "session.error", "code": "invalid_format", "message": problem})
