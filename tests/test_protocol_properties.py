"""Property tests: random and malformed message sequences from both sides into ``CallProtocol``.

Whatever arrives, in whatever order, the protocol raises nothing but ``ProtocolViolation`` (the
bridge drops that message and goes on, as here), and every message it emits is valid for its
receiver: Twilio messages carry the call's ``streamSid``, ``tool.result`` has a string
``result``, no ``input.audio`` goes out before ``session.ready``, at most one
``session.update`` per session, and ``session.resume`` only as a link's first message (agent
API §3.2: the resumed session keeps its configuration).

The agent link comes and goes as the bridge reports it: an attempt opens (``link_opened``) or
fails (``link_failed``: refused, unreachable, timed out, closed or ``session.error`` before
``session.ready``), a ready link drops (``link_lost``), the clock moves on (budgets run out), and
a restreamed call may take over a session (``take_over``) instead of opening one. Agent messages
arrive only while a link is open, and ``session.ready`` only after that link's first message.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay import agent_messages
from relay.actions import (
    Authorize,
    EndCall,
    LinkFailed,
    LinkReady,
    Log,
    OpenLink,
    RunTool,
    ToAgent,
    ToTwilio,
    Transfer,
)
from relay.errors import ProtocolViolation
from relay.outcomes import Outcome
from relay.protocol import CallProtocol
from relay.recovery import Failure, Kind

B64 = st.sampled_from(["AAAA", "//79/A==", "f39/fw==", "", "not base64!", "AAA"])
IDS = st.sampled_from(["r1", "r2", "greet", "c1", "c2", None, 7, ""])
JUNK: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                  max_size=3),
    max_leaves=6)
MAYBE_JUNK = st.one_of(IDS, JUNK)


# A well-formed start, caller audio and session.ready, often enough that in most examples
# sessions open, drop and resume.
START = {"event": "start", "start": {"streamSid": "MZ1", "callSid": "CA1",
                                     "customParameters": {"token": "t"}}}
MEDIA = {"event": "media", "media": {"track": "inbound", "payload": "f39/fw=="}}
READY = st.fixed_dictionaries({
    "type": st.just("session.ready"), "session_id": st.sampled_from(["sess_1", "sess_2"]),
    "resume_token": st.sampled_from(["rt2", ""])})


def twilio_messages() -> st.SearchStrategy[Any]:
    start = st.fixed_dictionaries({
        "event": st.just("start"),
        "start": st.one_of(st.fixed_dictionaries({
            "streamSid": st.sampled_from(["MZ1", "MZ2", "", None]),
            "callSid": st.sampled_from(["CA1", None, 3]),
            "customParameters": st.one_of(
                st.just({"token": "t", "greeting": "hi"}), st.just({}), JUNK),
        }), JUNK),
    })
    media = st.fixed_dictionaries({
        "event": st.just("media"),
        "media": st.one_of(st.fixed_dictionaries({
            "payload": st.one_of(B64, JUNK),
            "track": st.sampled_from(["inbound", "outbound", "x"]),
        }), JUNK),
    })
    mark = st.fixed_dictionaries({"event": st.just("mark"), "mark": st.one_of(
        st.fixed_dictionaries({"name": st.sampled_from(["hangup", "1:r1", "2:r2", "x"])}),
        JUNK)})
    dtmf = st.fixed_dictionaries({"event": st.just("dtmf"), "dtmf": st.one_of(
        st.fixed_dictionaries({"digit": st.sampled_from(["1", "#", ""])}), JUNK)})
    other = st.fixed_dictionaries({"event": st.sampled_from(["connected", "stop", "what"])})
    return st.one_of(start, media, mark, dtmf, other, JUNK)


def agent_messages_() -> st.SearchStrategy[Any]:
    kinds = st.sampled_from([
        "session.ready", "reply.started", "reply.audio", "reply.done", "input.speech.started",
        "input.speech.stopped", "transcript.agent", "transcript.user", "tool.call",
        "session.error", "error", "session.ended", "reply.error", "new.thing"])
    return st.one_of(
        st.fixed_dictionaries({"type": kinds}, optional={
            "reply_id": MAYBE_JUNK, "data": st.one_of(B64, JUNK),
            "status": st.sampled_from(["completed", "interrupted", None, 1]),
            "call_id": MAYBE_JUNK, "name": st.sampled_from(["clock", "", None]),
            "arguments": st.sampled_from(['{"a": 1}', "{bad", "", "[1]", None, {"a": 1}, 5]),
            "code": st.sampled_from(["invalid_audio", "unauthorized", "internal_error", None]),
            "session_id": MAYBE_JUNK, "interrupted": st.booleans(), "text": JUNK,
        }),
        JUNK)


# How an attempt fails, as the link attempts report it (``LinkAttempts._try``, ``_closed``).
FAILURES = st.sampled_from([
    Failure(Kind.HTTP, "the upgrade was answered HTTP 503", status=503),
    Failure(Kind.HTTP, "the upgrade was answered HTTP 401", status=401),
    Failure(Kind.HTTP, "the upgrade was answered HTTP 429", status=429),
    Failure(Kind.TIMEOUT, "no handshake within 2 s"),
    Failure(Kind.TIMEOUT, "no session.ready within 3.0 s"),
    Failure(Kind.NETWORK, "unreachable: ConnectionRefusedError: refused"),
    Failure(Kind.CLOSED, "closed 1011", close_code=1011),
    Failure(Kind.CLOSED, "closed 1008", close_code=1008),
])
OPEN = st.just(("open", None))  # the attempt's link is open (after its delay)
LOST = st.tuples(st.just("lost"), st.sampled_from(["closed 1006", "closed 1011", "ping timeout"]))
# Opens and drops twice as often as failures and waits, so that most examples resume a session.
LINK = [
    OPEN, OPEN, LOST, LOST,
    st.tuples(st.just("fail"), FAILURES),  # the attempt ended without session.ready
    st.tuples(st.just("wait"), st.sampled_from([0.5, 2.0, 5.0, 30.0])),  # time passes
]
TAKE_OVER = st.one_of(st.none(), st.tuples(st.sampled_from(["sess_1", "sess_old"]),
                                           st.sampled_from(["rt1", None])))

STEPS = st.lists(st.one_of(
    st.tuples(st.just("twilio"), st.just(START)),
    st.tuples(st.just("twilio"), st.just(MEDIA)),
    st.tuples(st.just("agent"), READY),
    st.tuples(st.just("agent"), READY),
    st.tuples(st.just("twilio"), twilio_messages()),
    st.tuples(st.just("agent"), agent_messages_()),
    st.tuples(st.just("tool_done"), st.tuples(st.booleans(), st.text(max_size=10))),
    st.tuples(st.just("finish"), st.sampled_from(["hangup", "transfer"])),
    *(st.tuples(st.just("link"), link) for link in LINK),
), min_size=20, max_size=60)


class Receivers:
    """Checks each emitted message against what its receiver accepts, and plays the bridge's
    part for the link: which attempt is in flight, which link is open, what it was sent."""

    def __init__(self, protocol: CallProtocol,
                 take_over: tuple[str, str | None] | None = None) -> None:
        self.protocol = protocol
        self.now = 0.0
        self.take_over = take_over  # a restream that finds a live session in the directory
        self.attempt = False  # an OpenLink in flight: its link not open yet
        self.link = True  # a link is open (new_protocol opened the first one)
        self.sent_on_link: list[str] = []  # the types sent on the open link, in order
        self.session_updates = 0
        self.ready_seen = False
        self.tools: list[str] = []

    def link_step(self, what: str, arg: Any) -> list[Any] | None:
        """What the bridge would report now, or None when it has nothing to report."""
        protocol = self.protocol
        if what == "wait":
            self.now += arg
            return None
        if what == "open" and self.attempt:
            self.attempt, self.link = False, True
            self.sent_on_link, self.session_updates, self.ready_seen = [], 0, False
            return protocol.link_opened()
        if what == "fail" and (self.attempt or (self.link and not self.ready_seen)):
            self.attempt = self.link = False  # the bridge drops the failed link
            return protocol.link_failed(arg, self.now)
        if what == "lost" and self.link and self.ready_seen and not protocol.ended:
            self.link = False
            return protocol.link_lost(arg, self.now)
        return None

    def agent_may_send(self, payload: Any) -> bool:
        """Only an open link delivers; session.ready answers the link's first message."""
        if not self.link:
            return False
        if isinstance(payload, dict) and payload.get("type") == "session.ready":
            if not {"session.update", "session.resume"} & set(self.sent_on_link):
                return False
            self.ready_seen = True  # the agent said it: audio may flow
        return True

    def check(self, actions: list[Any]) -> None:
        assert isinstance(actions, list)
        for action in actions:
            if isinstance(action, ToTwilio):
                self._twilio(dict(action.message))
            elif isinstance(action, ToAgent):
                self._agent(dict(action.message))
            elif isinstance(action, RunTool):
                assert isinstance(action.call_id, str) and action.call_id
                assert isinstance(action.name, str) and isinstance(action.arguments, dict)
                self.tools.append(action.call_id)
            elif isinstance(action, Authorize):
                # the bridge checks the token, then opens the session, or takes over the one
                # the directory names (dropping the link it opened for a first session)
                assert action.info is self.protocol.info and isinstance(action.info.call_sid, str)
                if self.take_over is not None:
                    session_id, resume_token = self.take_over
                    self.take_over = None
                    self.attempt = self.link = self.ready_seen = False
                    self.check(self.protocol.take_over(session_id, resume_token, self.now))
                else:
                    self.check(self.protocol.open_session())
            elif isinstance(action, LinkReady):  # the bridge reports the link ready
                self.check(self.protocol.link_ready(self.now))
            elif isinstance(action, LinkFailed):  # the bridge reports the attempt failed
                assert self.link and not self.attempt, "session.error before ready, on no link"
                self.link = self.ready_seen = False
                self.check(self.protocol.link_failed(action.failure, self.now))
            elif isinstance(action, OpenLink):  # a new attempt: its link opens in a later step
                assert not self.link, "a new link while one is open"
                self.attempt, self.ready_seen = True, False
            else:
                assert isinstance(action, Log | EndCall | Transfer)

    def _twilio(self, msg: dict[str, Any]) -> None:
        info = self.protocol.info
        assert info is not None, "nothing goes to Twilio before start"
        assert msg["streamSid"] == info.stream_sid and isinstance(msg["streamSid"], str)
        assert msg["event"] in ("media", "mark", "clear")
        if msg["event"] == "media":
            assert isinstance(msg["media"]["payload"], str)
        if msg["event"] == "mark":
            assert isinstance(msg["mark"]["name"], str)

    def _agent(self, msg: dict[str, Any]) -> None:
        kind = msg["type"]
        if not self.link:
            return  # no link: the bridge sends nothing (``_send_agent``)
        self.sent_on_link.append(kind)
        if kind == "session.update":
            self.session_updates += 1
            assert self.session_updates == 1, "one session.update per session"
            assert "session.resume" not in self.sent_on_link, "a resumed session is configured"
        elif kind == "session.resume":
            assert self.sent_on_link == ["session.resume"], "session.resume only comes first"
            assert isinstance(msg["session_id"], str) and msg["session_id"]
        elif kind == "input.audio":
            assert self.ready_seen, "input.audio before session.ready"
            assert isinstance(msg["audio"], str)
        elif kind == "tool.result":
            assert isinstance(msg["result"], str) and isinstance(msg["call_id"], str)
            assert isinstance(msg.get("is_error", False), bool)
        else:
            assert kind == "reply.create" and isinstance(msg["instructions"], str)


def new_protocol(timing: str) -> CallProtocol:
    update = agent_messages.session_update(system_prompt="p", greeting="g", voice="ivy",
                                           tools=[], tool_timeout=1.0)
    protocol = CallProtocol(session_update=update, tool_result_timing=timing)
    protocol.begin(0.0)
    assert protocol.link_opened() == []  # the first link is up before start: nothing to send
    return protocol


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=STEPS, timing=st.sampled_from(["after_reply", "immediate"]), take_over=TAKE_OVER)
def test_any_sequence_raises_only_protocol_violations_and_emits_valid_messages(
        steps: list[tuple[str, Any]], timing: str,
        take_over: tuple[str, str | None] | None) -> None:
    protocol = new_protocol(timing)
    receivers = Receivers(protocol, take_over)
    for side, payload in steps:
        try:
            if side == "twilio":
                actions = protocol.twilio_message(payload)
            elif side == "link":
                reported = receivers.link_step(*payload)
                if reported is None:
                    continue
                actions = reported
            elif side == "agent":
                if not receivers.agent_may_send(payload):
                    continue
                actions = protocol.agent_message(payload)
            elif side == "tool_done":
                if not receivers.tools:
                    continue  # the bridge reports only tools the protocol asked to run
                is_error, result = payload
                actions = protocol.tool_finished(receivers.tools.pop(0), result,
                                                 is_error=is_error)
            else:
                action = EndCall("bye", 1000, Outcome.COMPLETED) if payload == "hangup" else Transfer("+15550001111")
                actions = protocol.finish_after_goodbye(action, None) or []
        except ProtocolViolation:
            continue
        receivers.check(actions)
