"""The floor: the barest Twilio-to-agent relay, to tell the relay's own cost from the wire's.

``python -m relay.bench.floor --port 9000 --agent-url ws://127.0.0.1:9001``. No webhook, no
signatures, no features: it reads ``connected`` and ``start``, opens the agent socket, sends
``session.update``, waits for ``session.ready``, then copies ``media.payload`` to ``input.audio``
and ``reply.audio.data`` to ``media`` until either side ends. ``GET /healthz`` answers 200.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from collections.abc import Callable, Coroutine
from http import HTTPStatus
from typing import Any

import orjson
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

UPDATE = orjson.dumps({"type": "session.update", "session": {
    "input": {"format": {"encoding": "audio/pcmu"}},
    "output": {"format": {"encoding": "audio/pcmu"}}}}).decode()


def health(connection: ServerConnection, request: Request) -> Response | None:
    if request.path == "/healthz":
        return connection.respond(HTTPStatus.OK, "ok\n")
    return None


async def bridge(twilio: ServerConnection, agent_url: str, key: str) -> None:
    loads, dumps = orjson.loads, orjson.dumps
    while (start := loads(await twilio.recv(decode=False))).get("event") != "start":
        pass
    sid = start["streamSid"]
    async with connect(agent_url, additional_headers={"Authorization": f"Bearer {key}"},
                       compression=None) as agent:
        await agent.send(UPDATE)
        await agent.recv(decode=False)  # session.ready

        async def up() -> None:
            while (msg := loads(await twilio.recv(decode=False))).get("event") != "stop":
                if msg.get("event") == "media":
                    await agent.send(dumps({"type": "input.audio",
                                            "audio": msg["media"]["payload"]}), text=True)

        async def down() -> None:
            while True:
                msg = loads(await agent.recv(decode=False))
                if msg.get("type") == "reply.audio":
                    await twilio.send(dumps({"event": "media", "streamSid": sid,
                                             "media": {"payload": msg["data"]}}), text=True)

        tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await agent.send('{"type":"session.end"}')


async def main(host: str, port: int, agent_url: str) -> None:
    key = os.environ.get("ASSEMBLYAI_API_KEY", "bench")

    async def handler(twilio: ServerConnection) -> None:
        with contextlib.suppress(Exception):
            await bridge(twilio, agent_url, key)

    async with serve(handler, host, port, compression=None, process_request=health):
        await asyncio.Future()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m relay.bench.floor", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--agent-url", required=True)
    args = parser.parse_args()
    run: Callable[[Coroutine[Any, Any, None]], None] = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        run = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        run(main(args.host, args.port, args.agent_url))
