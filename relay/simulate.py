"""Place a phone call into a running relay from the terminal: ``python -m relay.simulate``.

The call is placed exactly as Twilio places it (``relay.local.caller``): a signed ``POST /twiml``,
the ``<Stream>`` of its TwiML, a signed WebSocket upgrade, ``connected`` and ``start`` with the
``<Parameter>``s, then one 160-byte μ-law frame every 20 ms, paced on a monotonic clock. Audio
sent to the caller is played on that clock too: marks are echoed once it has played and
``clear`` drops what is still queued. The webhook URL carries ``?observe=1``, so the relay also
reports the call's events on the stream (agent ready, transcripts, tool calls, why it ended).

The caller plays a WAV file (any PCM rate or channel count; converted to μ-law 8 kHz), or a
built-in voice-like sound, presses keys when told, and hangs up once its audio is over and the
agent has gone quiet. When the relay ends the stream, the simulator requests the ``<Connect
action>`` URL as Twilio would and shows what the caller hears next (the fallback's words, a dial
to a number, a hang-up); when that is a new stream of the same call (the relay lost the first
one), the simulator opens it as Twilio does and the caller goes on where its audio was, so the
timeline shows the gap a caller hears when an instance dies mid-call. The timeline counts
milliseconds from the moment the webhook was posted; the recording of what the caller heard
starts when the stream started. It works against any relay: pass a deployed server's
``PUBLIC_URL`` and its ``TWILIO_AUTH_TOKEN``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import math
import os
import re
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from dotenv import dotenv_values, find_dotenv
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from relay.local.audio import (
    FRAME_BYTES,
    FRAME_MS,
    RATE,
    SILENCE_BYTE,
    read_wav_as_ulaw8k,
    silence,
    ulaw_encode,
    write_ulaw_wav,
)
from relay.local.caller import NextStep, SimulatedCall

WEBHOOK_PATH = "/twiml?observe=1"
FRAME_SECONDS = FRAME_MS / 1000
DTMF_KEYS = "0123456789*#"
DEFAULT_RECORDING = "caller-heard.wav"
DEFAULT_TAIL = 1.5
SAFETY_LIMIT = 60.0  # without --duration: seconds after the caller's audio and keys
CLOSE_WAIT = 2.0
DETAIL_MAX = 110


class SimulationError(Exception):
    """The call could not be placed; the message is one line for the terminal."""


# ---------------------------------------------------------------------- the caller's audio

# Formants of an open vowel, roughly /a/: (centre Hz, half bandwidth Hz, strength).
_VOWEL = ((730.0, 90.0, 1.0), (1090.0, 110.0, 0.6), (2440.0, 170.0, 0.25))


def speech_like(ms: int, *, pitch: float = 130.0, amplitude: float = 0.4,
                syllables_per_second: float = 4.0) -> bytes:
    """A voice-like μ-law sound: a vowel's harmonics under a syllable-rate envelope.

    The pitch wanders and falls a little, as in a spoken sentence. An energy VAD takes it for
    speech; it is deterministic, so tests can find its echo byte for byte.
    """
    n = RATE * ms // 1000
    harmonics = range(1, int(3400 // pitch) + 1)
    gains = [sum(s / (1 + ((k * pitch - fc) / bw) ** 2) for fc, bw, s in _VOWEL) / math.sqrt(k)
             for k in harmonics]
    fade = RATE // 50
    values: list[float] = []
    phase = 0.0
    for i in range(n):
        t = i / RATE
        f0 = pitch * (1 + 0.05 * math.sin(2 * math.pi * 0.9 * t)) * (1 - 0.12 * i / n)
        phase += 2 * math.pi * f0 / RATE
        syllable = math.sin(math.pi * ((t * syllables_per_second) % 1.0)) ** 2
        envelope = (0.25 + 0.75 * syllable) * min(1.0, i / fade, (n - 1 - i) / fade)
        values.append(envelope * sum(g * math.sin(k * phase) for k, g in zip(
            harmonics, gains, strict=True)))
    peak = max(map(abs, values), default=0.0) or 1.0
    return ulaw_encode(round(v / peak * amplitude * 32767) for v in values)


def default_caller(wait: float = 1.5, speech: float = 1.2, after: float = 3.0) -> bytes:
    """The built-in caller: silence while the greeting plays, a voice-like turn, then silence
    long enough to hear the reply (the local agent's echo)."""
    return silence(round(wait * 1000)) + speech_like(round(speech * 1000)) + silence(
        round(after * 1000))


# ---------------------------------------------------------------------- options and result

@dataclass(slots=True)
class Options:
    url: str = "http://localhost:8080"
    auth_token: str | None = None
    connect_to: str | None = None
    audio: bytes | None = None  # the caller's μ-law 8 kHz audio; None: ``default_caller()``
    audio_name: str = "the built-in caller"
    dtmf: list[tuple[float, str]] = field(default_factory=list)  # (seconds, key)
    duration: float | None = None
    tail: float = DEFAULT_TAIL
    record: Path | None = None


@dataclass(frozen=True, slots=True)
class Event:
    ms: float  # since the webhook was posted
    kind: str  # a relay.log kind, or one of the simulator's own (webhook, stream, clear, ...)
    label: str
    detail: str = ""

    def line(self) -> str:
        detail = self.detail if len(self.detail) <= DETAIL_MAX else (
            self.detail[:DETAIL_MAX - 1] + "…")
        return f"{self.ms:>8.0f}  {self.label:<18} {detail}".rstrip()


@dataclass(slots=True)
class Result:
    call_sid: str
    events: list[Event]
    hung_up_by: str  # "caller" or "relay"
    reason: str
    close_code: int | None
    error: str | None  # set when the relay closed the stream with an error code
    sent_seconds: float
    heard: bytes  # what the caller heard, on the stream's clock (silence between replies)
    received: bytes  # every byte of agent audio that arrived, in order
    heard_seconds: float
    cleared_seconds: float
    marks: int
    recording: Path | None
    next_step: NextStep | None = None  # what the <Connect action> plays once the stream ended

    @property
    def ok(self) -> bool:
        return self.error is None

    def kinds(self) -> list[str]:
        return [event.kind for event in self.events]


# ---------------------------------------------------------------------- timeline

class Timeline:
    """Events in time order, each printed once nothing earlier can still arrive."""

    def __init__(self, origin: float, out: Callable[[str], None]) -> None:
        self.origin = origin
        self.out = out
        self.events: list[Event] = []
        self._pending: list[tuple[float, Event]] = []

    def add(self, at: float, kind: str, label: str, detail: str = "") -> None:
        self._pending.append((at, Event((at - self.origin) * 1000, kind, label, detail)))

    def flush(self, upto: float = math.inf) -> None:
        due = sorted((p for p in self._pending if p[0] <= upto), key=lambda p: p[0])
        self._pending = [p for p in self._pending if p[0] > upto]
        for _, event in due:
            self.events.append(event)
            self.out(event.line())


class Earpiece:
    """The agent's audio as the phone plays it: queued on the stream's clock, cut by ``clear``."""

    def __init__(self) -> None:
        self.audio = bytearray()  # from the stream's start to the end of the queued audio
        self.received = bytearray()
        self.cleared = 0
        self.unplayed = 0

    @property
    def end(self) -> float:
        """Stream seconds at which everything queued has played."""
        return len(self.audio) / RATE

    def play(self, t: float, data: bytes) -> None:
        gap = round(t * RATE) - len(self.audio)
        if gap > 0:
            self.audio += bytes([SILENCE_BYTE]) * gap
        self.audio += data
        self.received += data

    def _cut(self, t: float) -> int:
        pos = max(0, round(t * RATE))
        dropped = max(0, len(self.audio) - pos)
        del self.audio[pos:]
        return dropped

    def clear(self, t: float) -> float:
        dropped = self._cut(t)
        self.cleared += dropped
        return dropped / RATE

    def hang_up(self, t: float) -> bytes:
        """What was heard until ``t``: later audio never played."""
        self.unplayed += self._cut(t)
        self.play(t, b"")
        return bytes(self.audio)

    @property
    def heard_seconds(self) -> float:
        return (len(self.received) - self.cleared - self.unplayed) / RATE


# How each relay.log kind is shown: a label, and a rewrite of the relay's text.
_RELAY_EVENTS: dict[str, tuple[str, str, str]] = {
    "agent.ready": ("agent ready", r"^agent ready \((.*)\)$", r"\1"),
    "agent.fault": ("agent fault", r"^agent ", ""),
    "audio.caller": ("caller audio in", r"^.*$", "first caller audio forwarded to the agent"),
    "barge-in": ("barge-in", r"^.*$", "the caller started speaking"),
    "reply.heard": ("reply heard", r"^reply (.*) heard$", r"\1 played to the end (mark echoed)"),
    "reply.interrupted": ("reply interrupted", r"^reply (.*) interrupted$", r"\1"),
    "transcript.user": ("caller said", r"^user: ", ""),
    "transcript.agent": ("agent said", r"^agent(?: (\(interrupted\)))?: (.*)$", r"\2 \1"),
    "tool.call": ("tool call", r"^tool call ", ""),
    "tool.result": ("tool result", r"^tool ", ""),
    "dtmf": ("key received", r"^caller pressed (.*)$", r"\1, passed to the agent"),
}


class Listener:
    """Follows what the relay sends: the caller's earpiece and the events worth a line."""

    def __init__(self, call: SimulatedCall, timeline: Timeline, start: float) -> None:
        self.call = call
        self.timeline = timeline
        self.start = start
        self.earpiece = Earpiece()
        self.last_activity = start  # the relay's last message, or the caller's last key
        self.marks = 0
        self.frames_sent = 0
        self.end_reason: str | None = None
        self.end_at: float | None = None
        self._seen = 0

    def follow(self, call: SimulatedCall) -> None:
        """The call goes on in a new stream: listen to it, on the same earpiece and clock."""
        self.call, self._seen = call, 0
        self.end_reason = self.end_at = None

    def poll(self) -> None:
        received = self.call.received
        while self._seen < len(received):
            item = received[self._seen]
            self._seen += 1
            self._handle(item.at, item.message)

    def quiet_for(self, now: float) -> float:
        """Seconds since the relay last sent anything, was last heard, or a key was pressed."""
        return now - max(self.last_activity, self.start + self.earpiece.end)

    def _handle(self, at: float, msg: dict[str, object]) -> None:
        self.last_activity = max(self.last_activity, at)
        t = at - self.start
        event = msg.get("event")
        if event == "media":
            body = msg.get("media")
            payload = body.get("payload", "") if isinstance(body, dict) else ""
            if not self.earpiece.received:
                self.timeline.add(at, "audio.first", "first agent audio",
                                  "the caller starts hearing the agent")
            self.earpiece.play(t, base64.b64decode(payload))
        elif event == "clear":
            dropped = self.earpiece.clear(t)
            self.timeline.add(at, "clear", "clear", f"{dropped * 1000:.0f} ms of queued agent "
                              "audio dropped" if dropped else "nothing was queued")
        elif event == "mark":
            self.marks += 1
        elif event == "relay.log":
            self._relay_event(at, str(msg.get("kind")), str(msg.get("text", "")))

    def _relay_event(self, at: float, kind: str, text: str) -> None:
        if kind == "call.end":
            self.end_reason, self.end_at = text, at
            return
        if kind == "audio.agent":
            return  # the first media message already said so
        label, pattern, replacement = _RELAY_EVENTS.get(kind, (kind, "$^", ""))
        detail = re.sub(pattern, replacement, text, count=1).strip()
        self.timeline.add(at, kind, label, detail)


# ---------------------------------------------------------------------- the call

async def simulate(options: Options, *, out: Callable[[str], None] = print) -> Result:
    """Place one call, print its timeline through ``out``, and return what happened.

    Raises:
        SimulationError: the relay is unreachable, or refused the webhook or the stream.
    """
    audio = default_caller() if options.audio is None else options.audio
    url = options.url.rstrip("/")
    signed = "signed" if options.auth_token else "unsigned"
    out(f"Calling {url}{WEBHOOK_PATH} as Twilio would ({signed}); caller audio: "
        f"{options.audio_name} ({len(audio) / RATE:.1f} s)")
    async with contextlib.AsyncExitStack() as stack:
        try:
            call = await stack.enter_async_context(SimulatedCall.dial(
                url, auth_token=options.auth_token, connect_to=options.connect_to,
                playback_speed=1.0, webhook_path=WEBHOOK_PATH))
        except Exception as exc:  # every way of failing becomes one line
            raise SimulationError(_describe_failure(exc, url, options)) from None
        start = time.monotonic()
        timeline = Timeline(call.posted_at, out)
        out(f"{'ms':>8}  {'event':<18} detail")
        params = ", ".join(name for name in call.stream.parameters if name != "token")
        timeline.add(call.posted_at + call.webhook_ms / 1000, "webhook", "webhook answered",
                     f"in {call.webhook_ms:.0f} ms: <Stream> {call.stream.url} ({params})")
        timeline.add(start, "stream", "stream started",
                     f"connected + start sent (call {call.call_sid})")
        listener = Listener(call, timeline, start)
        posted_at = call.posted_at
        interrupted = False
        sent = 0  # frames of the caller's audio sent, over every stream of the call
        keys = sorted(options.dtmf)  # the keys not pressed yet, over every stream
        while True:
            try:
                hung_up_by, reason, sent = await _talk(call, listener, timeline, options,
                                                       audio, keys, sent)
            except asyncio.CancelledError:  # Ctrl-C: hang up, keep the recording, then stop
                interrupted = True
                hung_up_by, reason = "caller", "interrupted"
            ended, code, reason, error = await _stream_ended(call, listener, hung_up_by,
                                                             reason)
            timeline.add(ended, "hang-up", "stream ended" if call.stream.action else "hang-up",
                         f"by the {hung_up_by}: {reason}")
            next_step = None
            if hung_up_by == "relay" and call.stream.action:
                next_step = await _next_step(call, timeline)
            if next_step is None or not next_step.streams:
                break
            try:  # the same call in a new stream, as Twilio opens it
                call = await stack.enter_async_context(
                    SimulatedCall.stream_again(call, next_step.twiml))
            except Exception as exc:
                raise SimulationError(_describe_failure(exc, url, options)) from None
            listener.follow(call)
            timeline.add(call.started_at, "stream", "stream again",
                         f"restream {call.stream.parameters.get('restream', '?')}: connected "
                         "+ start sent; the caller's audio goes on")
        timeline.flush()
        ear = listener.earpiece
        heard = ear.hang_up(ended - start)
        if options.record is not None:
            write_ulaw_wav(options.record, heard)
        result = Result(
            call_sid=call.call_sid, events=timeline.events, hung_up_by=hung_up_by,
            reason=reason, close_code=code, error=error,
            sent_seconds=listener.frames_sent * FRAME_SECONDS, heard=heard,
            received=bytes(ear.received), heard_seconds=ear.heard_seconds,
            cleared_seconds=ear.cleared / RATE, marks=listener.marks, recording=options.record,
            next_step=next_step)
    _summary(result, ended - posted_at, len(audio) / RATE, out)
    if interrupted:
        raise asyncio.CancelledError
    return result


async def _stream_ended(call: SimulatedCall, listener: Listener, hung_up_by: str,
                        reason: str) -> tuple[float, int | None, str, str | None]:
    """Close the stream (the caller hangs up) or see why the relay did: (when, close code,
    reason, error)."""
    ended = time.monotonic()
    if hung_up_by == "caller":
        with contextlib.suppress(ConnectionClosed):
            await call.hang_up()
    with contextlib.suppress(TimeoutError):
        await call.wait_closed(CLOSE_WAIT)
    listener.poll()
    code = call.close_code
    error = None
    if hung_up_by == "relay":
        ended = listener.end_at or ended
        reason = listener.end_reason or "it gave no reason (see its log)"
        if code != 1000:
            error = f"the relay closed the stream with code {code}: {reason}"
        reason = f"{reason} (close code {code})"
    return ended, code, reason, error


async def _next_step(call: SimulatedCall, timeline: Timeline) -> NextStep | None:
    """Request the ``<Connect action>`` as Twilio does; what the caller hears next."""
    try:
        step = await call.follow_action()
    except (httpx.HTTPError, ET.ParseError) as exc:
        timeline.add(time.monotonic(), "action", "action failed",
                     f"{call.stream.action}: {type(exc).__name__}: {exc}")
        return None
    if step is not None:
        timeline.add(call.started_at + step.ms / 1000, "action", "caller hears next",
                     step.describe())
    return step


async def _talk(call: SimulatedCall, listener: Listener, timeline: Timeline, options: Options,
                audio: bytes, keys: list[tuple[float, str]], first: int = 0,
                ) -> tuple[str, str, int]:
    """Send the caller's audio from frame ``first``, and ``keys`` (taken from the list as
    they are pressed), in real time until someone hangs up: (who, why, the frames sent)."""
    frames = -(-len(audio) // FRAME_BYTES)
    last_key = max((at for at, _ in options.dtmf), default=0.0)
    limit = options.duration
    if limit is None:
        limit = max(frames * FRAME_SECONDS, last_key) + SAFETY_LIMIT
    i = first
    start = time.monotonic() - first * FRAME_SECONDS  # paced from now, not from the first stream
    try:
        while True:
            await asyncio.sleep(max(0.0, start + i * FRAME_SECONDS - time.monotonic()))
            now = time.monotonic()
            listener.poll()
            timeline.flush(now)
            if call.closed.is_set():
                return "relay", "", i
            t = i * FRAME_SECONDS
            while keys and keys[0][0] <= t:
                key = keys.pop(0)[1]
                await call.send_dtmf(key)
                listener.last_activity = time.monotonic()  # give the agent time to answer
                timeline.add(listener.last_activity, "dtmf.sent", "key pressed", f"{key} (DTMF)")
            if i == frames:
                timeline.add(now, "audio.done", "caller audio over",
                             f"{len(audio) / RATE:.2f} s played")
            if t >= limit:
                why = "--duration" if options.duration is not None else "safety limit"
                return "caller", f"{why} reached ({limit:g} s)", i
            if i >= frames and not keys and listener.quiet_for(now) >= options.tail:
                return ("caller", f"its audio is over and the agent was quiet for "
                        f"{options.tail:g} s", i)
            chunk = audio[i * FRAME_BYTES:(i + 1) * FRAME_BYTES]
            chunk += bytes([SILENCE_BYTE]) * (FRAME_BYTES - len(chunk))
            await call.send_media(base64.b64encode(chunk).decode())
            listener.frames_sent += 1
            i += 1
    except ConnectionClosed:
        return "relay", "", i


def _summary(result: Result, seconds: float, audio_seconds: float,
             out: Callable[[str], None]) -> None:
    indent = " " * 10
    out(f"{'summary':<10}call {result.call_sid}: {seconds:.1f} s, hung up by the "
        f"{result.hung_up_by}")
    cleared = (f" ({result.cleared_seconds:.1f} s dropped by clear)"
               if result.cleared_seconds else "")
    sent = result.sent_seconds
    then = ", then silence" if sent > audio_seconds else ""
    out(f"{indent}caller sent {sent:.1f} s ({min(sent, audio_seconds):.1f} s of its audio{then}); "
        f"heard {result.heard_seconds:.1f} s of agent audio{cleared}; marks echoed: "
        f"{result.marks}")
    if result.recording is not None:
        out(f"{indent}recording: {result.recording} ({len(result.heard) / RATE:.1f} s, "
            "what the caller heard from the stream's start)")


def _describe_failure(exc: BaseException, url: str, options: Options) -> str:
    """One line saying why the call could not be placed, and what to check."""
    if isinstance(exc, httpx.HTTPStatusError):
        status = exc.response.status_code
        if status == 403 and options.auth_token:
            return (f"the relay rejected the webhook (HTTP 403): the signature does not match; "
                    f"the auth token differs from the relay's TWILIO_AUTH_TOKEN, or {url} is not "
                    "its PUBLIC_URL (Twilio signs PUBLIC_URL + /twiml)")
        if status == 403:
            return ("the relay rejected the unsigned webhook (HTTP 403): it checks Twilio "
                    "signatures, so pass --auth-token (its TWILIO_AUTH_TOKEN), or run the "
                    "simulator on the relay's own machine when it has no TWILIO_AUTH_TOKEN")
        return f"the webhook {exc.request.url} answered HTTP {status}; is {url} a relay?"
    if isinstance(exc, httpx.TransportError):
        return f"the relay is unreachable at {url}: {type(exc).__name__}: {exc or 'no answer'}"
    if isinstance(exc, ValueError | ET.ParseError):
        return f"the webhook answer is not TwiML with a <Connect><Stream>: {exc}"
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        hint = (": its signature does not match (auth token, or the relay's PUBLIC_URL)"
                if status == 403 else "")
        return f"the relay refused the media stream (HTTP {status}){hint}"
    if isinstance(exc, InvalidURI | InvalidHandshake | OSError | TimeoutError):
        return (f"cannot open the media stream: {type(exc).__name__}: {exc or 'timed out'} "
                "(is the TwiML's stream URL reachable from here? see --connect-to)")
    if isinstance(exc, ConnectionClosed):
        return f"the relay closed the media stream at once: {exc}"
    return f"the call failed: {type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------- command line

def _environment() -> dict[str, str]:
    """The environment over ``.env`` in the current directory (neither is modified)."""
    path = find_dotenv(usecwd=True)
    values = {k: v for k, v in (dotenv_values(path) if path else {}).items() if v}
    return {**values, **{k: v for k, v in os.environ.items() if v}}


def parse_dtmf(spec: str) -> list[tuple[float, str]]:
    """``"1@4.0,2@6.5"``: keys and the seconds after the stream's start to press them.

    Raises:
        argparse.ArgumentTypeError: a malformed entry.
    """
    presses = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        key, at, seconds = item.partition("@")
        try:
            when = float(seconds)
        except ValueError:
            when = -1.0
        if not at or len(key) != 1 or key not in DTMF_KEYS or not when >= 0:
            raise argparse.ArgumentTypeError(
                f"{item!r}: expected KEY@SECONDS, KEY one of {DTMF_KEYS} (e.g. 1@4.0,0@9)")
        presses.append((when, key))
    return presses


def _seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a positive number of seconds")
    return value


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    default_url = env.get("PUBLIC_URL") or f"http://localhost:{env.get('PORT') or 8080}"
    parser = argparse.ArgumentParser(
        prog="python -m relay.simulate",
        description="Place a phone call into a running relay exactly as Twilio would (signed "
                    "webhook, <Stream>, Media Streams at real-time pace), play a WAV file as the "
                    "caller, record what the caller heard and print a timeline of the call. "
                    "Defaults come from the environment and from .env in the current directory.",
        epilog="Exit status: 0 when the call completed; 1 when the relay is unreachable, "
               "rejects the webhook or the stream, or closes the stream with an error code; "
               "2 for bad options.")
    parser.add_argument(
        "--url", default=default_url,
        help=f"the relay's base URL; with signatures on, its PUBLIC_URL (default: {default_url}"
             ", from PUBLIC_URL, else http://localhost:$PORT)")
    parser.add_argument(
        "--auth-token", default=env.get("TWILIO_AUTH_TOKEN"), metavar="TOKEN",
        help="sign the webhook and the stream with this Twilio auth token (default: "
             "TWILIO_AUTH_TOKEN; unsigned when unset, which a relay without one accepts from "
             "its own machine)")
    parser.add_argument(
        "--connect-to", metavar="URL",
        help="open the media stream on this host instead of the TwiML's (e.g. "
             "ws://localhost:8080 when PUBLIC_URL is a tunnel); the signature stays the TwiML's")
    parser.add_argument(
        "--play", type=Path, metavar="WAV",
        help="the caller's audio: a PCM WAV file, any sample rate and channel count (default: "
             "a built-in caller: 1.5 s of silence for the greeting, 1.2 s of a voice-like "
             "sound, 3 s of silence for the reply)")
    parser.add_argument(
        "--dtmf", type=parse_dtmf, default=[], metavar="KEY@S,...",
        help="press phone keys at these seconds after the stream starts, e.g. 1@4.0,0@6.5 "
             "(with the local agent, 1-9 call tools and 0 ends the call)")
    parser.add_argument(
        "--duration", type=_seconds, metavar="SECONDS",
        help="hang up after this long at the latest (default: when the audio is over and the "
             f"agent is quiet, at most {SAFETY_LIMIT:g} s after the audio and keys)")
    parser.add_argument(
        "--tail", type=_seconds, default=DEFAULT_TAIL, metavar="SECONDS",
        help="after the audio and keys, hang up once the agent has been quiet this long "
             f"(default: {DEFAULT_TAIL:g})")
    parser.add_argument(
        "--record", type=Path, default=Path(DEFAULT_RECORDING), metavar="WAV",
        help=f"write what the caller heard to this WAV file (default: {DEFAULT_RECORDING})")
    parser.add_argument("--no-record", action="store_true", help="write no recording")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser(_environment()).parse_args(argv)
    options = Options(url=args.url, auth_token=args.auth_token, connect_to=args.connect_to,
                      dtmf=args.dtmf, duration=args.duration, tail=args.tail,
                      record=None if args.no_record else args.record)
    try:
        if args.play is not None:
            options.audio, options.audio_name = read_wav_as_ulaw8k(args.play), str(args.play)
        result = asyncio.run(simulate(options, out=lambda line: print(line, flush=True)))
    except (SimulationError, OSError, ValueError) as exc:
        print(f"relay.simulate: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if result.error is not None:
        print(f"relay.simulate: error: {result.error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
