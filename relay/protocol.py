"""The pure state of one call: Twilio and agent messages in, actions out.

Theory of operation
-------------------
``CallProtocol`` never awaits, touches a socket or reads a clock. The bridge decodes each JSON
message to a dict, hands it to ``twilio_message`` or ``agent_message`` and performs the returned
actions in order. Everything that decides *what* happens on a call lives here:

* Audio passes through untouched: Twilio ``media.payload`` becomes ``input.audio.audio`` and
  ``reply.audio.data`` becomes ``media.payload``, the same base64 string, checked for the base64
  alphabet but never decoded.
* ``start`` is parsed here, once, into ``StreamInfo``; it comes back as ``Authorize``, and only
  when the owner has checked the stream's per-call token does ``open_session`` send the
  ``session.update`` (``session_open`` says whether a session was opened and not yet ended).
  A malformed ``start`` ends the stream (1008): nothing can be served on it.
* Caller audio reaches the agent only after ``session.ready``. Agent audio before ``start`` is a
  violation: the agent speaks only after ``session.update``, which is sent after ``start``.
* Barge-in: ``input.speech.started`` sends Twilio ``clear``. A reply reported interrupted is
  muted: none of its audio still in flight reaches the caller, and a second ``clear`` flushes
  what slipped through between the two events.
* Each completed reply is followed by a Twilio ``mark``; its echo says the caller heard it, or,
  if a ``clear`` came in between, that it was flushed.
* Tool results go out when ``reply.done`` is the latest agent event (the documented rule) or at
  once (``immediate``); results of an interrupted reply are dropped.
* A requested hang-up or transfer waits for the agent's next reply (the goodbye) to be heard:
  a ``hangup`` mark follows it, and the echo of that mark finishes the call (the stages of that
  wait are ``relay.goodbye``'s).
* The agent link is replaceable. ``begin`` asks for the first link (``OpenLink``); the owner
  reports ``link_opened``, ``link_failed`` (an attempt that never got ``session.ready``),
  ``link_lost`` (a ready link that dropped without ``session.ended``) and ``link_ready``, and
  ``relay.recovery`` decides: retry, resume, a fresh session, or the fallback (an ``EndCall``
  with outcome ``agent_failed``). A drop cuts what was playing (``clear``), drops caller audio
  until the next ``session.ready``, holds tool results for a resumed session and drops them
  for a fresh one, which greets with the reconnect greeting instead of the first one.

Malformed input raises ``ProtocolViolation``; the bridge logs it and drops that message. Unknown
events are reported once per type and otherwise ignored.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Mapping
from typing import Any

import orjson

from relay import agent_messages as agent
from relay import twilio_messages as twilio
from relay.actions import (
    Action,
    Authorize,
    EndCall,
    Finish,
    LinkFailed,
    LinkReady,
    Log,
    OpenLink,
    RunTool,
    StreamInfo,
    ToAgent,
    ToTwilio,
    Transfer,
)
from relay.errors import ProtocolViolation
from relay.goodbye import HANGUP_MARK, Goodbye
from relay.outcomes import Outcome
from relay.recovery import Attempt, Failure, GiveUp, Kind, Mode, Recovery

MAX_MUTED_REPLIES = 16
MAX_PENDING_MARKS = 256
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def is_base64(text: str) -> bool:
    return len(text) % 4 == 0 and _BASE64.fullmatch(text) is not None


class CallProtocol:
    """Sans-I/O state of one call."""

    def __init__(self, *, session_update: dict[str, Any], tool_result_timing: str = "after_reply",
                 recovery: Recovery | None = None, reconnect_greeting: str | None = None):
        self._session_update = session_update
        self._immediate_results = tool_result_timing == "immediate"
        self.recovery = recovery or Recovery.with_defaults()
        self._reconnect_greeting = reconnect_greeting
        self.link_up = False  # the current link is open: its first message can be sent
        self._lost_session: str | None = None  # the session a drop is trying to get back
        self._orphaned: set[str] = set()  # tool calls of a session a fresh one replaced
        self.info: StreamInfo | None = None
        self.agent_ready = False
        self.session_id: str | None = None
        self.resume_token: str | None = None
        self.session_open = False  # session.update sent (open_session), session.ended not seen
        self.ended = False  # the agent sent session.ended
        self._current_reply: str | None = None
        self._muted_replies: deque[str] = deque(maxlen=MAX_MUTED_REPLIES)
        self._muted = False
        self._clears = 0
        self._marks: dict[str, tuple[str, int]] = {}
        self._mark_seq = 0
        self._settled = False  # reply.done is the latest agent event
        self._tool_replies: dict[str, str | None] = {}
        self._pending_results: list[tuple[str, dict[str, Any]]] = []
        self._goodbye: Goodbye[Finish] | None = None  # a hang-up or transfer, once it is heard
        self._seen_unknown: set[str] = set()
        self._heard_caller = False
        self._heard_agent = False
        self._announce_audio = True  # the next audio sent starts a reply: say so once
        self.frames_to_agent = 0
        self.frames_to_caller = 0
        self.dropped_before_ready = 0
        self.dropped_muted = 0

    # ------------------------------------------------------------------ Twilio side

    def twilio_message(self, msg: Any) -> list[Action]:
        """Handle one decoded Twilio Media Streams message.

        Raises:
            ProtocolViolation: the message is malformed or out of order.
        """
        if type(msg) is not dict:
            raise ProtocolViolation("Twilio message is not a JSON object")
        event = msg.get("event")
        if event == "media":  # the hot path: 50 per second per call
            if self.info is None:
                raise ProtocolViolation("media before start")
            body = msg.get("media")
            if type(body) is not dict:
                raise ProtocolViolation("media without a media object")
            payload = body.get("payload")
            if type(payload) is not str or not is_base64(payload):
                raise ProtocolViolation("media payload is not base64")
            if body.get("track", "inbound") != "inbound":
                return []
            if not self.agent_ready:
                self.dropped_before_ready += 1
                return []
            self.frames_to_agent += 1
            if self._heard_caller:
                return [ToAgent(agent.input_audio(payload))]
            self._heard_caller = True
            return [ToAgent(agent.input_audio(payload)),
                    Log("first caller audio sent to agent", kind="audio.caller")]
        if event == "start":
            return self._start(msg)
        if event == "mark":
            return self._mark_echo(msg)
        if event == "dtmf":
            return self._dtmf(msg)
        if event == "stop":
            return [EndCall("caller hung up", 1000, Outcome.CALLER_HUNG_UP)]
        if event == "connected":
            return []
        return self._unknown("Twilio", event)

    def _start(self, msg: dict[str, Any]) -> list[Action]:
        if self.info is not None:
            raise ProtocolViolation("second start on one stream")
        start = msg.get("start")
        if type(start) is not dict:
            return [EndCall("malformed start message: no start object", 1008,
                            Outcome.STREAM_FAILED)]
        stream_sid = start.get("streamSid") or msg.get("streamSid")
        call_sid = start.get("callSid")
        if type(stream_sid) is not str or not stream_sid or type(call_sid) is not str:
            return [EndCall("malformed start message: no streamSid or callSid", 1008,
                            Outcome.STREAM_FAILED)]
        params = start.get("customParameters") or {}
        if type(params) is not dict:
            return [EndCall("malformed start message: customParameters is not an object", 1008,
                            Outcome.STREAM_FAILED)]
        self.info = StreamInfo(
            stream_sid=stream_sid,
            call_sid=call_sid,
            parameters={str(k): str(v) for k, v in params.items()},
        )
        return [Authorize(self.info)]

    def open_session(self) -> list[Action]:
        """The stream's token checked out: open the agent session (once a link is up)."""
        assert self.info is not None, "open_session before start"
        self.session_open = True
        return [ToAgent(self._opening(self.info.parameters))] if self.link_up else []

    def _opening(self, params: Mapping[str, str], *, fresh: bool = False) -> dict[str, Any]:
        """The ``session.update``, with this call's own greeting and prompt if it has them.

        ``fresh``: a session replacing a lost one greets with the reconnect greeting.
        """
        greeting, prompt = params.get("greeting"), params.get("prompt")
        if not (greeting or prompt or fresh):
            return self._session_update
        session = dict(self._session_update["session"])
        if fresh:
            greeting = self._reconnect_greeting
            session.pop("greeting", None)
        if greeting:
            session["greeting"] = greeting
        if prompt:
            session["system_prompt"] = prompt
        return {**self._session_update, "session": session}

    # ------------------------------------------------------------------ the agent link

    def begin(self, now: float) -> list[Action]:
        """The stream was accepted: get the call's first agent session."""
        return [OpenLink(self.recovery.begin(Mode.FIRST, now))]

    def link_opened(self) -> list[Action]:
        """The current attempt's link is open: send its first message when it can go."""
        self.link_up = True
        attempt = self.recovery.current
        mode = attempt.mode if attempt is not None else Mode.FIRST
        if mode is Mode.RESUME:
            return [ToAgent(agent.session_resume(self._lost_session or ""))]
        if not self.session_open or self.info is None:
            return []  # the first session.update waits for start (open_session)
        return [ToAgent(self._opening(self.info.parameters, fresh=mode is Mode.FRESH))]

    def link_failed(self, failure: Failure, now: float) -> list[Action]:
        """The current attempt ended without ``session.ready``: the next one, or the fallback."""
        self.link_up = False
        attempt = self.recovery.current
        mid_call = attempt is not None and attempt.mode is not Mode.FIRST
        step = self.recovery.failed(failure, now, session_id=self._lost_session)
        log = Log(step.text, step.level, kind="agent.fault")
        if isinstance(step.next, GiveUp):
            end = EndCall(f"agent failed: {step.next.reason}", 1011, Outcome.AGENT_FAILED)
            if mid_call:
                return [log, _reconnect("failed"), end]
            return [log, end]
        return [log, OpenLink(step.next, self._credential(step.next))]

    def link_lost(self, why: str, now: float) -> list[Action]:
        """The ready link dropped without ``session.ended``: keep the caller, get it back.

        What was playing is cut (``clear``) and stays muted; caller audio is dropped until the
        next ``session.ready``; tool results are held until then.
        """
        self.link_up = False
        self.agent_ready = False
        actions: list[Action] = []
        if self._current_reply is not None or self._marks:
            actions += self._clear()
        if self._current_reply is not None:
            self._mute(self._current_reply)
        self._current_reply = None
        self._settled = False
        self._lost_session = self.session_id
        mode = Mode.RESUME if self.session_id else Mode.FRESH
        attempt = self.recovery.begin(mode, now)
        then = "resuming it" if mode is Mode.RESUME else "opening a fresh session"
        actions.insert(0, Log(f"agent link lost: {why}; session {self.session_id or '-'}: {then}",
                              kind="agent.fault"))
        actions.append(OpenLink(attempt, self._credential(attempt)))
        return actions

    def take_over(self, session_id: str, resume_token: str | None, now: float) -> list[Action]:
        """This stream replaces one that was lost (its instance died, or Twilio's side of it
        dropped: ``relay.takeover``): instead of a new session, resume that stream's agent
        session, then a fresh one, then the fallback.

        The link opened for a first session has been let go.
        """
        assert self.info is not None, "take_over before start"
        self.session_open = True
        self.link_up = False
        self._lost_session = session_id
        self.resume_token = resume_token
        attempt = self.recovery.begin(Mode.RESUME, now)
        return [Log(f"taking over the call from its lost stream: resuming agent session "
                    f"{session_id}", kind="agent.fault"),
                OpenLink(attempt, self._credential(attempt))]

    def link_ready(self, now: float) -> list[Action]:
        """``session.ready`` on the current link: audio flows again; results go or are dropped."""
        attempt = self.recovery.current
        mode = attempt.mode if attempt is not None else Mode.FIRST
        text = self.recovery.ready(now)
        data = {"session_id": self.session_id, "mode": str(mode)}
        if mode is Mode.FIRST:
            return [Log(f"agent ready (session {self.session_id})", kind="agent.ready",
                        data=data)]
        actions: list[Action] = [Log(f"{text} (session {self.session_id})", kind="agent.ready",
                                     data=data)]
        if mode is Mode.RESUME and self.session_id == self._lost_session:
            actions.append(_reconnect("resumed"))
            self._settled = True  # the resumed session is quiet, waiting for its results
            held = [call_id for call_id, _ in self._pending_results]
            running = [call_id for call_id in self._tool_replies if call_id not in held]
            if held:
                actions.append(Log(f"tool result(s) {', '.join(held)} sent on the resumed "
                                   "session"))
            if running:
                actions.append(Log(f"tool call(s) {', '.join(running)} still running across "
                                   "the drop: their results go to the resumed session"))
            return actions + self._flush_results()
        actions.append(_reconnect("new_session"))
        # A fresh session never asked for the old session's tools: drop what they return.
        for call_id, _ in self._pending_results:
            actions.append(Log(f"tool result {call_id} dropped: its session was replaced"))
        self._orphaned.update(self._tool_replies)
        self._tool_replies.clear()
        self._pending_results = []
        return actions

    def _credential(self, attempt: Attempt) -> str | None:
        return self.resume_token if attempt.mode is Mode.RESUME else None

    def _mark_echo(self, msg: dict[str, Any]) -> list[Action]:
        body = msg.get("mark")
        name = body.get("name") if type(body) is dict else None
        if type(name) is not str:
            raise ProtocolViolation("mark without a name")
        goodbye = self._goodbye
        if goodbye is not None and goodbye.heard(name):
            self._goodbye = None
            return [Log("goodbye heard"), goodbye.action]
        sent = self._marks.pop(name, None)
        if sent is None:
            return []  # late or unknown: after a clear every pending mark comes back
        reply_id, clears = sent
        if clears != self._clears:
            return [Log(f"reply {reply_id} flushed by barge-in", "DEBUG", kind="reply.flushed",
                        data={"reply_id": reply_id})]
        return [Log(f"reply {reply_id} heard", kind="reply.heard", data={"reply_id": reply_id})]

    def _dtmf(self, msg: dict[str, Any]) -> list[Action]:
        body = msg.get("dtmf")
        digit = body.get("digit") if type(body) is dict else None
        if type(digit) is not str or not digit:
            raise ProtocolViolation("dtmf without a digit")
        if not self.agent_ready:
            return [Log(f"caller pressed {digit} before the agent was ready; ignored", "WARNING")]
        text = f"The caller pressed the key {digit} on their phone keypad."
        return [Log(f"caller pressed {digit}", kind="dtmf", data={"digit": digit}),
                ToAgent(agent.reply_create(text))]

    # ------------------------------------------------------------------ agent side

    def agent_message(self, msg: Any) -> list[Action]:
        """Handle one decoded agent message.

        Raises:
            ProtocolViolation: the message is malformed.
        """
        if type(msg) is not dict:
            raise ProtocolViolation("agent message is not a JSON object")
        kind = msg.get("type")
        if kind == "reply.audio":  # the hot path
            data = msg.get("data")
            if type(data) is not str or not is_base64(data):
                raise ProtocolViolation("reply.audio data is not base64")
            reply_id = msg.get("reply_id")
            if self._muted if reply_id is None else reply_id in self._muted_replies:
                self.dropped_muted += 1
                return []
            if self.info is None:
                raise ProtocolViolation("reply.audio before the call started")
            self.frames_to_caller += 1
            out = ToTwilio(twilio.media(self.info.stream_sid, data))
            if not self._announce_audio:
                return [out]
            self._announce_audio = False
            started = Log("reply audio started", "DEBUG", "reply.audio", {"reply_id": reply_id})
            if self._heard_agent:
                return [out, started]
            self._heard_agent = True
            return [out, started, Log("first agent audio sent to caller", kind="audio.agent")]
        if kind == "input.speech.started":
            self._settled = False
            if self._current_reply is None and not self._marks:
                return [Log("caller started speaking", "DEBUG", "speech.started"), *self._clear()]
            return [Log("caller started speaking: barge-in", kind="barge-in"), *self._clear()]
        if kind == "reply.started":
            return self._reply_started(msg)
        if kind == "reply.done":
            return self._reply_done(msg)
        if kind == "tool.call":
            return self._tool_call(msg)
        if kind == "transcript.user":
            text = msg.get("text", "")
            return [Log(f"user: {text}", kind="transcript.user", data={"text": text})]
        if kind == "transcript.agent":
            return self._transcript_agent(msg)
        if kind == "session.ready":
            return self._ready(msg)
        if kind in ("session.error", "error") or (kind is None and "code" in msg):
            return self._error(msg)
        if kind == "session.ended":
            self.ended = True
            self.session_open = False
            return [EndCall("agent ended the session", 1000, Outcome.AGENT_ENDED)]
        if kind == "input.speech.stopped":
            return [Log("caller stopped speaking", "DEBUG", "speech.stopped")]
        if kind == "transcript.agent.delta":
            return self._agent_words(msg)
        if kind in ("transcript.user.delta", "session.updated"):
            return []
        if kind == "reply.error":
            text = f"agent reply error: {msg.get('code')} {msg.get('message', '')}"
            return [Log(text, "WARNING")]
        return self._unknown("agent", kind)

    def _ready(self, msg: dict[str, Any]) -> list[Action]:
        if self.agent_ready:
            return [Log("second session.ready ignored", "WARNING")]
        self.agent_ready = True
        session_id = msg.get("session_id")
        self.session_id = session_id if type(session_id) is str else None
        token = msg.get("resume_token")
        self.resume_token = token if type(token) is str and token else None
        return [LinkReady()]

    def _reply_started(self, msg: dict[str, Any]) -> list[Action]:
        reply_id = msg.get("reply_id")
        self._current_reply = reply_id if type(reply_id) is str else None
        self._muted = False
        self._settled = False
        self._announce_audio = True
        if self._goodbye is not None:
            self._goodbye.reply_started(self._current_reply)
        return [Log(f"reply {self._current_reply} started", "DEBUG", "reply.started",
                    {"reply_id": self._current_reply})]

    def _reply_done(self, msg: dict[str, Any]) -> list[Action]:
        reply_id = msg.get("reply_id")
        reply_id = reply_id if type(reply_id) is str else self._current_reply
        status = msg.get("status") or "completed"
        actions: list[Action] = []
        if status == "interrupted":
            self._mute(reply_id)
            self._pending_results = [
                (cid, res) for cid, res in self._pending_results
                if self._tool_replies.get(cid) != reply_id
            ]
            actions += self._clear()
            actions.append(Log(f"reply {reply_id} interrupted", kind="reply.interrupted",
                               data={"reply_id": reply_id}))
        elif (self.info is not None and reply_id is not None
              and len(self._marks) < MAX_PENDING_MARKS):
            self._mark_seq += 1
            name = f"{self._mark_seq}:{reply_id}"
            self._marks[name] = (reply_id, self._clears)
            actions.append(ToTwilio(twilio.mark(self.info.stream_sid, name)))
        self._current_reply = None
        self._settled = status != "interrupted"
        if (self._goodbye is not None and self.info is not None
                and self._goodbye.reply_done(reply_id)):
            actions.append(ToTwilio(twilio.mark(self.info.stream_sid, HANGUP_MARK)))
        if self._settled and self._pending_results:
            actions += self._flush_results()
        return actions

    def _transcript_agent(self, msg: dict[str, Any]) -> list[Action]:
        reply_id = msg.get("reply_id")
        reply_id = reply_id if type(reply_id) is str else self._current_reply
        text = msg.get("text", "")
        interrupted = msg.get("interrupted") is True
        data = {"text": text, "reply_id": reply_id, "interrupted": interrupted}
        if interrupted:
            self._mute(reply_id)
            return [Log(f"agent (interrupted): {text}", kind="transcript.agent", data=data)]
        return [Log(f"agent: {text}", kind="transcript.agent", data=data)]

    def _agent_words(self, msg: dict[str, Any]) -> list[Action]:
        """A word of the agent's reply with its timing in the reply's audio (the recorder
        cuts an interrupted reply's text where the caller stopped hearing it)."""
        reply_id = msg.get("reply_id")
        data = {"reply_id": reply_id if type(reply_id) is str else self._current_reply,
                "text": msg.get("delta", msg.get("text")), "end_ms": msg.get("end_ms")}
        return [Log("agent word", "DEBUG", "agent.words", data)]

    def _tool_call(self, msg: dict[str, Any]) -> list[Action]:
        call_id = msg.get("call_id")
        name = msg.get("name")
        if type(call_id) is not str or not call_id:
            raise ProtocolViolation("tool.call without a call_id")
        if self.info is None:
            raise ProtocolViolation("tool.call before the call started")
        raw = msg.get("arguments", msg.get("args"))
        if type(raw) is str:
            try:
                raw = orjson.loads(raw) if raw.strip() else {}
            except orjson.JSONDecodeError:
                raw = None
        elif raw is None:
            raw = {}
        self._tool_replies[call_id] = self._current_reply
        self._settled = False
        if type(name) is not str or not name or type(raw) is not dict:
            error = orjson.dumps({"error": "malformed tool call: arguments must be an object"})
            return self.tool_finished(call_id, error.decode(), is_error=True)
        data = {"call_id": call_id, "name": name, "argument_keys": sorted(map(str, raw))}
        return [Log(f"tool call {name} ({call_id})", kind="tool.call", data=data),
                RunTool(call_id, name, raw)]

    def _error(self, msg: dict[str, Any]) -> list[Action]:
        code = str(msg.get("code") or "unknown")
        message = str(msg.get("message", ""))
        if not self.agent_ready and self.recovery.current is not None:
            param = msg.get("param")
            return [Log(f"agent error {code} before session.ready", "DEBUG", "agent.error",
                        {"code": code}),
                    LinkFailed(Failure(Kind.ERROR, message or code, code=code,
                                       param=param if type(param) is str else None))]
        text = f"agent error {code}: {message}; session {self.session_id or '-'}"
        if code.lower() == "session_expired":  # the agent's own end: a goodbye, not a fault
            return [Log(f"{text}: hanging up", "INFO", "agent.error", {"code": code}),
                    EndCall("agent ended the session (session_expired)", 1000,
                            Outcome.AGENT_ENDED)]
        if agent.is_fatal(code):
            return [Log(f"{text}: fallback", "ERROR", "agent.error", {"code": code}),
                    EndCall(f"agent error {code}", 1011, Outcome.AGENT_FAILED)]
        return [Log(text, "WARNING", "agent.error", {"code": code})]

    # ------------------------------------------------------------------ tools and finishing

    def tool_finished(self, call_id: str, result: str, *, is_error: bool) -> list[Action]:
        """A tool's outcome: send, hold until ``reply.done``, or drop (interrupted reply)."""
        reply_id = self._tool_replies.get(call_id)
        data = {"call_id": call_id, "is_error": is_error, "result": result}
        if call_id in self._orphaned:
            self._orphaned.discard(call_id)
            return [Log(f"tool result {call_id} dropped: its session was replaced",
                        kind="tool.dropped", data=data)]
        if reply_id is not None and reply_id in self._muted_replies:
            self._tool_replies.pop(call_id, None)
            return [Log(f"tool result {call_id} dropped: its reply was interrupted",
                        kind="tool.dropped", data=data)]
        message = agent.tool_result(call_id, result, is_error=is_error)
        self._pending_results.append((call_id, message))
        outcome = "failed" if is_error else "succeeded"
        actions: list[Action] = [
            Log(f"tool {call_id} {outcome}: {result[:200]}", "DEBUG", "tool.result", data)]
        if not self.agent_ready:  # the link is down: held for the resumed session
            actions.append(Log(f"tool result {call_id} held: the agent link is down"))
        elif self._immediate_results or self._settled:
            actions += self._flush_results()
        return actions

    def _flush_results(self) -> list[Action]:
        actions: list[Action] = []
        for call_id, message in self._pending_results:
            self._tool_replies.pop(call_id, None)
            actions.append(ToAgent(message))
            if self._goodbye is not None:
                self._goodbye.result_sent(call_id)
        self._pending_results = []
        return actions

    def finish_after_goodbye(self, action: Finish,
                             call_id: str | None = None) -> list[Action] | None:
        """Hang up or transfer once the agent's next reply has been heard.

        With ``call_id`` (the tool that asked), the goodbye is the reply after its result.
        Returns None, and changes nothing, when the call is already finishing: the first
        request stands, so the caller must not be made to wait for (or hear) a second one.
        """
        if self._goodbye is not None:
            return None
        pending = call_id is not None and call_id in self._tool_replies
        self._goodbye = Goodbye(action, call_id, result_pending=pending)
        return [Log(f"will {_describe(action)} after the agent's goodbye")]

    # ------------------------------------------------------------------ helpers

    def _mute(self, reply_id: str | None) -> None:
        if reply_id is None:
            self._muted = True
        elif reply_id not in self._muted_replies:
            self._muted_replies.append(reply_id)
        if reply_id == self._current_reply:
            self._muted = True

    def _clear(self) -> list[Action]:
        if self.info is None:
            return []
        self._clears += 1
        return [ToTwilio(twilio.clear(self.info.stream_sid))]

    def _unknown(self, side: str, kind: object) -> list[Action]:
        key = f"{side}:{kind}"
        if key in self._seen_unknown or len(self._seen_unknown) > 32:
            return []
        self._seen_unknown.add(key)
        return [Log(f"ignored unknown {side} message {str(kind)[:40]!r}", "WARNING")]


def _describe(action: Finish) -> str:
    return f"transfer to {action.number}" if isinstance(action, Transfer) else "hang up"


def _reconnect(result: str) -> Log:
    """How getting a lost session back ended (``resumed``, ``new_session``, ``failed``)."""
    return Log(f"agent reconnect: {result}", "DEBUG", "agent.reconnect", {"result": result})
