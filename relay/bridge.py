"""CallBridge: the one owner of a call's two sockets, its tasks and its timeouts.

The bridge decodes JSON, feeds ``CallProtocol`` and performs the actions it returns. It holds
one ``asyncio.TaskGroup`` per call: connecting, the tools, the hang-up deadline and the watch on
the Twilio stream all live in it, so ending the call ends every task of the call. A task ends
the call by raising ``CallEnded`` (the TaskGroup "terminate" recipe), a socket callback by
``_end``; teardown then lets the caller go first (the outcome recorded, the Twilio stream
closed, so the caller never waits for the agent) and only then ends the agent session
(``session.end``, a wait bounded by ``AGENT_CLOSE_TIMEOUT``, the close). Each timeout the
call has (no ``start``, the agent's handshake, the maximum duration, the goodbye's wait) ends
it with a reason of its own; an exception that is not ``CallEnded``, a stray ``TimeoutError``
included, is a fault and reaches the error boundary.
Running the tools and what they ask of the call (hang up, transfer) is ``relay.call_tools``'s;
opening the agent link and replacing it is ``relay.agent_links``'s (``LinkAttempts``); the
bridge gives both tasks in its group and performs their actions.

The agent socket (an ``AgentLink``) is opened as soon as Twilio's upgrade is accepted, so the
network handshake overlaps Twilio's ``connected``/``start``; ``session.update`` is sent only
once ``start`` carried a valid per-call token, so a forged stream never opens a session.

The link is replaceable: the protocol asks for one (``OpenLink``) and ``LinkAttempts`` opens
it, waits for ``session.ready`` and reports back to the protocol; the protocol decides what
comes next (retry, resume, a fresh session, or the fallback). The bridge keeps only the
current link, in one attribute that ``LinkAttempts`` sets (``_use_link``) for the audio path
to write to; each link calls the bridge's own ``_on_agent_message``, so reply audio reaches the
caller without a hop.

Before closing the stream, the bridge records the call's outcome by CallSid
(``relay.outcome_records``): Twilio then requests the ``<Connect action>`` and plays what that
record says (a hang-up, a ``<Dial>``, or the fallback).

A stream's place among the instances is its entry in ``relay.call_directory``, written under
its own holder name. A Twilio stream lost with the agent session live ends as ``stream_lost``:
no outcome, no ``session.end``, its entry left for the re-stream the action request answers
(``relay.takeover``). At the end of any other stream the entry goes first, and if another
stream had taken the call over meanwhile (this instance stalled, say), the session is left to
that stream: only this stream's socket is closed.

The audio path has no queue and no task switch: each message is handled in the
``data_received`` callback of the socket it arrived on (``relay.serving``'s ``receive_text``
extension for Twilio, ``AgentLink`` for the agent) and written to the other socket at once.
Both writes are bounded: a peer that stops reading ends the call. Tasks are left for what
waits: connecting, the tools, the hang-up deadline and the end of the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import replace
from typing import Any

import orjson
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from relay import agent_messages
from relay.actions import (
    Action,
    Authorize,
    EndCall,
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
from relay.agent_link import AgentLink, LinkClosed, Message
from relay.agent_links import LinkAttempts
from relay.call_directory import CallDirectory, LiveEntry, new_holder
from relay.call_tools import CallTools
from relay.config import Settings
from relay.errors import CallEnded, ProtocolViolation
from relay.masking import mask_number, mask_numbers
from relay.monitor import Monitor
from relay.outcome_records import record_outcome
from relay.outcomes import Outcome
from relay.protocol import CallProtocol
from relay.recovery import Recovery
from relay.redaction import redact
from relay.security import StreamTokens
from relay.serving import RECEIVE_TEXT, SEND_TEXT, StreamStalled
from relay.store import Store
from relay.takeover import keeps_session, restreams
from relay.tools import CallInfo, Registry

logger = logging.getLogger("relay.call")
# How the Twilio stream can end other than by a hang-up (uvicorn's disconnect codes).
_STREAM_FAILURES = {
    1002: ("Twilio stream failed: WebSocket protocol error", Outcome.STREAM_FAILED),
    1006: ("Twilio stream failed: connection lost without a close", Outcome.STREAM_FAILED),
    1007: ("Twilio stream failed: invalid UTF-8", Outcome.STREAM_FAILED),
    1009: ("Twilio stream failed: a message over the size limit", Outcome.STREAM_FAILED),
    1012: ("the server is shutting down", Outcome.SHUT_DOWN),
}
# Admits a stream (CallSid, token, re-stream number): the name of its places, or None.
StreamOpener = Callable[[str, str, int], Awaitable[str | None]]
# What the call's recorder keeps but observers (the simulator, the softphone) are not sent.
_RECORD_ONLY = frozenset({"speech.started", "speech.stopped", "reply.started", "reply.audio",
                          "agent.words", "agent.error", "tool.dropped", "agent.reconnect"})
_TRANSCRIPTS = frozenset({"transcript.user", "transcript.agent"})
# What the agent is asked to say when an operator hangs up a call.
GOODBYE = ("The call has to end now. Say a short, polite goodbye to the caller in one "
           "sentence, without asking anything.")
OPERATOR_HANG_UP = "hung up by an operator"
# What the agent is asked to say when the call reaches MAX_CALL_SECONDS.
TIME_LIMIT_GOODBYE = ("The call has reached its time limit. Tell the caller, in one short "
                      "sentence, that you have to end the call now, and say goodbye.")
MAX_DURATION_REACHED = "maximum call duration reached"


class CallLog(logging.LoggerAdapter[logging.Logger]):
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{self.extra['call'] if self.extra else '-'}] {msg}", kwargs


class CallBridge:
    def __init__(
        self,
        twilio_ws: WebSocket,
        *,
        settings: Settings,
        registry: Registry,
        http: Any,
        tokens: StreamTokens,
        purpose: str = "twilio",
        monitor: Monitor,
        open_stream: StreamOpener | None = None,
        store: Store,
        directory: CallDirectory | None = None,
    ) -> None:
        self._twilio = twilio_ws
        self._directory = directory
        self._listed = False  # the call is in the live-call directory
        self._settings = settings
        self._tokens = tokens
        self._purpose = purpose
        self._open_stream = open_stream
        self.places: str | None = None  # what open_stream holds for it, until close_stream
        self._holder = new_holder()  # this stream, in its call's live-call entry
        self._token = self._call_sid = ""
        self._call: CallInfo | None = None  # the verified start, until the stream is admitted
        self.protocol = CallProtocol(
            session_update=agent_messages.session_update(
                system_prompt=settings.agent_system_prompt,
                greeting=settings.agent_greeting,
                voice=settings.agent_voice,
                tools=registry.specs,
                tool_timeout=settings.tool_timeout,
            ),
            tool_result_timing=settings.tool_result_timing,
            recovery=Recovery.from_settings(settings),
            reconnect_greeting=settings.agent_reconnect_greeting,
        )
        self._store = store  # where the outcome is recorded for the <Connect action>
        extensions = twilio_ws.scope["extensions"]
        self._send_twilio_now: Callable[[bytes], None] = extensions[SEND_TEXT]
        self._receive_twilio_with: Callable[[Callable[[bytes], None]], None] = (
            extensions[RECEIVE_TEXT])
        self._started: asyncio.Future[None] | None = None
        self._agent: AgentLink | None = None  # the current link (``self.links`` sets it)
        self._ended: asyncio.Future[CallEnded] | None = None
        self._tearing_down = False
        self._tg: asyncio.TaskGroup | None = None
        self._problems: dict[str, int] = {}
        # Observers (the simulator, the softphone) are also sent the call's events.
        self._observe = False
        self.log = CallLog(logger, {"call": "connecting"})
        self.tools = CallTools(settings=settings, registry=registry, http=http,
                               protocol=self.protocol, perform=self._perform,
                               spawn=self._task, log=self.log)
        self.watch = monitor.watch(self)  # the call's record, metrics and live view
        self.links = LinkAttempts(settings=settings, protocol=self.protocol,
                                  perform=self._perform, spawn=self._start,
                                  on_message=self._on_agent_message, use=self._use_link,
                                  opened=self.watch.agent_opened,
                                  until_started=self._until_started, end=self._end)

    # ------------------------------------------------------------------ lifetime

    async def run(self) -> str:
        """Accept the stream and serve the call until either side ends it; returns the reason."""
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        self._ended = finished = loop.create_future()
        self._started = loop.create_future()
        reason, code = "relay error", 1011
        outcome: CallEnded | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                # Each of the call's timeouts ends it with its own reason; any other exception
                # (a TimeoutError included) is a fault, for the error boundary in routes.
                tg.create_task(self._deadline(), name="max call duration")
                # Twilio's messages arrive in ``_on_twilio_message`` from now on.
                self._receive_twilio_with(self._on_twilio_message)
                await self._twilio.accept()
                self.watch.dialing()
                self._perform(self.protocol.begin(time.monotonic()))  # the first agent link
                tg.create_task(self._watch_twilio(), name="twilio stream")
                await self._first(self._started, self._settings.start_timeout,
                                  CallEnded("no start message from Twilio", 1008,
                                            Outcome.STREAM_FAILED))
                await self._open_session()
                raise await finished  # both directions run in the sockets' callbacks
        except* CallEnded as group:
            ended = group.exceptions[0]
            assert isinstance(ended, CallEnded)
            outcome = self._lost_or(ended)
            reason, code = str(outcome), outcome.close_code
        finally:
            self._tg = None
            try:
                await self._teardown(code, reason, outcome)
            finally:
                self.watch.ended(reason, outcome.outcome if outcome is not None
                                 else Outcome.RELAY_ERROR)
                self._log_end(reason, time.monotonic() - started)
        return reason

    async def _deadline(self) -> None:
        await asyncio.sleep(self._settings.max_call_seconds)
        self.log.info("MAX_CALL_SECONDS (%g s) reached: asking the agent for a goodbye",
                      self._settings.max_call_seconds)
        self.say_goodbye_and_end(TIME_LIMIT_GOODBYE, MAX_DURATION_REACHED, Outcome.MAX_DURATION)

    async def _open_session(self) -> None:
        """Admit the stream (its token opens one stream only), then send the session.update."""
        info = self.protocol.info
        if self._open_stream is not None:
            again = restreams(info.parameters) if info is not None else 0
            self.places = await self._open_stream(self._call_sid, self._token, again)
            if self.places is None:
                raise CallEnded("stream rejected: its token already opened a stream", 1008,
                                Outcome.REFUSED_UNAUTHORIZED)
        assert self._call is not None
        self._call_started(self._call)
        if info is not None and restreams(info.parameters) and self._directory is not None:
            entry = await self._directory.find(self._call_sid)
            if entry is not None and entry.session_id:
                self._list_call(entry)
                self._take_over(entry)
                return
        self._list_call()
        self._perform(self.protocol.open_session())  # the session.update

    def _take_over(self, entry: LiveEntry) -> None:
        """Resume the agent session of the instance that held this call before it died."""
        self.links.give_up_first()
        assert entry.session_id is not None
        self._perform(self.protocol.take_over(entry.session_id, entry.resume_token,
                                              time.monotonic()))

    def _list_call(self, taken_over: LiveEntry | None = None) -> None:
        """Put the call in the live-call directory, where every instance sees it."""
        info = self.protocol.info
        if self._directory is None or info is None:
            return
        params = {k: v for k, v in info.parameters.items() if k != "token"}
        entry = LiveEntry(call_sid=info.call_sid, instance="", started_at=time.time(),
                          direction=params.get("direction", self._purpose), parameters=params,
                          restreams=restreams(params), holder=self._holder)
        if taken_over is not None:  # the same call: its start, its session until resumed
            entry = replace(entry, started_at=taken_over.started_at,
                            session_id=taken_over.session_id,
                            resume_token=taken_over.resume_token)
        self._listed = True
        self._task(self._directory.add(entry, self.hang_up), "call directory")

    async def _first(self, event: asyncio.Future[Any], within: float | None = None,
                     late: CallEnded | None = None) -> None:
        """Wait for ``event``, unless the call ends first (or ``within`` seconds pass)."""
        assert self._ended is not None
        done, _ = await asyncio.wait((event, self._ended), timeout=within,
                                     return_when=asyncio.FIRST_COMPLETED)
        if self._ended in done:
            raise self._ended.result()
        if not done:
            raise late or CallEnded("timed out", 1011, Outcome.RELAY_ERROR)

    async def _until_started(self) -> None:
        """Wait for Twilio's ``start`` to check out, unless the call ends first."""
        assert self._started is not None
        await self._first(self._started)

    def _use_link(self, link: AgentLink | None) -> None:
        """From ``self.links``: the link the call's messages go to from now on (None: none)."""
        self._agent = link

    def _end(self, ended: CallEnded) -> None:
        """Finish the call from a callback (the first reason wins)."""
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(ended)

    def _authorize(self, info: StreamInfo) -> None:
        """Check ``start``'s per-call token; only then does the call (and its session) begin."""
        params = info.parameters
        token = params.get("token")
        if token is None or not self._tokens.verify(token, info.call_sid, now=time.time(),
                                                    purpose=self._purpose):
            raise CallEnded("stream rejected: missing or invalid per-call token", 1008,
                            Outcome.REFUSED_UNAUTHORIZED)
        self.log.extra = {"call": info.call_sid}
        self._observe = self._purpose == "phone" or params.get("observe") == "1"
        call = CallInfo(
            call_sid=info.call_sid,
            caller=params.get("caller", ""),
            called=params.get("called", ""),
            direction=params.get("direction", self._purpose),
            parameters={k: v for k, v in params.items() if k != "token"},
        )
        assert self._started is not None
        # run() admits it, and only then is it a call (a refused stream must not hide one).
        self._call, self._call_sid, self._token = call, info.call_sid, token
        self._started.set_result(None)

    def _call_started(self, call: CallInfo) -> None:
        """The stream is admitted: the tools, the log and the monitor see the call from now on."""
        self.tools.started(call)
        self.log.info("call started: %s from %s to %s", call.direction,
                      mask_number(call.caller) or "unknown", mask_number(call.called) or "unknown",
                      extra={"event": "call.started", "direction": call.direction})
        self.watch.started(call_sid=call.call_sid, direction=call.direction, caller=call.caller,
                           called=call.called)

    @property
    def opened_call_sid(self) -> str | None:
        """The Twilio call of this stream, once ``open_stream`` admitted it."""
        return self._call_sid if self.places is not None else None

    def _lost_or(self, ended: CallEnded) -> CallEnded:
        """``ended``, or ``stream_lost`` when the call's next stream will want its session."""
        info = self.protocol.info
        stream_open = self._twilio.client_state is WebSocketState.CONNECTED
        # Only Twilio requests the <Connect action> that streams a call again.
        if (self._listed and info is not None and self._purpose == "twilio"
                and keeps_session(ended.outcome, stream_open=stream_open,
                                  session_id=self.protocol.session_id,
                                  parameters=info.parameters)):
            self.log.warning("Twilio's stream was lost with agent session %s live: the session "
                             "is kept for the stream the <Connect action> opens next",
                             self.protocol.session_id)
            return CallEnded(f"{ended}; agent session kept for the next stream",
                             ended.close_code, Outcome.STREAM_LOST)
        return ended

    async def _teardown(self, close_code: int, reason: str, ended: CallEnded | None) -> None:
        """The caller first (outcome, then the stream's close), then the call's entry, then
        the agent session."""
        self._tearing_down = True
        agent = self.links.release()
        # A lost stream leaves its session and entry for the call's next stream.
        keep = ended is not None and ended.outcome is Outcome.STREAM_LOST
        try:
            await self._let_caller_go(close_code, reason, ended)
        finally:
            held = True
            try:
                if self._directory is not None and self._listed:
                    # A kept entry carries the session to resume, whatever update was lost.
                    last = {"session_id": self.protocol.session_id,
                            "resume_token": self.protocol.resume_token} if keep else {}
                    held = await self._directory.remove(self._call_sid, self._holder,
                                                        keep=keep, **last)
            finally:
                if agent is not None:
                    if not held:  # e.g. this instance stalled and the call moved meanwhile
                        self.log.warning("the call was taken over by another stream: its agent "
                                         "session is left to that stream")
                    await self._end_agent(agent, end_session=held and not keep)

    async def _end_agent(self, agent: AgentLink, *, end_session: bool = True) -> None:
        """``session.end`` (billing stops), a bounded wait for ``session.ended``, the close.

        Without ``end_session``, only the close: the agent keeps the session for its grace
        window, for another stream to resume."""
        timeout = self._settings.agent_close_timeout
        try:
            if end_session and self.protocol.session_open:
                with contextlib.suppress(LinkClosed, TimeoutError):
                    agent.send(orjson.dumps(agent_messages.session_end()))
                    async with asyncio.timeout(timeout):
                        await self.links.done.wait()
            await agent.close(close_timeout=timeout)
        finally:
            agent.abort()  # a no-op once closed; frees the socket even if cancelled

    async def _let_caller_go(self, close_code: int, reason: str, ended: CallEnded | None) -> None:
        ws = self._twilio
        if (ws.client_state is WebSocketState.CONNECTED
                and ws.application_state is WebSocketState.CONNECTED):
            await self._record(ended)  # before the close: Twilio asks for it right after
            with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                if self._observe:
                    self._send_twilio_now(orjson.dumps(
                        {"event": "relay.log", "kind": "call.end", "text": reason}))
                await ws.close(close_code)

    async def _record(self, ended: CallEnded | None) -> None:
        """Write the outcome the ``<Connect action>`` answers; without one, the fallback."""
        if not self._call_sid or (self._open_stream is not None and not self.opened_call_sid):
            return  # not a call this stream may speak for (unauthorized, or a second stream)
        outcome = ended.outcome if ended is not None else Outcome.RELAY_ERROR
        try:
            async with asyncio.timeout(self._settings.agent_close_timeout):
                await record_outcome(self._store, self._call_sid, outcome,
                                     ttl=self._settings.outcome_ttl,
                                     number=ended.number if ended is not None else None)
        except Exception:  # the store failed: the action falls back, which is safe
            self.log.exception("could not record the call's outcome (%s); the caller will "
                               "hear the fallback", outcome)

    def _log_end(self, reason: str, duration: float) -> None:
        p = self.protocol
        self.log.info(
            "call ended: %s after %.1f s (frames to agent %d, to caller %d, dropped before "
            "ready %d, muted %d)", reason, duration, p.frames_to_agent,
            p.frames_to_caller, p.dropped_before_ready, p.dropped_muted,
            extra={"event": "call.ended", "outcome": str(self.watch.recorder.outcome),
                   "duration_seconds": round(duration, 3)})
        for problem, count in self._problems.items():
            self.log.warning("bad input during call: %s (x%d)", problem, count)

    # ------------------------------------------------------------------ messages

    async def _watch_twilio(self) -> None:
        """ASGI ``receive`` now carries only the end of the stream (and stray binary frames)."""
        while True:
            message = await self._twilio.receive()
            if message["type"] == "websocket.disconnect":
                code = message.get("code")
                if code in _STREAM_FAILURES:
                    reason, outcome = _STREAM_FAILURES[code]
                    raise CallEnded(reason, code, outcome)
                raise CallEnded("caller hung up", 1000, Outcome.CALLER_HUNG_UP)
            self._bad("binary frame from Twilio")

    def _on_twilio_message(self, raw: bytes) -> None:
        """One Twilio message, from the stream's ``data_received``: it must never raise."""
        if self._tearing_down:
            return
        try:
            self._perform(self.protocol.twilio_message(orjson.loads(raw)))
        except Exception as exc:
            if isinstance(exc, orjson.JSONDecodeError) and not _is_utf8(raw):
                # RFC 6455 §8.1: a text message that is not UTF-8 fails the connection, 1007.
                # Checked only here: the JSON decoder already rejects what is not UTF-8.
                self._end(CallEnded(_STREAM_FAILURES[1007][0], 1007, Outcome.STREAM_FAILED))
                return
            self._message_failed(exc, "Twilio")

    def _on_agent_message(self, raw: Message) -> None:
        """One agent message, from the link's ``data_received``: it must never raise."""
        if self._tearing_down:
            self._await_session_ended(raw)
            return
        try:
            self._perform(self.protocol.agent_message(orjson.loads(raw)))
        except Exception as exc:
            self._message_failed(exc, "agent")
        if self.protocol.ended:
            self.links.done.set()

    def _message_failed(self, exc: Exception, side: str) -> None:
        """One message's error boundary: bad input is dropped, ``CallEnded`` ends the call."""
        if isinstance(exc, orjson.JSONDecodeError):
            self._bad(f"malformed JSON from {side}")
        elif isinstance(exc, ProtocolViolation):
            self._bad(f"{side}: {exc}")
        elif isinstance(exc, CallEnded):
            self._end(exc)
        else:
            self.log.error("relay error on a %s message", side, exc_info=exc)
            self._end(CallEnded("relay error", 1011, Outcome.RELAY_ERROR))

    def _await_session_ended(self, raw: Message) -> None:
        with contextlib.suppress(orjson.JSONDecodeError):
            msg = orjson.loads(raw)
            if type(msg) is dict and msg.get("type") == "session.ended":
                self.log.info("agent session ended")
                self.links.done.set()

    def _bad(self, problem: str) -> None:
        count = self._problems.get(problem, 0)
        if count == 0:
            self.log.warning("bad input ignored: %s", problem)
        if count or len(self._problems) < 32:
            self._problems[problem] = count + 1

    # ------------------------------------------------------------------ actions

    def _perform(self, actions: list[Action]) -> None:
        """Carry out the protocol's actions in order; every write happens now.

        Raises:
            CallEnded: an action ends the call, or a peer is gone.
        """
        for action in actions:
            if type(action) is ToAgent:
                self._send_agent(action.message)
            elif type(action) is ToTwilio:
                self._send_twilio(action.message)
            elif isinstance(action, Log):
                message = action.message
                if action.kind is not None:
                    self.watch.event(action.kind, action.data)
                    if action.kind in _TRANSCRIPTS and self._settings.redact_transcripts:
                        message = redact(message)
                self.log.log(logging.getLevelName(action.level), "%s", mask_numbers(message),
                             extra={"event": action.kind} if action.kind else None)
                if action.kind == "agent.ready":
                    self._agent_ready()
                if self._observe and action.kind and action.kind not in _RECORD_ONLY:
                    self._send_twilio({"event": "relay.log", "kind": action.kind,
                                       "text": action.message})
            elif isinstance(action, RunTool):
                self._task(self.tools.run(action), f"tool {action.name}")
            elif isinstance(action, EndCall):
                raise CallEnded(action.reason, action.code, action.outcome)
            elif isinstance(action, OpenLink):
                self.links.open(action)
            elif isinstance(action, LinkReady):
                self.links.ready()
            elif isinstance(action, LinkFailed):
                self.links.failed(action.failure)
            elif isinstance(action, Transfer):  # the <Connect action> dials the number
                raise CallEnded(f"transferred to {mask_number(action.number)}", 1000,
                                Outcome.TRANSFERRED, action.number)
            elif isinstance(action, Authorize):
                self._authorize(action.info)

    def _agent_ready(self) -> None:
        """Keep the session's id and resume token where another instance can resume it."""
        if self._directory is not None and self._listed:
            self._task(self._directory.update(self._call_sid, self._holder,
                                              session_id=self.protocol.session_id,
                                              resume_token=self.protocol.resume_token),
                       "call directory")

    def _task(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``work`` as a task of the call, unless the call is already ending."""
        self._start(work, name)

    def _start(self, work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None] | None:
        """``_task``, returning the task (None when the call is already ending)."""
        if self._tg is not None:
            try:
                return self._tg.create_task(work, name=name)
            except RuntimeError:  # the group is shutting down
                pass
        work.close()
        return None

    def _send_agent(self, message: Mapping[str, Any]) -> None:
        agent = self._agent
        if agent is None:
            return  # no link: the protocol sends nothing but what a new link needs
        try:
            agent.send(orjson.dumps(message))
        except LinkClosed:
            # Reported once, by the link's ``closed`` callback (a drop or a failed attempt);
            # what could not be sent on it is lost with it. (try/except: free on the audio
            # path, where a ``contextlib.suppress`` would build an object per frame.)
            pass

    def _send_twilio(self, message: Mapping[str, Any]) -> None:
        try:
            self._send_twilio_now(orjson.dumps(message))
        except StreamStalled as exc:
            raise CallEnded(str(exc), 1011, Outcome.STREAM_FAILED) from None
        except OSError:
            raise CallEnded("caller hung up", 1000, Outcome.CALLER_HUNG_UP) from None

    # ------------------------------------------------------------------ seen from outside

    @property
    def counters(self) -> CallProtocol:
        """The per-frame counters (plain integers, read by the metrics at scrape time)."""
        return self.protocol

    def hang_up(self, *, now: bool) -> None:
        """Hang up from outside (the calls page): after a short goodbye, or at once."""
        if now or self._agent is None:
            self._end(CallEnded(OPERATOR_HANG_UP, 1000, Outcome.OPERATOR_HUNG_UP))
            return
        self.say_goodbye_and_end(GOODBYE, OPERATOR_HANG_UP, Outcome.OPERATOR_HUNG_UP)

    def end_now(self, reason: str, outcome: Outcome, number: str | None = None) -> None:
        """End the call at once (the stream closes with 1000); ``number``: the action dials it."""
        self._end(CallEnded(reason, 1000, outcome, number))

    def say_goodbye_and_end(self, instructions: str, reason: str, outcome: Outcome) -> None:
        """Ask the agent for a short goodbye, then hang up once it is heard.

        The one way the relay itself ends a call politely (the time limit, an operator's
        hang-up, a draining process). Bounded by ``HANGUP_TIMEOUT``; a call whose agent is
        not ready ends at once. ``outcome``: what the call ends as.
        """
        if self._ended is None or self._ended.done() or self._tearing_down:
            return
        if not self.protocol.agent_ready:
            self._end(CallEnded(reason, 1000, outcome))
            return
        if self.tools.finish_after_goodbye(EndCall(reason, 1000, outcome), None):
            self._send_agent(agent_messages.reply_create(instructions))


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True

