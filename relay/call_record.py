"""One call's record: what happened, when, and what was said, built as the call goes.

``CallRecorder`` is fed by the bridge from the places it already handles: the agent socket
being opened, Twilio's ``start``, every ``Log`` action the protocol returns that has a
``kind`` (transcripts, barge-in, replies started, heard, flushed or interrupted, first audio
of a reply, speech stopped, agent ready, agent errors), each tool call, and the end. Times are
the event loop's clock, passed in; the record's wall-clock times are derived from the one
wall-clock reading taken at ``start``. Nothing here is called per audio frame.

``record()`` gives the JSON-ready dict (the README documents every field and its unit); it
can be asked for while the call is live (the calls page does) and once more at the end.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from relay.masking import mask_number
from relay.outcomes import Outcome
from relay.redaction import redact

SCHEMA = 1
# A record stays bounded whatever the call does.
MAX_TURNS = 500
MAX_EVENTS = 1000
MAX_TOOL_CALLS = 200
MAX_TEXT = 2000


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by the nearest-rank method, or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def iso(wall: float) -> str:
    return dt.datetime.fromtimestamp(wall, dt.UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


@dataclass(slots=True)
class _Turn:
    role: str
    text: str
    at: float
    interrupted: bool = False
    reply_id: str | None = None
    heard_seconds: float | None = None


@dataclass(slots=True)
class _Tool:
    call_id: str
    name: str
    argument_keys: list[str]
    at: float
    seconds: float | None = None
    error: str | None = None


@dataclass(slots=True)
class _Reply:
    started: float | None = None
    first_audio: float | None = None
    after_speech: float | None = None  # input.speech.stopped this reply answers
    words: list[tuple[float, str]] = field(default_factory=list)  # (end ms, word) from deltas


class CallRecorder:
    """What one call did, from the bridge's hooks; ``record()`` is its JSON-ready summary."""

    def __init__(self, *, redact_transcripts: bool = True) -> None:
        self._redact = redact_transcripts
        self.call_sid = ""
        self.direction = ""
        self.caller = ""
        self.called = ""
        self.dialed_at: float | None = None
        self.started_at: float | None = None
        self._wall_start = 0.0
        self.ended_at: float | None = None
        self.outcome: Outcome | None = None
        self.end_reason = ""
        self.session_ids: list[str] = []
        self.agent_connect_seconds: float | None = None
        self.first_audio_seconds: float | None = None
        self.responses: list[float] = []
        self.barge_ins = 0
        self.agent_errors: list[str] = []
        self.agent_reconnects: list[str] = []
        self.turns: list[_Turn] = []
        self.tools: dict[str, _Tool] = {}
        self.events: list[dict[str, Any]] = []
        self.frames: dict[str, int] = {}
        # Live state, for the calls page: what the agent is doing, the last line said.
        self.activity = "connecting"
        self._replies: dict[str, _Reply] = {}
        self._speech_stopped: float | None = None
        self._speaking_since: float | None = None
        self._last_clear: float | None = None

    # ------------------------------------------------------------------ hooks

    def dialing(self, now: float) -> None:
        self.dialed_at = now

    def started(self, *, call_sid: str, direction: str, caller: str, called: str,
                now: float, wall: float) -> None:
        self.call_sid, self.direction = call_sid, direction
        self.caller, self.called = mask_number(caller), mask_number(called)
        self.started_at, self._wall_start = now, wall
        self.activity = "starting"

    def event(self, kind: str, data: Mapping[str, Any], now: float) -> None:
        """A ``Log`` action's ``kind`` and ``data``, at loop time ``now``."""
        handler = _HANDLERS.get(kind)
        if handler is not None:
            handler(self, data, now)

    def tool_started(self, call_id: str, name: str, arguments: Mapping[str, Any],
                     now: float) -> None:
        if len(self.tools) < MAX_TOOL_CALLS:
            self.tools[call_id] = _Tool(call_id, name, sorted(map(str, arguments))[:32], now)
        self._event(now, "tool.started", tool=name, call_id=call_id)
        self.activity = f"running {name}"

    def tool_finished(self, call_id: str, now: float, *, error: str | None) -> float | None:
        """Records the tool's end; returns how long it took."""
        tool = self.tools.get(call_id)
        if tool is None:
            return None
        tool.seconds = now - tool.at
        tool.error = self._text(error)[:MAX_TEXT] if error is not None else None
        self._event(now, "tool.finished", tool=tool.name, call_id=call_id, ok=error is None)
        self.activity = "listening"
        return tool.seconds

    def ended(self, reason: str, now: float, frames: Mapping[str, int],
              outcome: Outcome) -> None:
        self.ended_at = now
        self.end_reason = reason
        self.outcome = outcome
        self.frames = dict(frames)
        self.activity = "ended"
        self._event(now, "call.ended", outcome=self.outcome.value)

    # ------------------------------------------------------------------ event handlers

    def _ready(self, data: Mapping[str, Any], now: float) -> None:
        session_id = data.get("session_id")
        if isinstance(session_id, str) and session_id not in self.session_ids:
            self.session_ids.append(session_id)
        if self.dialed_at is not None and self.agent_connect_seconds is None:
            self.agent_connect_seconds = now - self.dialed_at
        self.activity = "listening"
        self._event(now, "agent.ready")

    def _speech_started(self, data: Mapping[str, Any], now: float) -> None:
        if self._speaking_since is None:  # a turn's transcript starts where its speech did
            self._speaking_since = now
        self._speech_stopped = None
        self.activity = "listening to the caller"
        self._event(now, "caller.started")

    def _barge_in(self, data: Mapping[str, Any], now: float) -> None:
        self.barge_ins += 1
        self._last_clear = now
        self._speech_started(data, now)
        self._event(now, "barge-in")

    def _speech_stopped_(self, data: Mapping[str, Any], now: float) -> None:
        self._speech_stopped = now
        self.activity = "thinking"
        self._event(now, "caller.stopped")

    def _reply_started(self, data: Mapping[str, Any], now: float) -> None:
        reply = self._reply(data.get("reply_id"))
        reply.started = now
        reply.after_speech = self._speech_stopped

    def _reply_audio(self, data: Mapping[str, Any], now: float) -> None:
        reply_id = data.get("reply_id")
        reply = self._reply(reply_id)
        if reply.first_audio is not None:
            return
        reply.first_audio = now
        if self.first_audio_seconds is None and self.started_at is not None:
            self.first_audio_seconds = now - self.started_at
        # The caller's wait: from the end of their turn to the first audio of a reply started
        # after it (a tool turn's reply may have no audio: then the next one answers).
        if reply.after_speech is not None and reply.after_speech == self._speech_stopped:
            self.responses.append(now - reply.after_speech)
            self._speech_stopped = None
        self.activity = "speaking"
        self._event(now, "agent.audio", reply_id=reply_id)

    def _agent_words(self, data: Mapping[str, Any], now: float) -> None:
        reply = self._reply(data.get("reply_id"))
        end_ms, word = data.get("end_ms"), data.get("text")
        if isinstance(end_ms, int | float) and isinstance(word, str) and len(reply.words) < 2000:
            reply.words.append((float(end_ms), word))

    def _user_transcript(self, data: Mapping[str, Any], now: float) -> None:
        at = self._speaking_since if self._speaking_since is not None else now
        self._speaking_since = None  # the turn is said: its start is used
        self._turn(_Turn("caller", self._text(data.get("text")), at))

    def _agent_transcript(self, data: Mapping[str, Any], now: float) -> None:
        reply_id = data.get("reply_id")
        reply = self._replies.get(reply_id) if isinstance(reply_id, str) else None
        at = reply.first_audio if reply is not None and reply.first_audio is not None else now
        turn = _Turn("agent", self._text(data.get("text")), at,
                     interrupted=data.get("interrupted") is True,
                     reply_id=reply_id if isinstance(reply_id, str) else None)
        if turn.interrupted:
            self._cut(turn, now)
        self._turn(turn)
        self._event(now, "agent.said", reply_id=turn.reply_id, interrupted=turn.interrupted)

    def _reply_heard(self, data: Mapping[str, Any], now: float) -> None:
        self.activity = "listening"
        self._event(now, "reply.heard", reply_id=data.get("reply_id"))

    def _reply_flushed(self, data: Mapping[str, Any], now: float) -> None:
        """A reply's mark came back after a clear: the caller did not hear all of it."""
        reply_id = data.get("reply_id")
        for turn in reversed(self.turns):
            if turn.role == "agent" and turn.reply_id == reply_id:
                if not turn.interrupted:
                    turn.interrupted = True
                    self._cut(turn, now)
                break
        self._event(now, "reply.flushed", reply_id=reply_id)

    def _reply_interrupted(self, data: Mapping[str, Any], now: float) -> None:
        reply = self._replies.get(str(data.get("reply_id")))
        first = reply.first_audio if reply is not None else None
        if self._last_clear is None or (first is not None and self._last_clear < first):
            self._last_clear = now  # interrupted without a barge-in: the clear is now
        self._event(now, "reply.interrupted", reply_id=data.get("reply_id"))

    def _agent_error(self, data: Mapping[str, Any], now: float) -> None:
        code = str(data.get("code") or "unknown")[:64]
        if len(self.agent_errors) < 50:
            self.agent_errors.append(code)
        self._event(now, "agent.error", code=code)

    def _agent_reconnect(self, data: Mapping[str, Any], now: float) -> None:
        """The agent link was lost and replaced: ``resumed`` (the same session),
        ``new_session`` (a fresh one) or ``failed`` (the caller gets the fallback)."""
        result = str(data.get("result"))[:32]
        if len(self.agent_reconnects) < 50:
            self.agent_reconnects.append(result)
        self._event(now, "agent.reconnected", result=result)

    def _dtmf(self, data: Mapping[str, Any], now: float) -> None:
        self._event(now, "dtmf", digit=str(data.get("digit", ""))[:4])

    # ------------------------------------------------------------------ helpers

    def _cut(self, turn: _Turn, cleared: float) -> None:
        """An interrupted reply: how long the caller heard it, and its text cut there when
        the agent's word timings say where (what the caller never heard is not kept)."""
        reply = self._replies.get(turn.reply_id or "")
        if reply is None or reply.first_audio is None:
            return
        clear = self._last_clear
        if clear is None or clear < reply.first_audio:
            clear = cleared
        heard = max(0.0, clear - reply.first_audio)
        turn.heard_seconds = round(heard, 3)
        if reply.words:
            words = [w for end_ms, w in reply.words if end_ms <= heard * 1000]
            turn.text = self._text(" ".join(words))

    def _reply(self, reply_id: object) -> _Reply:
        key = reply_id if isinstance(reply_id, str) else ""
        reply = self._replies.get(key)
        if reply is None:
            if len(self._replies) >= MAX_TURNS:
                self._replies.clear()
            reply = self._replies[key] = _Reply()
        return reply

    def _text(self, text: object) -> str:
        value = str(text or "")[:MAX_TEXT]
        return redact(value) if self._redact else value

    def _turn(self, turn: _Turn) -> None:
        if len(self.turns) < MAX_TURNS:
            self.turns.append(turn)

    def _event(self, now: float, name: str, **fields: Any) -> None:
        if len(self.events) < MAX_EVENTS:
            self.events.append({"t": self._offset(now), "event": name, **fields})

    def _offset(self, at: float | None) -> float | None:
        if at is None:
            return None
        origin = self.started_at if self.started_at is not None else self.dialed_at or at
        return round(at - origin, 3)

    # ------------------------------------------------------------------ the record

    @property
    def last_line(self) -> dict[str, str] | None:
        if not self.turns:
            return None
        turn = self.turns[-1]
        return {"role": turn.role, "text": turn.text}

    def duration(self, now: float) -> float:
        if self.started_at is None:
            return 0.0
        return (self.ended_at if self.ended_at is not None else now) - self.started_at

    def record(self, now: float | None = None) -> dict[str, Any]:
        """The call so far (live) or the whole call (ended), as a JSON-ready dict."""
        end = self.ended_at if self.ended_at is not None else now
        duration = self.duration(end) if end is not None else 0.0
        r3 = _round
        return {
            "schema": SCHEMA,
            "call_sid": self.call_sid,
            "direction": self.direction,
            "caller": self.caller,
            "called": self.called,
            "started_at": iso(self._wall_start) if self.started_at is not None else None,
            "ended_at": iso(self._wall_start + duration) if self.ended_at is not None else None,
            "duration_seconds": r3(duration),
            "outcome": self.outcome.value if self.outcome is not None else None,
            "end_reason": self.end_reason or None,
            "agent_session_ids": list(self.session_ids),
            "agent_connect_seconds": r3(self.agent_connect_seconds),
            "first_audio_seconds": r3(self.first_audio_seconds),
            "response_seconds": [r3(v) for v in self.responses],
            "response_p50_seconds": r3(percentile(self.responses, 0.5)),
            "response_max_seconds": r3(max(self.responses) if self.responses else None),
            "barge_ins": self.barge_ins,
            "agent_errors": list(self.agent_errors),
            "agent_reconnects": list(self.agent_reconnects),
            "tool_calls": [
                {"name": t.name, "argument_keys": t.argument_keys,
                 "offset_seconds": self._offset(t.at), "duration_seconds": r3(t.seconds),
                 "error": t.error}
                for t in self.tools.values()],
            "transcript": [
                {"role": t.role, "text": t.text, "offset_seconds": self._offset(t.at),
                 "interrupted": t.interrupted, "heard_seconds": t.heard_seconds}
                for t in self.turns],
            "frames": dict(self.frames),
            "events": list(self.events),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


_HANDLERS = {
    "agent.ready": CallRecorder._ready,
    "speech.started": CallRecorder._speech_started,
    "barge-in": CallRecorder._barge_in,
    "speech.stopped": CallRecorder._speech_stopped_,
    "reply.started": CallRecorder._reply_started,
    "reply.audio": CallRecorder._reply_audio,
    "agent.words": CallRecorder._agent_words,
    "transcript.user": CallRecorder._user_transcript,
    "transcript.agent": CallRecorder._agent_transcript,
    "reply.heard": CallRecorder._reply_heard,
    "reply.flushed": CallRecorder._reply_flushed,
    "reply.interrupted": CallRecorder._reply_interrupted,
    "agent.error": CallRecorder._agent_error,
    "dtmf": CallRecorder._dtmf,
    "agent.reconnect": CallRecorder._agent_reconnect,
}
