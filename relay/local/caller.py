"""A phone call placed the way Twilio places it, for the simulator and the tests.

``SimulatedCall.dial`` posts the signed voice webhook, reads the ``<Stream>`` from the TwiML,
opens the media WebSocket with a signed upgrade and sends ``connected`` and ``start`` with the
``<Parameter>``s as ``customParameters``. Afterwards it behaves like Twilio's media server:
audio sent to the caller is "played" on a clock (``playback_speed`` times real time, or not at
all with 0), marks are echoed when the audio queued before them has played, and ``clear``
drops what is queued and echoes every pending mark at once.

When the relay closes the stream, Twilio ends the ``<Connect>`` and requests its ``action`` URL
for what the caller hears next; ``follow_action`` does the same (signed, with the parameters
Twilio sends) and ``NextStep`` says what that TwiML plays: words spoken, a dial, a hang-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from relay.security import twilio_signature

ULAW_BYTES_PER_SECOND = 8000


def new_sid(prefix: str) -> str:
    """A Twilio-style id: the two-letter prefix and 32 hex digits."""
    return prefix + secrets.token_hex(16)


@dataclass(slots=True)
class Stream:
    url: str
    parameters: dict[str, str]
    action: str | None = None  # the <Connect action> URL, requested when the stream ends


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
    connect = root.find("./Connect")
    action = connect.get("action") if connect is not None else None
    return Stream(url=node.attrib["url"], parameters=params, action=action or None)


@dataclass(frozen=True, slots=True)
class NextStep:
    """What the caller hears once the stream has ended, from the action's TwiML."""

    says: tuple[str, ...] = ()
    dials: str | None = None
    hangs_up: bool = False
    twiml: str = ""
    ms: float = 0.0  # from the stream's start to the action's answer
    streams: str | None = None  # the URL of a new <Connect><Stream> for the same call

    def describe(self) -> str:
        if self.streams:
            return f"Twilio streams the call again to {self.streams}"
        parts = [f"Twilio says {text!r}" for text in self.says]
        if self.dials:
            parts.append(f"dials {self.dials}")
        if self.hangs_up or not self.dials:
            parts.append("hangs up")
        return ", then ".join(parts)


def parse_next(twiml: str) -> NextStep:
    """The ``<Say>``, ``<Dial>`` and ``<Hangup/>`` of an action's answer, in document order."""
    root = ET.fromstring(twiml)
    says: list[str] = []
    dials: str | None = None
    for node in root:
        stream = node.find("./Stream") if node.tag == "Connect" else None
        if stream is not None:  # the call goes on in a new stream: nothing else plays
            return NextStep(tuple(says), dials, False, twiml, streams=stream.get("url"))
        if node.tag == "Say":
            says.append((node.text or "").strip())
        elif node.tag == "Dial" and dials is None:
            number = node.find("Number")
            dials = ((number.text if number is not None else node.text) or "").strip()
        elif node.tag == "Hangup":
            return NextStep(tuple(says), dials, True, twiml)
    return NextStep(tuple(says), dials, dials is None, twiml)


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
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    close_code: int | None = None
    posted_at: float = 0.0  # monotonic time the webhook was posted
    started_at: float = 0.0  # monotonic time ``start`` was sent
    auth_token: str | None = None
    form: dict[str, str] = field(default_factory=dict)  # what Twilio posts about this call
    connect_to: str | None = None
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
        http: httpx.AsyncClient | None = None,
    ) -> AsyncIterator[SimulatedCall]:
        """Place a call; ``connect_to`` replaces the stream URL's host (e.g. behind a tunnel).

        ``http``: a client to post the webhook with (many calls share one: making a client
        costs more than the webhook), else one of its own.
        """
        call_sid = call_sid or new_sid("CA")
        params = {"CallSid": call_sid, "AccountSid": "AC" + "0" * 32, "From": caller,
                  "To": called, "CallStatus": "ringing", "Direction": "inbound",
                  "ApiVersion": "2010-04-01", **(form or {})}
        url = base_url.rstrip("/") + webhook_path
        headers = ({"X-Twilio-Signature": twilio_signature(auth_token, url, params)}
                   if auth_token else {})
        async with contextlib.AsyncExitStack() as own:
            client: httpx.AsyncClient = (
                http if http is not None
                else await own.enter_async_context(httpx.AsyncClient(timeout=10)))
            started = time.monotonic()
            response = await client.post(url, data=params, headers=headers)
        response.raise_for_status()
        webhook_ms = (time.monotonic() - started) * 1000
        stream = parse_stream(response.text)
        async with cls._streaming(stream, call_sid, auth_token=auth_token, form=params,
                                  connect_to=connect_to, playback_speed=playback_speed,
                                  webhook_ms=webhook_ms, posted_at=started) as call:
            yield call

    @classmethod
    @contextlib.asynccontextmanager
    async def stream_again(cls, previous: SimulatedCall, twiml: str,
                           connect_to: str | None = None) -> AsyncIterator[SimulatedCall]:
        """What Twilio does when the action answers another ``<Connect><Stream>``: a new
        stream (a new ``streamSid``) of the same call, with that TwiML's ``<Parameter>``s."""
        async with cls._streaming(parse_stream(twiml), previous.call_sid,
                                  auth_token=previous.auth_token, form=previous.form,
                                  connect_to=connect_to or previous.connect_to,
                                  playback_speed=previous.playback_speed, webhook_ms=0.0,
                                  posted_at=time.monotonic()) as call:
            yield call

    @classmethod
    @contextlib.asynccontextmanager
    async def _streaming(cls, stream: Stream, call_sid: str, *, auth_token: str | None,
                         form: dict[str, str], connect_to: str | None, playback_speed: float,
                         webhook_ms: float, posted_at: float) -> AsyncIterator[SimulatedCall]:
        ws_headers = ({"x-twilio-signature": twilio_signature(auth_token, stream.url, {})}
                      if auth_token else {})
        target = stream.url
        if connect_to:
            parts = urlsplit(stream.url)
            target = connect_to.rstrip("/") + parts.path
        ws = await connect(target, additional_headers=ws_headers, compression=None, open_timeout=10)
        call = cls(ws, call_sid, new_sid("MZ"), stream, webhook_ms, playback_speed)
        call.posted_at = posted_at
        call.auth_token, call.form, call.connect_to = auth_token, form, connect_to
        tasks = [asyncio.create_task(call._read()), asyncio.create_task(call._echo_marks())]
        try:
            await call.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
            call.started_at = time.monotonic()
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

    async def follow_action(self, call_status: str = "in-progress") -> NextStep | None:
        """Request the ``<Connect action>`` as Twilio does once the stream has ended.

        None when the TwiML had no action (Twilio then hangs up). With ``connect_to``, the
        request goes to that host; the signature stays over the action URL, as Twilio signs it.
        """
        url = self.stream.action
        if url is None:
            return None
        params = {**self.form, "CallStatus": call_status}
        headers = ({"X-Twilio-Signature": twilio_signature(self.auth_token, url, params)}
                   if self.auth_token else {})
        target = url
        if self.connect_to:
            base = self.connect_to.rstrip("/").replace("wss://", "https://", 1).replace(
                "ws://", "http://", 1)
            target = base + urlsplit(url).path
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.post(target, data=params, headers=headers)
        response.raise_for_status()
        step = parse_next(response.text)
        return replace(step, ms=(time.monotonic() - self.started_at) * 1000)

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
