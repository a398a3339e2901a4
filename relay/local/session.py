"""The local agent's sans-I/O session: client messages and the time in, server messages out.

Owns everything one ``/local-agent`` session decides (agent-api.md §2–§4): the order of
messages, ``session.error`` codes, the echo recorder, keypad tool calls, and the pacing of reply
audio. It never awaits, touches a socket or reads a clock; ``relay.local.agent`` does.
"""

from __future__ import annotations

import base64
import binascii
import math
import secrets
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson

from relay.local.audio import FRAME_BYTES, RATE, Vad, silence, tone
from relay.local.keypad import Keypad, KeyTool, pressed_key

PCMU = "audio/pcmu"
MAX_ECHO_BYTES = 10 * RATE  # a turn ends after 10 s, and its echo is at most that long
MAX_REPLY_BYTES = 30 * RATE
MAX_PENDING_CALLS = 16
MAX_TEXT = 200
PREROLL_FRAMES = 5  # 100 ms kept before speech starts, so the echo has its onset
TAIL_FRAMES = 5  # 100 ms kept after the last loud frame

CHIME = tone(523.25, 180) + silence(20) + tone(659.25, 180) + silence(20) + tone(783.99, 450)
SUCCESS = tone(660, 150) + silence(40) + tone(880, 260)
FAILURE = tone(160, 500, 0.25, overtones=6)
BEEP = tone(440, 200)
NO_TOOL = tone(350, 120) + silence(80) + tone(350, 120)


@dataclass(frozen=True, slots=True)
class Pacing:
    """How fast reply audio is released.

    ``speed`` is seconds of audio per second of wall time (``math.inf``: all at once);
    ``lead`` is how far ahead of real time the agent may run, so barge-in cuts the reply
    within about ``lead`` of the caller hearing it.
    """

    speed: float = 1.0
    lead: float = 0.2
    chunk_ms: int = 40


@dataclass(slots=True)
class _Reply:
    reply_id: str
    item_id: str
    text: str
    audio: bytes
    sent: int = 0


class LocalSession:
    """Sans-I/O state of one local agent session.

    Feed ``receive`` (or ``receive_text``) each client message with the current monotonic
    time; call ``poll`` at ``next_wakeup()`` for paced reply audio. When ``close_code`` is set,
    send what was returned, then close the socket with that code.
    """

    def __init__(self, *, pacing: Pacing | None = None, session_id: str | None = None,
                 vad: Vad | None = None) -> None:
        self.pacing = pacing or Pacing()
        self.session_id = session_id or "sess_local_" + secrets.token_hex(8)
        self.close_code: int | None = None
        self.config: dict[str, Any] | None = None
        self.keypad = Keypad()
        self._vad = vad or Vad()
        self._chunk = max(1, RATE * self.pacing.chunk_ms // 1000)
        self._ready_at = 0.0
        self._audio_in = 0
        self._partial = bytearray()
        self._preroll: deque[bytes] = deque(maxlen=self._vad.start_frames + PREROLL_FRAMES)
        self._utterance = bytearray()
        self._onset = 0  # bytes of pre-roll before the first loud frame of the utterance
        self._voiced = 0  # bytes of the utterance up to its last loud frame
        self._reply: _Reply | None = None
        self._play_end = 0.0  # when the caller will have heard all audio sent so far
        self._calls: dict[str, str] = {}
        self._seq = 0

    # ------------------------------------------------------------------ input

    def receive_text(self, raw: str | bytes | None, now: float) -> list[dict[str, Any]]:
        """Handle one WebSocket frame: JSON text only, as on the real API."""
        if not isinstance(raw, str):
            return [self._error("invalid_format", "binary frames are not supported; send JSON "
                                "text, with audio base64-encoded in input.audio")]
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return [self._error("invalid_format", "message is not valid JSON")]
        return self.receive(msg, now)

    def receive(self, msg: Any, now: float) -> list[dict[str, Any]]:
        """Handle one decoded client message; return the messages to send, in order."""
        if self.close_code is not None:
            return []
        if not isinstance(msg, dict):
            return [self._error("invalid_format", "message is not a JSON object")]
        kind = msg.get("type")
        if self.config is None:
            if kind == "session.update":
                return self._configure(msg, now)
            if kind == "session.resume":
                return self._fatal("session_not_found", "the local agent keeps no sessions")
            return [self._error("invalid_format", f"{str(kind)[:40]!r} before session.update: "
                                "the first message must be session.update")]
        match kind:
            case "input.audio":
                return self._input_audio(msg, now)
            case "reply.create":
                return self._reply_create(msg, now)
            case "tool.result":
                return self._tool_result(msg, now)
            case "session.update":
                return self._update(msg, self.config)
            case "reply.cancel":
                return self._interrupt(now, "cancelled")
            case "session.end":
                self.close_code = 1000
                self._reply = None
                return [{"type": "session.ended",
                         "session_duration_seconds": round(now - self._ready_at, 3),
                         "audio_duration_seconds": round(self._audio_in / RATE, 3)}]
            case "conversation.message":
                return []
        return [self._error("invalid_format", f"unknown message type {str(kind)[:40]!r}")]

    def _configure(self, msg: dict[str, Any], now: float) -> list[dict[str, Any]]:
        session = msg.get("session")
        if not isinstance(session, dict):
            return self._fatal("invalid_format", "session.update needs a 'session' object")
        if "agent_id" in session:
            return self._fatal("agent_not_found", "the local agent has no stored agents")
        problem = _check(session, first=True)
        if problem:
            return self._fatal("invalid_config", problem)
        config: dict[str, Any] = orjson.loads(orjson.dumps(session))
        config.setdefault("tools", [])
        for side in ("input", "output"):
            config[side] = {**config.get(side, {}),
                            "format": {"encoding": PCMU, "sample_rate": RATE}}
        self.config = config
        self.keypad = Keypad.from_tools(config["tools"])
        self._ready_at = now
        out: list[dict[str, Any]] = [{
            "type": "session.ready", "session_id": self.session_id,
            "resume_token": "local_" + secrets.token_hex(8), "config": config,
        }]
        greeting = session.get("greeting")
        if greeting:
            out += self._start_reply(greeting, CHIME, now)
        return out

    def _update(self, msg: dict[str, Any], config: dict[str, Any]) -> list[dict[str, Any]]:
        """A later ``session.update``: prompt, input and tools change; greeting and output don't."""
        session = msg.get("session")
        if not isinstance(session, dict):
            return [self._error("invalid_format", "session.update needs a 'session' object")]
        output = session.get("output", config["output"])
        changed = [key for key, same in (
            ("agent_id", "agent_id" not in session),
            ("greeting", session.get("greeting", config.get("greeting"))
             == config.get("greeting")),
            ("output.voice", isinstance(output, dict)
             and output.get("voice") == config["output"].get("voice")),
        ) if not same]
        if changed:
            return [self._error("immutable_field", f"{changed[0]} cannot change after "
                                "session.ready", param=changed[0])]
        problem = _check(session, first=False)
        if problem:
            return [self._error("invalid_config", problem)]
        fresh = orjson.loads(orjson.dumps(session))
        fresh.pop("output", None)
        if "input" in fresh:
            fresh["input"] = {**fresh["input"], "format": {"encoding": PCMU, "sample_rate": RATE}}
        config.update(fresh)
        self.keypad = Keypad.from_tools(config["tools"])
        return [{"type": "session.updated", "config": config}]

    def _input_audio(self, msg: dict[str, Any], now: float) -> list[dict[str, Any]]:
        audio = msg.get("audio")
        if not isinstance(audio, str):
            return [self._error("invalid_format", "input.audio needs an 'audio' base64 string")]
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            return [self._error("invalid_audio", "input.audio.audio is not valid base64")]
        self._audio_in += len(data)
        self._partial += data
        out: list[dict[str, Any]] = []
        while len(self._partial) >= FRAME_BYTES:
            frame = bytes(self._partial[:FRAME_BYTES])
            del self._partial[:FRAME_BYTES]
            out += self._frame(frame, now)
        return out

    def _frame(self, frame: bytes, now: float) -> list[dict[str, Any]]:
        """One 20 ms frame of caller audio through the VAD and the echo recorder."""
        vad = self._vad
        if not vad.speaking:
            event = vad.frame(frame)
            self._preroll.append(frame)
            if event != "started":
                return []
            self._utterance = bytearray(b"".join(self._preroll))
            self._preroll.clear()
            self._voiced = len(self._utterance)
            self._onset = self._voiced - vad.start_frames * FRAME_BYTES
            return [{"type": "input.speech.started"}, *self._interrupt(now)]
        event = vad.frame(frame)
        self._utterance += frame
        if vad.loud:
            self._voiced = len(self._utterance)
        if event != "stopped":
            if len(self._utterance) < MAX_ECHO_BYTES:
                return []
            vad.reset()  # a turn lasts 10 s at most, even in steady noise
        seconds = (self._voiced - self._onset) / RATE
        echo = bytes(self._utterance[:self._voiced + TAIL_FRAMES * FRAME_BYTES])
        self._utterance = bytearray()
        self._seq += 1
        return [
            {"type": "input.speech.stopped"},
            {"type": "transcript.user", "item_id": f"item_{self._seq}",
             "text": f"({seconds:.1f} s of speech)"},
            *self._start_reply(f"(echo of {seconds:.1f} s)", echo, now),
        ]

    def _reply_create(self, msg: dict[str, Any], now: float) -> list[dict[str, Any]]:
        key = pressed_key(msg.get("instructions"))
        if key is None:
            return self._start_reply("(a short tone)", BEEP, now)
        tool = self.keypad.keys.get(key)
        if tool is None:
            return self._start_reply(f"(no tool on key {key})", NO_TOOL, now)
        return self._tool_turn(tool, now)

    def _tool_turn(self, tool: KeyTool, now: float) -> list[dict[str, Any]]:
        """A reply that only calls a tool; the answer comes with ``tool.result``."""
        out = self._interrupt(now)
        self._seq += 1
        reply_id, call_id = f"reply_{self._seq}", f"call_local_{self._seq}"
        if len(self._calls) >= MAX_PENDING_CALLS:
            del self._calls[next(iter(self._calls))]
        self._calls[call_id] = tool.name
        return out + [
            {"type": "reply.started", "reply_id": reply_id, "item_id": f"item_{self._seq}"},
            {"type": "tool.call", "call_id": call_id, "name": tool.name,
             "arguments": dict(tool.arguments)},
            {"type": "reply.done", "reply_id": reply_id, "status": "completed"},
        ]

    def _tool_result(self, msg: dict[str, Any], now: float) -> list[dict[str, Any]]:
        call_id, result = msg.get("call_id"), msg.get("result")
        is_error = msg.get("is_error", False)
        if not (isinstance(call_id, str) and isinstance(result, str)
                and isinstance(is_error, bool)):
            return [self._error("invalid_format", "tool.result needs call_id, a string result "
                                "and an optional boolean is_error")]
        name = self._calls.pop(call_id, None)
        if name is None:
            return [self._error("invalid_value", f"no pending tool call {call_id[:40]!r}",
                                param="call_id")]
        verb = "failed" if is_error else "returned"
        return self._start_reply(f"Tool {name} {verb}: {_clip(result)}",
                                 FAILURE if is_error else SUCCESS, now)

    # ------------------------------------------------------------------ replies and pacing

    def _start_reply(self, text: str, audio: bytes, now: float) -> list[dict[str, Any]]:
        out = self._interrupt(now)  # one reply at a time: a new one replaces the old
        self._seq += 1
        self._reply = _Reply(f"reply_{self._seq}", f"item_{self._seq}", text,
                             audio[:MAX_REPLY_BYTES])
        return out + [{"type": "reply.started", "reply_id": self._reply.reply_id,
                       "item_id": self._reply.item_id}]

    def _interrupt(self, now: float, status: str = "interrupted") -> list[dict[str, Any]]:
        """Stop the reply being played: its transcript is cut to what the caller heard."""
        reply, self._reply = self._reply, None
        if reply is None:
            return []
        unheard = 0.0 if math.isinf(self.pacing.speed) else (
            max(0.0, self._play_end - now) * self.pacing.speed)
        heard = max(0.0, reply.sent / RATE - unheard)
        self._play_end = now
        return [
            {"type": "transcript.agent", "reply_id": reply.reply_id, "item_id": reply.item_id,
             "text": _cut(reply.text, heard, len(reply.audio) / RATE), "interrupted": True},
            {"type": "reply.done", "reply_id": reply.reply_id, "status": status},
        ]

    def poll(self, now: float) -> list[dict[str, Any]]:
        """Release the reply audio due by ``now``; finish the reply once all of it is out."""
        reply = self._reply
        if reply is None:
            return []
        speed, lead = self.pacing.speed, self.pacing.lead
        self._play_end = max(self._play_end, now)
        out: list[dict[str, Any]] = []
        while reply.sent < len(reply.audio) and self._play_end <= now + lead:
            data = reply.audio[reply.sent:reply.sent + self._chunk]
            reply.sent += len(data)
            self._play_end += len(data) / RATE / speed
            out.append({"type": "reply.audio", "reply_id": reply.reply_id,
                        "data": base64.b64encode(data).decode()})
        if reply.sent >= len(reply.audio):
            self._reply = None
            out += [
                {"type": "transcript.agent", "reply_id": reply.reply_id,
                 "item_id": reply.item_id, "text": reply.text, "interrupted": False},
                {"type": "reply.done", "reply_id": reply.reply_id, "status": "completed"},
            ]
        return out

    def next_wakeup(self) -> float | None:
        """When ``poll`` has something to release (None: only new input can change that)."""
        if self._reply is None:
            return None
        return self._play_end - self.pacing.lead

    # ------------------------------------------------------------------ errors

    def _error(self, code: str, message: str, *, param: str | None = None) -> dict[str, Any]:
        error: dict[str, Any] = {"type": "session.error", "code": code, "message": message}
        if param is not None:
            error["param"] = param
        if self.config is not None:
            error["session_id"] = self.session_id
        return error

    def _fatal(self, code: str, message: str) -> list[dict[str, Any]]:
        self.close_code = 1008
        return [self._error(code, message)]


def _check(session: dict[str, Any], *, first: bool) -> str | None:
    """What is wrong with a ``session`` object, if anything."""
    for side in ("input", "output"):
        part = session.get(side, {})
        fmt = part.get("format", {}) if isinstance(part, dict) else None
        if not isinstance(fmt, dict):
            return f"{side} and {side}.format must be objects"
        if (side in session or first) and fmt.get("encoding", "audio/pcm") != PCMU:
            return (f"{side}.format.encoding must be {PCMU!r}: the local agent speaks "
                    "telephone audio (G.711 μ-law, 8 kHz) only")
        if fmt.get("sample_rate", RATE) != RATE:
            return f"{side}.format.sample_rate must be {RATE} for {PCMU}"
    if "greeting" in session and not isinstance(session["greeting"], str):
        return "greeting must be a string (omit it to listen first)"
    if "system_prompt" in session and not isinstance(session["system_prompt"], str):
        return "system_prompt must be a string"
    tools = session.get("tools", [])
    if not isinstance(tools, list) or not all(
            isinstance(t, dict) and isinstance(t.get("name"), str) for t in tools):
        return "tools must be a list of function definitions with a name"
    return None


def _clip(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT - 1] + "…"


def _cut(text: str, heard: float, total: float) -> str:
    """The part of a reply's text the caller heard, by the share of its audio played."""
    if text.startswith("("):
        return f"{text[:-1]}, cut off after {heard:.1f} s)"
    words = text.split()
    share = heard / total if total > 0 else 1.0
    return " ".join(words[:int(len(words) * min(1.0, share))])
