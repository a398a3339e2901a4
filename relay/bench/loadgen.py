"""The load generator: many simulated Twilio calls, each streaming a 20 ms frame at real time.

Every call is set up as Twilio does it: a signed ``POST /twiml`` voice webhook, then a signed
WebSocket upgrade to the ``<Stream>`` URL of the TwiML answer, ``connected``, ``start`` (with
all ``<Parameter>`` values as ``customParameters``), ``media`` frames, ``stop``. In floor mode the
webhook is skipped and the stream URL is given. Marks are echoed back as Twilio does.

One timer drives all calls: every 1 ms it sends the next frame of the calls whose phase is that
slot, so each call sends every 20 ms and the calls are spread evenly over the period. Echoed
frames are matched to sent ones by the id they carry (``frames.py``) and counted as lost,
duplicated, reordered or altered; the relay drops frames until its agent session is ready, so a
call's first echoed frame marks where its accounting starts.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from twilio.request_validator import RequestValidator
from websockets.exceptions import InvalidURI
from websockets.uri import WebSocketURI, parse_uri

from relay.bench import frames
from relay.bench.ws_endpoint import ClientEndpoint

PERIOD = 0.020
SLOTS = 20
FROM_NUMBER = "+15005550006"
TO_NUMBER = "+15005550001"
_MEDIA = (
    b'{"event":"media","sequenceNumber":"%d","media":{"track":"inbound","chunk":"%d",'
    b'"timestamp":"%d","payload":"%b"},"streamSid":"%b"}'
)
_perf_ns = time.perf_counter_ns
_loads = orjson.loads


def sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


@dataclass
class Tally:
    """Counters shared by all calls of one level."""

    run_tag: int = field(default_factory=lambda: secrets.randbelow(65536))
    echoes: int = 0
    duplicated: int = 0
    reordered: int = 0
    altered: int = 0
    misrouted: int = 0
    marks: int = 0
    clears: int = 0
    other: int = 0
    window: tuple[int, int] = (0, 0)
    latencies_ns: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(text)


@dataclass
class Target:
    """Where calls go: a relay with a Twilio webhook, or a bare stream URL (the floor)."""

    base_url: str
    twiml: bool
    auth_token: str
    account_sid: str

    async def stream(self, client: httpx.AsyncClient, call_sid: str) -> tuple[str, dict[str, str]]:
        """The stream URL and custom parameters for one call, from the TwiML if there is one."""
        if not self.twiml:
            return self.base_url.replace("http", "ws", 1) + "/media", {}
        params = {
            "CallSid": call_sid, "AccountSid": self.account_sid, "From": FROM_NUMBER,
            "To": TO_NUMBER, "CallStatus": "ringing", "Direction": "inbound",
            "ApiVersion": "2010-04-01",
        }
        url = self.base_url + "/twiml"
        signature = RequestValidator(self.auth_token).compute_signature(url, params)
        response = await client.post(url, data=params, headers={"X-Twilio-Signature": signature})
        response.raise_for_status()
        stream = ET.fromstring(response.text).find("./Connect/Stream")
        if stream is None or not stream.get("url"):
            raise ValueError(f"no <Connect><Stream url> in TwiML: {response.text[:200]}")
        custom = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
        return stream.get("url", ""), custom


class Call(ClientEndpoint):
    """One simulated Twilio media stream."""

    def __init__(self, idx: int, uri: WebSocketURI, headers: dict[str, str], tally: Tally,
                 ) -> None:
        super().__init__(uri, headers)
        self.idx = idx
        self.tally = tally
        self.stream_sid = sid("MZ")
        self._sid = self.stream_sid.encode()
        self.call_sid = ""
        self.account_sid = ""
        self.msg_seq = 0
        self.streaming = False
        self.probe = False
        self.sent_ns: list[int] = []
        self.recv = bytearray()
        self.unique = 0
        self.max_seq = -1
        self.min_seq = -1
        self.start_ns = 0
        self.first_media: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def begin(self, call_sid: str, account_sid: str, custom: dict[str, str]) -> None:
        """``connected`` then ``start``; media may follow at once."""
        self.call_sid, self.account_sid = call_sid, account_sid
        self.send(b'{"event":"connected","protocol":"Call","version":"1.0.0"}')
        self.msg_seq = 1
        self.start_ns = _perf_ns()
        self.send(orjson.dumps({
            "event": "start", "sequenceNumber": "1",
            "start": {
                "accountSid": account_sid, "streamSid": self.stream_sid, "callSid": call_sid,
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                "customParameters": custom,
            },
            "streamSid": self.stream_sid,
        }))

    def send_media(self) -> None:
        seq = len(self.sent_ns)
        self.msg_seq += 1
        data = _MEDIA % (self.msg_seq, seq + 1, seq * 20,
                         frames.payload(self.idx, seq, self.tally.run_tag), self._sid)
        self.sent_ns.append(_perf_ns())
        self.recv.append(0)
        self.send(data)

    def hang_up(self) -> None:
        """``stop`` then the closing handshake, as Twilio does when the caller hangs up."""
        self.streaming = False
        self.msg_seq += 1
        self.send(orjson.dumps({
            "event": "stop", "sequenceNumber": str(self.msg_seq),
            "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
            "streamSid": self.stream_sid,
        }))
        self.close(1000)

    def on_message(self, message: bytes) -> None:
        now = _perf_ns()
        tally = self.tally
        try:
            msg = _loads(message)
            event = msg["event"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            tally.other += 1
            tally.problem(f"call {self.idx}: unreadable message {message[:80]!r}")
            return
        if event == "media":
            self._media(msg, now)
        elif event == "mark":
            tally.marks += 1
            self.msg_seq += 1
            self.send(orjson.dumps({
                "event": "mark", "sequenceNumber": str(self.msg_seq),
                "streamSid": self.stream_sid, "mark": msg.get("mark") or {},
            }))
        elif event == "clear":
            tally.clears += 1
        else:
            tally.other += 1
            tally.problem(f"call {self.idx}: unexpected event {str(msg)[:80]}")

    def _media(self, msg: dict[str, Any], now: int) -> None:
        tally = self.tally
        if not self.first_media.done():
            self.first_media.set_result(now)
        if self.probe:
            return
        try:
            text = msg["media"]["payload"]
        except (KeyError, TypeError):
            text = None
        if msg.get("streamSid") != self.stream_sid or not isinstance(text, str):
            tally.altered += 1
            tally.problem(f"call {self.idx}: bad media message {str(msg)[:100]}")
            return
        found = frames.identify(text, tally.run_tag)
        if found is None or found[1] >= len(self.sent_ns):
            tally.altered += 1
            tally.problem(f"call {self.idx}: payload not sent by this run: {text[:24]}…")
            return
        call, seq = found
        if call != self.idx:
            tally.misrouted += 1
            tally.altered += 1
            return
        recv = self.recv
        if recv[seq]:
            tally.duplicated += 1
            return
        recv[seq] = 1
        self.unique += 1
        tally.echoes += 1
        if seq < self.max_seq:
            tally.reordered += 1
        else:
            self.max_seq = seq
        if self.min_seq < 0 or seq < self.min_seq:
            self.min_seq = seq
        sent = self.sent_ns[seq]
        t0, t1 = tally.window
        if t0 <= sent < t1:
            tally.latencies_ns.append(now - sent)

    @property
    def outstanding(self) -> int:
        """Frames sent since the first echo that have not come back (yet)."""
        if self.min_seq < 0:
            return 0
        return len(self.sent_ns) - self.min_seq - self.unique

    @property
    def before_ready(self) -> int:
        """Frames the relay dropped because its agent session was not ready yet."""
        return self.min_seq if self.min_seq >= 0 else len(self.sent_ns)


class Ticker:
    """Sends one frame per streaming call every 20 ms, calls spread over ``SLOTS`` phases."""

    def __init__(self) -> None:
        self.slots: list[list[Call]] = [[] for _ in range(SLOTS)]
        self._loop = asyncio.get_running_loop()
        self._handle: asyncio.TimerHandle | None = None
        self._t0 = 0.0
        self._n = 0
        self.lag_max = 0.0

    def add(self, call: Call) -> None:
        self.slots[call.idx % SLOTS].append(call)
        call.streaming = True

    def start(self) -> None:
        self._t0 = self._loop.time()
        self._n = 0
        self._handle = self._loop.call_at(self._t0, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        for call in self.slots[self._n % SLOTS]:
            if call.streaming and call.open:
                call.send_media()
        self._n += 1
        due = self._t0 + self._n * (PERIOD / SLOTS)
        lag = self._loop.time() - due
        if lag > self.lag_max:
            self.lag_max = lag
        self._handle = self._loop.call_at(due, self._tick)


class LoadGenerator:
    """Opens, streams and hangs up the calls of one level."""

    def __init__(self, target: Target, tally: Tally, *, setup_concurrency: int = 16,
                 setup_timeout: float = 10.0) -> None:
        self.target = target
        self.tally = tally
        self.calls: list[Call] = []
        self.failures: list[str] = []
        self.ticker = Ticker()
        self._sem = asyncio.Semaphore(setup_concurrency)
        self._timeout = setup_timeout

    async def open_call(self, client: httpx.AsyncClient, idx: int, *, stream: bool = True,
                        ) -> Call | None:
        """Set up one call; with ``stream`` it starts sending frames right after ``start``."""
        loop = asyncio.get_running_loop()
        call_sid = sid("CA")
        async with self._sem:
            try:
                async with asyncio.timeout(self._timeout):
                    url, custom = await self.target.stream(client, call_sid)
                    headers = {}
                    if self.target.twiml:
                        headers["x-twilio-signature"] = RequestValidator(
                            self.target.auth_token).compute_signature(url, {})
                    uri = parse_uri(url)
                    _, call = await loop.create_connection(
                        lambda: Call(idx, uri, headers, self.tally), uri.host, uri.port,
                    )
                    await call.opened
            except (OSError, httpx.HTTPError, ValueError, InvalidURI, ET.ParseError,
                    TimeoutError) as exc:
                self.failures.append(f"call {idx}: {type(exc).__name__}: {exc}"[:300])
                return None
        call.begin(call_sid, self.target.account_sid, custom)
        self.calls.append(call)
        if stream:
            self.ticker.add(call)
        else:
            call.probe = True
        return call

    async def open_calls(self, n: int) -> None:
        async with httpx.AsyncClient(timeout=self._timeout,
                                     limits=httpx.Limits(max_connections=32)) as client:
            await asyncio.gather(*(self.open_call(client, i) for i in range(n)))

    async def wait_all_echoing(self, within: float) -> int:
        """Wait until every open call got an echo; return how many did not in time."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if all(c.min_seq >= 0 or not c.open for c in self.calls):
                break
            await asyncio.sleep(0.05)
        return sum(1 for c in self.calls if c.min_seq < 0)

    def stop_streaming(self) -> None:
        self.ticker.stop()
        for call in self.calls:
            call.streaming = False

    async def drain(self, quiet: float = 1.0, limit: float = 10.0) -> float:
        """Wait for late echoes: until none is missing, or none arrived for ``quiet`` seconds."""
        start = last_progress = time.monotonic()
        seen = self.tally.echoes
        while time.monotonic() - start < limit:
            if sum(c.outstanding for c in self.calls) == 0:
                break
            await asyncio.sleep(0.05)
            if self.tally.echoes != seen:
                seen, last_progress = self.tally.echoes, time.monotonic()
            elif time.monotonic() - last_progress > quiet:
                break
        return time.monotonic() - start

    async def hang_up(self, within: float = 5.0) -> int:
        """Hang up every call; return how many sockets had to be aborted."""
        for call in self.calls:
            if call.open:
                call.hang_up()
        deadline = time.monotonic() + within
        pending = [c for c in self.calls if not c.closed.done()]
        if pending:
            await asyncio.wait([c.closed for c in pending],
                               timeout=max(0.1, deadline - time.monotonic()))
        stuck = [c for c in self.calls if not c.closed.done()]
        for call in stuck:
            call.abort()
        return len(stuck)

    def accounting(self) -> dict[str, int]:
        """Loss over every frame sent after each call's first echo."""
        lost = sum(c.outstanding for c in self.calls)
        return {
            "calls_open": len(self.calls),
            "calls_failed": len(self.failures),
            "calls_silent": sum(1 for c in self.calls if c.min_seq < 0),
            "frames_sent": sum(len(c.sent_ns) for c in self.calls),
            "frames_before_ready": sum(c.before_ready for c in self.calls),
            "frames_checked": sum(len(c.sent_ns) - c.min_seq for c in self.calls if c.min_seq >= 0),
            "frames_echoed": self.tally.echoes,
            "lost": lost,
            "duplicated": self.tally.duplicated,
            "reordered": self.tally.reordered,
            "altered": self.tally.altered,
            "misrouted": self.tally.misrouted,
            "marks": self.tally.marks,
            "clears": self.tally.clears,
            "other_messages": self.tally.other,
        }


async def start_of_speech(target: Target, calls: int, within: float = 5.0,
                          ) -> tuple[list[float], list[str]]:
    """Per call, ms from sending ``start`` to the first ``media`` (the agent greets first)."""
    tally = Tally()
    gen = LoadGenerator(target, tally, setup_timeout=within)
    results: list[float] = []
    async with httpx.AsyncClient(timeout=within) as client:
        for i in range(calls):
            call = await gen.open_call(client, i, stream=False)
            if call is None:
                continue
            try:
                first = await asyncio.wait_for(asyncio.shield(call.first_media), within)
                results.append((first - call.start_ns) / 1e6)
            except TimeoutError:
                gen.failures.append(f"call {i}: no media within {within} s of start")
            call.hang_up()
            await call.wait_closed(within)
    return results, gen.failures + tally.problems
