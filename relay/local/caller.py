"""A phone call placed the way Twilio places it, for the simulator and the tests.

``SimulatedCall.dial`` posts the signed voice webhook, reads the ``<Stream>`` from the TwiML,
opens the media WebSocket with a signed upgrade and sends ``connected`` and ``start`` with the
``<Parameter>``s as ``customParameters``. Afterwards it behaves like Twilio's media server:
audio sent to the caller is "played" on a clock (``playback_speed`` times real time, or not at
all with 0), marks are echoed when the audio queued before them has played, and ``clear``
drops what is queued and echoes every pending mark at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from relay.security import twilio_signature

ULAW_BYTES_PER_SECOND = 8000


def new_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


@dataclass(slots=True)
class Stream:
    url: str
    parameters: dict[str, str]


def parse_stream(twiml: str) -> Stream:
    """The ``<Connect><Stream>`` of a TwiML document.

    Raises:
        ValueError: the document has no ``<Connect><Stream url>``.
    """
    root = ET.fromstring(twiml)
    node = root.find("./Connect/Stream")
    if node is None or not node.get("url"):
        raise ValueError("TwiML has no <Connect><Stream url=...>")
    params = {p.get("name", ""): p.get("value", "") for p in node.findall("Parameter")}
    return Stream(url=node.attrib["url"], parameters=params)


@dataclass(slots=True)
class Received:
    """A message Twilio received from the relay, with its arrival time (monotonic seconds)."""

    at: float
    message: dict[str, Any]


@dataclass
class SimulatedCall:
    ws: ClientConnection
    call_sid: str
    stream_sid: str
    stream: Stream
    webhook_ms: float
    playback_speed: float = 0.0
    received: list[Received] = field(default_factory=list)
    heard: bytearray = field(default_factory=bytearray)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    close_code: int | None = None
    posted_at: float = 0.0  # monotonic time the webhook was posted
    _seq: int = 1
    _chunk: int = 0
    _queued_until: float = 0.0
    _pending_marks: list[tuple[float, str]] = field(default_factory=list)
    _new: asyncio.Event = field(default_factory=asyncio.Event)
    _marks_changed: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    @contextlib.asynccontextmanager
    async def dial(
        cls,
        base_url: str,
        *,
        auth_token: str | None = None,
        caller: str = "+15550001111",
        called: str = "+15550002222",
        connect_to: str | None = None,
        playback_speed: float = 0.0,
        form: dict[str, str] | None = None,
        webhook_path: str = "/twiml",
        call_sid: str | None = None,
    ) -> AsyncIterator[SimulatedCall]:
        """Place a call; ``connect_to`` replaces the stream URL's host (e.g. behind a tunnel)."""
        call_sid, stream_sid = call_sid or new_sid("CA"), new_sid("MZ")
        params = {"CallSid": call_sid, "AccountSid": "AC" + "0" * 32, "From": caller,
                  "To": called, "CallStatus": "ringing", "Direction": "inbound",
                  "ApiVersion": "2010-04-01", **(form or {})}
        url = base_url.rstrip("/") + webhook_path
        headers = ({"X-Twilio-Signature": twilio_signature(auth_token, url, params)}
                   if auth_token else {})
        async with httpx.AsyncClient(timeout=10) as http:
            started = time.monotonic()
            response = await http.post(url, data=params, headers=headers)
        response.raise_for_status()
        webhook_ms = (time.monotonic() - started) * 1000
        stream = parse_stream(response.text)
        ws_headers = ({"x-twilio-signature": twilio_signature(auth_token, stream.url, {})}
                      if auth_token else {})
        target = stream.url
        if connect_to:
            parts = urlsplit(stream.url)
            target = connect_to.rstrip("/") + parts.path
        ws = await connect(target, additional_headers=ws_headers, compression=None, open_timeout=10)
        call = cls(ws, call_sid, stream_sid, stream, webhook_ms, playback_speed)
        call.posted_at = started
        tasks = [asyncio.create_task(call._read()), asyncio.create_task(call._echo_marks())]
        try:
            await call.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
            await call.send_start()
            yield call
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await ws.close()

    # ------------------------------------------------------------------ sending

    async def send(self, message: dict[str, Any]) -> None:
        if message.get("event") != "connected":
            message.setdefault("sequenceNumber", str(self._seq))
            message.setdefault("streamSid", self.stream_sid)
            self._seq += 1
        await self.ws.send(orjson.dumps(message), text=True)

    async def send_start(self, parameters: dict[str, str] | None = None) -> None:
        await self.send({"event": "start", "start": {
            "accountSid": "AC" + "0" * 32, "streamSid": self.stream_sid, "callSid": self.call_sid,
            "tracks": ["inbound"], "customParameters": parameters or self.stream.parameters,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}})

    async def send_media(self, payload: str) -> None:
        self._chunk += 1
        await self.send({"event": "media", "media": {
            "track": "inbound", "chunk": str(self._chunk), "timestamp": str(self._chunk * 20),
            "payload": payload}})

    async def send_dtmf(self, digit: str) -> None:
        await self.send({"event": "dtmf", "dtmf": {"track": "inbound_track", "digit": digit}})

    async def hang_up(self) -> None:
        await self.send({"event": "stop", "stop": {"accountSid": "AC" + "0" * 32,
                                                    "callSid": self.call_sid}})
        await self.ws.close()

    # ------------------------------------------------------------------ receiving

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                msg = orjson.loads(raw)
                now = time.monotonic()
                self.received.append(Received(now, msg))
                event = msg.get("event")
                if event == "media":
                    audio = msg["media"]["payload"]
                    self.heard += base64.b64decode(audio)
                    if self.playback_speed:
                        seconds = len(audio) * 3 / 4 / ULAW_BYTES_PER_SECOND / self.playback_speed
                        self._queued_until = max(self._queued_until, now) + seconds
                elif event == "mark":
                    self._pending_marks.append((self._queued_until, msg["mark"]["name"]))
                    self._marks_changed.set()
                elif event == "clear":
                    self._queued_until = now
                    self._pending_marks = [(now, name) for _, name in self._pending_marks]
                    self._marks_changed.set()
                self._new.set()
        except ConnectionClosed as exc:
            self.close_code = exc.rcvd.code if exc.rcvd else 1006
        else:
            self.close_code = self.ws.close_code
        finally:
            self.closed.set()
            self._new.set()

    async def _echo_marks(self) -> None:
        """Echo each mark once the audio queued before it has played."""
        while True:
            self._marks_changed.clear()
            if not self._pending_marks:
                await self._marks_changed.wait()
                continue
            delay = self._pending_marks[0][0] - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._marks_changed.wait()
                continue
            _, name = self._pending_marks.pop(0)
            await self._echo_mark(name)

    async def _echo_mark(self, name: str) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.send({"event": "mark", "mark": {"name": name}})

    def events(self, event: str) -> list[dict[str, Any]]:
        return [r.message for r in self.received if r.message.get("event") == event]

    async def wait_for(self, event: str, count: int = 1,
                       timeout: float = 5.0) -> list[dict[str, Any]]:
        """Wait until at least ``count`` messages of ``event`` arrived; returns them all."""
        async with asyncio.timeout(timeout):
            while len(found := self.events(event)) < count:
                if self.closed.is_set():
                    raise ConnectionError(f"stream closed before {count} {event!r} messages")
                self._new.clear()
                await self._new.wait()
        return found

    async def wait_closed(self, timeout: float = 5.0) -> int | None:
        async with asyncio.timeout(timeout):
            await self.closed.wait()
        return self.close_code
