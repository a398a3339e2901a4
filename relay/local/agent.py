"""The built-in local agent: the Voice Agent API's protocol, served by the relay itself.

With no ``ASSEMBLYAI_API_KEY`` the relay dials its own ``/local-agent`` endpoint over the same
code path it uses for AssemblyAI, so a call works end to end without an account. There is no
speech recognition or synthesis: the agent is the phone company's echo test.

* A greeting (if the session has one) is a rising three-note chime, with the greeting text
  as its transcript.
* Caller speech is detected by energy (``relay.local.audio.Vad``). When the caller stops, the agent
  plays back exactly what it heard (up to 10 s). Talking over a reply interrupts it.
* Keypad digits arrive as ``reply.create`` and call the session's tools (``relay.local.keypad``); a
  result is answered with a rising two-tone, an error with a low buzz.

It follows the protocol strictly (agent-api.md §2–§4): nothing before the first
``session.update``, ``audio/pcmu`` both ways, ``session.error`` codes, ``session.ended`` then
close 1000. The session itself is ``relay.local_session.LocalSession`` (sans-I/O); this module is
the thin Starlette endpoint that reads, writes and keeps the audio pace.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect

from relay.local.session import LocalSession, Pacing

__all__ = ["LocalSession", "Pacing", "local_agent_endpoint"]

log = logging.getLogger("relay.local.agent")


def local_agent_endpoint(
    api_key: str, *, pacing: Pacing | None = None,
) -> Callable[[WebSocket], Awaitable[None]]:
    """The ``/local-agent`` WebSocket endpoint, for a ``WebSocketRoute``.

    Upgrades without ``Authorization: Bearer <api_key>`` are refused before ``accept`` (HTTP
    403), so only the relay itself can open sessions.
    """
    expected = f"Bearer {api_key}".encode()

    async def local_agent(websocket: WebSocket) -> None:
        given = websocket.headers.get("authorization", "").encode()
        if not api_key or not hmac.compare_digest(given, expected):
            log.warning("local agent: refused a connection without the relay's key")
            await websocket.close(code=1008)
            return
        await websocket.accept()
        agent = LocalSession(pacing=pacing)
        try:
            await _serve(websocket, agent)
        except WebSocketDisconnect:
            pass
        log.info("local agent: session %s over", agent.session_id)

    return local_agent


async def _serve(websocket: WebSocket, agent: LocalSession) -> None:
    """One reader and writer: wait for a message or the next audio deadline, whichever first.

    A single task sends everything, in the order the agent produced it; cancelling the wait
    for a message at a deadline loses nothing (uvicorn queues received messages).
    """
    loop = asyncio.get_running_loop()

    async def send(messages: list[dict[str, Any]]) -> None:
        for message in messages:
            await websocket.send_text(orjson.dumps(message).decode())

    while agent.close_code is None:
        await send(agent.poll(loop.time()))
        try:
            async with asyncio.timeout_at(agent.next_wakeup()):
                message = await websocket.receive()
        except TimeoutError:
            continue
        if message["type"] == "websocket.disconnect":
            return
        configured = agent.config is not None
        out = agent.receive_text(message.get("text"), loop.time())
        if not configured and agent.config is not None:
            log.info("local agent: session %s ready; keypad %s", agent.session_id,
                     agent.keypad.describe())
        await send(out)
    await websocket.close(agent.close_code)
