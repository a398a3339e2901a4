"""Property tests: random and malformed message sequences from both sides into ``CallProtocol``.

Whatever arrives, in whatever order, the protocol raises nothing but ``ProtocolViolation`` (the
bridge drops that message and goes on, as here), and every message it emits is valid for its
receiver: Twilio messages carry the call's ``streamSid``, ``tool.result`` has a string
``result``, no ``input.audio`` goes out before ``session.ready``, at most one
``session.update`` per session.
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
from relay.protocol import CallProtocol

B64 = st.sampled_from(["AAAA", "//79/A==", "f39/fw==", "", "not base64!", "AAA"])
IDS = st.sampled_from(["r1", "r2", "greet", "c1", "c2", None, 7, ""])
JUNK: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                  max_size=3),
    max_leaves=6)
MAYBE_JUNK = st.one_of(IDS, JUNK)


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


STEPS = st.lists(st.one_of(
    st.tuples(st.just("twilio"), twilio_messages()),
    st.tuples(st.just("agent"), agent_messages_()),
    st.tuples(st.just("tool_done"), st.tuples(st.booleans(), st.text(max_size=10))),
    st.tuples(st.just("finish"), st.sampled_from(["hangup", "transfer"])),
), max_size=40)


class Receivers:
    """Checks each emitted message against what its receiver accepts."""

    def __init__(self, protocol: CallProtocol) -> None:
        self.protocol = protocol
        self.session_updates = 0
        self.ready_seen = False
        self.tools: list[str] = []

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
                # the bridge checks the token, then opens the session
                assert action.info is self.protocol.info and isinstance(action.info.call_sid, str)
                self.check(self.protocol.open_session())
            elif isinstance(action, LinkReady):  # the bridge reports the link ready
                self.check(self.protocol.link_ready(0.0))
            elif isinstance(action, LinkFailed):  # the bridge reports the attempt failed
                self.check(self.protocol.link_failed(action.failure, 0.0))
            elif isinstance(action, OpenLink):  # a new link: a new session on it
                self.session_updates, self.ready_seen = 0, False
                self.check(self.protocol.link_opened())
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
        if kind == "session.update":
            self.session_updates += 1
            assert self.session_updates == 1, "one session.update per session"
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
@given(steps=STEPS, timing=st.sampled_from(["after_reply", "immediate"]))
def test_any_sequence_raises_only_protocol_violations_and_emits_valid_messages(
        steps: list[tuple[str, Any]], timing: str) -> None:
    protocol = new_protocol(timing)
    receivers = Receivers(protocol)
    for side, payload in steps:
        try:
            if side == "twilio":
                actions = protocol.twilio_message(payload)
            elif side == "agent":
                if (isinstance(payload, dict) and payload.get("type") == "session.ready"):
                    receivers.ready_seen = True  # the agent said it: audio may flow
                actions = protocol.agent_message(payload)
            elif side == "tool_done":
                if not receivers.tools:
                    continue  # the bridge reports only tools the protocol asked to run
                is_error, result = payload
                actions = protocol.tool_finished(receivers.tools.pop(0), result,
                                                 is_error=is_error)
            else:
                action = EndCall("bye") if payload == "hangup" else Transfer("+15550001111")
                actions = protocol.finish_after_goodbye(action, None)
        except ProtocolViolation:
            continue
        receivers.check(actions)
