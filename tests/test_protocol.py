"""CallProtocol: dicts in, actions out, no sockets."""

from __future__ import annotations

import pytest

from relay.actions import (
    Authorize,
    EndCall,
    LinkReady,
    Log,
    RunTool,
    StreamInfo,
    ToAgent,
    ToTwilio,
    Transfer,
)
from relay.agent_messages import session_update
from relay.errors import ProtocolViolation
from relay.outcomes import Outcome
from relay.protocol import CallProtocol

SID = "MZ" + "1" * 32
UPDATE = session_update(system_prompt="p", greeting="hello", voice="ivy", tools=[])
START = {"event": "start", "sequenceNumber": "1", "streamSid": SID,
         "start": {"streamSid": SID, "callSid": "CA1", "accountSid": "AC1",
                   "customParameters": {"token": "t", "caller": "+1555"}}}
AUDIO = "fn5+fn5+/w=="


def media(payload: str = AUDIO, track: str = "inbound") -> dict[str, object]:
    return {"event": "media", "streamSid": SID,
            "media": {"track": track, "chunk": "1", "timestamp": "20", "payload": payload}}


def wire(actions: list) -> list:
    """Only what goes on the wire (drop log lines)."""
    return [a for a in actions if not isinstance(a, Log)]


def opened(call: CallProtocol, start: dict[str, object] = START) -> list:
    """``start`` as the bridge handles it: the link up, start authorized, the session opened."""
    if not call.link_up:
        call.begin(0.0)
        assert call.link_opened() == []  # nothing to send before start
    (authorize,) = call.twilio_message(start)
    assert isinstance(authorize, Authorize)
    return call.open_session()


def started(**kwargs: object) -> CallProtocol:
    call = CallProtocol(session_update=UPDATE, **kwargs)  # type: ignore[arg-type]
    opened(call)
    assert call.agent_message({"type": "session.ready", "session_id": "sess_1",
                               "resume_token": "rt"}) == [LinkReady()]
    call.link_ready(0.1)
    return call


def test_start_opens_the_session_with_the_update() -> None:
    call = CallProtocol(session_update=UPDATE)
    assert call.twilio_message({"event": "connected", "protocol": "Call", "version": "1.0.0"}) == []
    info = StreamInfo(stream_sid=SID, call_sid="CA1",
                      parameters={"token": "t", "caller": "+1555"})
    assert call.twilio_message(START) == [Authorize(info)]  # parsed once, here
    assert call.info == info and not call.session_open  # nothing sent before the token check
    assert call.open_session() == []  # no agent link yet: the link sends it once open
    assert call.session_open
    call.begin(0.0)
    assert wire(call.link_opened()) == [ToAgent(UPDATE)]
    assert wire(call.open_session()) == [ToAgent(UPDATE)]
    assert call.session_open


def test_session_open_until_the_agent_ends_it() -> None:
    call = CallProtocol(session_update=UPDATE)
    assert not call.session_open
    call.twilio_message(START)
    assert not call.session_open  # started, but not authorized: no session to end
    call.open_session()
    call.agent_message({"type": "session.ready", "session_id": "s"})
    assert call.session_open
    call.agent_message({"type": "session.ended"})
    assert not call.session_open


@pytest.mark.parametrize("start", [
    {"event": "start"}, {"event": "start", "start": {}},
    {"event": "start", "start": {"streamSid": SID, "callSid": "CA1", "customParameters": ["token"]}},
])
def test_malformed_start_ends_the_stream(start: dict[str, object]) -> None:
    call = CallProtocol(session_update=UPDATE)
    (end,) = call.twilio_message(start)
    assert isinstance(end, EndCall) and end.code == 1008
    assert end.reason.startswith("malformed start message")
    assert call.info is None and not call.session_open


def test_per_call_greeting_and_prompt_override_the_defaults() -> None:
    call = CallProtocol(session_update=UPDATE)
    start = {**START, "start": {**START["start"], "customParameters": {  # type: ignore[dict-item]
        "token": "t", "greeting": "Hi, this is a reminder.", "prompt": "Remind them."}}}
    (update,) = wire(opened(call, start))
    assert update.message["session"]["greeting"] == "Hi, this is a reminder."
    assert update.message["session"]["system_prompt"] == "Remind them."
    assert UPDATE["session"]["greeting"] == "hello"  # the shared default is untouched


def test_caller_audio_passes_through_untouched_after_ready() -> None:
    call = CallProtocol(session_update=UPDATE)
    opened(call)
    assert call.twilio_message(media()) == []  # not ready yet: dropped, never queued
    assert call.dropped_before_ready == 1
    call.agent_message({"type": "session.ready", "session_id": "s"})
    assert wire(call.twilio_message(media())) == [ToAgent({"type": "input.audio", "audio": AUDIO})]
    assert call.twilio_message(media(track="outbound")) == []


def test_agent_audio_passes_through_untouched() -> None:
    call = started()
    actions = call.agent_message({"type": "reply.audio", "reply_id": "r1", "data": AUDIO})
    assert wire(actions) == [ToTwilio({"event": "media", "streamSid": SID, "media": {"payload": AUDIO}})]


def test_agent_audio_before_start_is_a_violation() -> None:
    # The agent speaks only after session.update, which is sent only after start.
    call = CallProtocol(session_update=UPDATE)
    call.agent_message({"type": "session.ready", "session_id": "s"})
    with pytest.raises(ProtocolViolation, match="before the call started"):
        call.agent_message({"type": "reply.audio", "reply_id": "r", "data": "AAAA"})
    assert wire(opened(call)) == [ToAgent(UPDATE)]


@pytest.mark.parametrize("bad", [
    [], "x", 3, {"event": "media"}, media(payload="not base64!"), media(payload="abc"),
    {"event": "media", "media": {"payload": 5}},
])
def test_bad_twilio_media_is_a_violation(bad: object) -> None:
    call = started()
    with pytest.raises(ProtocolViolation):
        call.twilio_message(bad)


def test_media_before_start_is_a_violation() -> None:
    with pytest.raises(ProtocolViolation, match="before start"):
        CallProtocol(session_update=UPDATE).twilio_message(media())


def test_second_start_is_a_violation() -> None:
    call = started()
    with pytest.raises(ProtocolViolation):
        call.twilio_message(START)


def test_unknown_events_are_reported_once_and_ignored() -> None:
    call = started()
    first = call.twilio_message({"event": "weird"})
    assert len(first) == 1 and isinstance(first[0], Log) and first[0].level == "WARNING"
    assert call.twilio_message({"event": "weird"}) == []
    assert len(call.agent_message({"type": "future.event"})) == 1
    assert call.agent_message({"type": "future.event"}) == []


def test_barge_in_clears_and_mutes_the_interrupted_reply() -> None:
    call = started()
    clear = ToTwilio({"event": "clear", "streamSid": SID})
    call.agent_message({"type": "reply.started", "reply_id": "r1"})
    assert wire(call.agent_message({"type": "input.speech.started"})) == [clear]
    # audio of r1 still arrives before the agent reports the interruption: still forwarded
    assert len(wire(call.agent_message({"type": "reply.audio", "reply_id": "r1", "data": AUDIO}))) == 1
    assert wire(call.agent_message({"type": "reply.done", "reply_id": "r1", "status": "interrupted"})) == [clear]
    # late audio of the interrupted reply never reaches the caller
    assert call.agent_message({"type": "reply.audio", "reply_id": "r1", "data": AUDIO}) == []
    assert call.dropped_muted == 1
    call.agent_message({"type": "reply.started", "reply_id": "r2"})
    assert len(wire(call.agent_message({"type": "reply.audio", "reply_id": "r2", "data": AUDIO}))) == 1


def test_interrupted_reply_without_reply_ids_is_muted_until_the_next_reply() -> None:
    call = started()
    call.agent_message({"type": "reply.started"})
    call.agent_message({"type": "transcript.agent", "text": "Hel", "interrupted": True})
    assert call.agent_message({"type": "reply.audio", "data": AUDIO}) == []
    call.agent_message({"type": "reply.done", "status": "interrupted"})
    assert call.agent_message({"type": "reply.audio", "data": AUDIO}) == []
    call.agent_message({"type": "reply.started"})
    assert len(wire(call.agent_message({"type": "reply.audio", "data": AUDIO}))) == 1


def test_completed_reply_gets_a_mark_and_its_echo_is_logged_heard_or_flushed() -> None:
    call = started()
    call.agent_message({"type": "reply.started", "reply_id": "r1"})
    (mark,) = wire(call.agent_message({"type": "reply.done", "reply_id": "r1"}))
    name = mark.message["mark"]["name"]
    assert mark == ToTwilio({"event": "mark", "streamSid": SID, "mark": {"name": name}})
    echo = {"event": "mark", "streamSid": SID, "mark": {"name": name}}
    assert call.twilio_message(echo) == [Log("reply r1 heard", kind="reply.heard", data={"reply_id": "r1"})]
    assert call.twilio_message(echo) == []  # late duplicate: ignored
    call.agent_message({"type": "reply.done", "reply_id": "r2", "status": "completed"})
    name2 = "2:r2"
    call.agent_message({"type": "input.speech.started"})
    assert call.twilio_message({"event": "mark", "mark": {"name": name2}}) == [
        Log("reply r2 flushed by barge-in", "DEBUG", kind="reply.flushed",
            data={"reply_id": "r2"})]


def test_dtmf_reaches_the_agent_as_a_reply_request() -> None:
    call = started()
    actions = wire(call.twilio_message({"event": "dtmf", "dtmf": {"track": "inbound_track", "digit": "5"}}))
    assert actions == [ToAgent({"type": "reply.create",
                                "instructions": "The caller pressed the key 5 on their phone keypad."})]


def test_stop_and_session_ended_end_the_call() -> None:
    assert started().twilio_message({"event": "stop"}) == [
        EndCall("caller hung up", 1000, Outcome.CALLER_HUNG_UP)]
    call = started()
    assert call.agent_message({"type": "session.ended"}) == [
        EndCall("agent ended the session", 1000, Outcome.AGENT_ENDED)]
    assert call.ended


@pytest.mark.parametrize("msg,outcome", [
    ({"type": "session.error", "code": "unauthorized", "message": "bad key"},
     Outcome.AGENT_FAILED),
    ({"type": "error", "code": "SESSION_EXPIRED"}, Outcome.AGENT_ENDED),  # its own end: goodbye
    ({"code": "internal_error", "message": "typeless"}, Outcome.AGENT_FAILED),
    ({"type": "session.error", "code": "invalid_audio"}, None),
])
def test_agent_errors_mid_call_are_classified(msg: dict[str, object],
                                              outcome: Outcome | None) -> None:
    actions = started().agent_message(msg)
    ends = [a for a in actions if isinstance(a, EndCall)]
    assert [end.outcome for end in ends] == ([outcome] if outcome else [])
    assert all(end.code == (1000 if outcome is Outcome.AGENT_ENDED else 1011) for end in ends)


def test_tool_call_accepts_arguments_or_args_as_object_or_string() -> None:
    call = started()
    for msg in ({"type": "tool.call", "call_id": "c1", "name": "f", "arguments": {"a": 1}},
                {"type": "tool.call", "call_id": "c1", "name": "f", "arguments": '{"a": 1}'},
                {"type": "tool.call", "call_id": "c1", "name": "f", "args": {"a": 1}},
                {"type": "tool.call", "call_id": "c1", "name": "f", "args": '{"a": 1}'}):
        assert wire(call.agent_message(msg)) == [RunTool("c1", "f", {"a": 1})]
    assert wire(call.agent_message({"type": "tool.call", "call_id": "c2", "name": "f"})) == [
        RunTool("c2", "f", {})]


def test_tool_call_before_the_call_started_is_a_violation() -> None:
    call = CallProtocol(session_update=UPDATE)
    with pytest.raises(ProtocolViolation, match="before the call started"):
        call.agent_message({"type": "tool.call", "call_id": "c1", "name": "f", "arguments": {}})


def test_malformed_tool_call_is_answered_with_an_error() -> None:
    call = started(tool_result_timing="immediate")
    (result,) = wire(call.agent_message({"type": "tool.call", "call_id": "c1", "name": "f",
                                         "arguments": "{not json"}))
    assert result.message["type"] == "tool.result" and result.message["is_error"] is True
    assert isinstance(result.message["result"], str)


def test_tool_result_waits_for_reply_done() -> None:
    call = started()
    call.agent_message({"type": "reply.started", "reply_id": "r1"})
    call.agent_message({"type": "tool.call", "call_id": "c1", "name": "f", "arguments": {}})
    assert wire(call.tool_finished("c1", '{"ok": 1}', is_error=False)) == []
    result = ToAgent({"type": "tool.result", "call_id": "c1", "result": '{"ok": 1}', "is_error": False})
    assert result in call.agent_message({"type": "reply.done", "reply_id": "r1"})


def test_tool_result_is_sent_at_once_when_reply_done_is_the_latest_event() -> None:
    call = started()
    call.agent_message({"type": "reply.started", "reply_id": "r1"})
    call.agent_message({"type": "tool.call", "call_id": "c1", "name": "f", "arguments": {}})
    call.agent_message({"type": "reply.done", "reply_id": "r1"})
    assert len(wire(call.tool_finished("c1", "{}", is_error=False))) == 1
    # but not once the caller started speaking again
    call.agent_message({"type": "tool.call", "call_id": "c2", "name": "f", "arguments": {}})
    call.agent_message({"type": "reply.done"})
    call.agent_message({"type": "input.speech.started"})
    assert wire(call.tool_finished("c2", "{}", is_error=False)) == []


def test_immediate_timing_sends_results_at_once() -> None:
    call = started(tool_result_timing="immediate")
    call.agent_message({"type": "reply.started", "reply_id": "r1"})
    call.agent_message({"type": "tool.call", "call_id": "c1", "name": "f", "arguments": {}})
    assert len(wire(call.tool_finished("c1", "{}", is_error=False))) == 1


def test_results_of_an_interrupted_reply_are_dropped() -> None:
    call = started()
    call.agent_message({"type": "reply.started", "reply_id": "r1"})
    call.agent_message({"type": "tool.call", "call_id": "c1", "name": "f", "arguments": {}})
    call.agent_message({"type": "tool.call", "call_id": "c2", "name": "g", "arguments": {}})
    call.tool_finished("c1", "{}", is_error=False)  # pending
    call.agent_message({"type": "reply.done", "reply_id": "r1", "status": "interrupted"})
    assert wire(call.tool_finished("c2", "{}", is_error=False)) == []
    call.agent_message({"type": "reply.started", "reply_id": "r2"})
    assert not any(isinstance(a, ToAgent) for a in call.agent_message({"type": "reply.done", "reply_id": "r2"}))


def test_hang_up_waits_for_the_goodbye_to_be_heard() -> None:
    call = started()
    call.agent_message({"type": "reply.started", "reply_id": "r1"})
    call.agent_message({"type": "tool.call", "call_id": "c1", "name": "end_call", "arguments": {}})
    call.finish_after_goodbye(EndCall("agent ended the call", 1000, Outcome.COMPLETED), "c1")
    call.tool_finished("c1", "{}", is_error=False)
    # the filler reply ends: the result goes out, but that reply is not the goodbye
    done = call.agent_message({"type": "reply.done", "reply_id": "r1"})
    assert not any(a.message.get("mark", {}).get("name") == "hangup" for a in done if isinstance(a, ToTwilio))
    call.agent_message({"type": "reply.started", "reply_id": "r2"})
    call.agent_message({"type": "reply.audio", "reply_id": "r2", "data": AUDIO})
    done = wire(call.agent_message({"type": "reply.done", "reply_id": "r2"}))
    assert done[-1] == ToTwilio({"event": "mark", "streamSid": SID, "mark": {"name": "hangup"}})
    assert wire(call.twilio_message({"event": "mark", "mark": {"name": "hangup"}})) == [
        EndCall("agent ended the call", 1000, Outcome.COMPLETED)]


def test_transfer_without_a_tool_call_follows_the_next_reply() -> None:
    call = started()
    call.finish_after_goodbye(Transfer("+15550009999"))
    call.agent_message({"type": "reply.started", "reply_id": "r1"})
    assert wire(call.agent_message({"type": "reply.done", "reply_id": "r1"}))[-1].message["mark"]["name"] == "hangup"
    assert wire(call.twilio_message({"event": "mark", "mark": {"name": "hangup"}})) == [
        Transfer("+15550009999")]


def test_a_second_request_to_finish_is_refused_and_the_first_one_stands() -> None:
    call = started()
    assert call.finish_after_goodbye(EndCall("agent ended the call", 1000, Outcome.COMPLETED)) is not None
    assert call.finish_after_goodbye(Transfer("+15550009999")) is None
    call.agent_message({"type": "reply.started", "reply_id": "r1"})
    call.agent_message({"type": "reply.done", "reply_id": "r1"})
    assert wire(call.twilio_message({"event": "mark", "mark": {"name": "hangup"}})) == [
        EndCall("agent ended the call", 1000, Outcome.COMPLETED)]
