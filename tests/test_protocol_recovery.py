"""CallProtocol and a replaceable agent link: link lost, link ready again; dicts in, actions out."""

from __future__ import annotations

from typing import Any

from relay.actions import EndCall, LinkFailed, LinkReady, Log, OpenLink, RunTool, ToAgent, ToTwilio
from relay.agent_messages import session_update
from relay.outcomes import Outcome
from relay.protocol import CallProtocol
from relay.recovery import Failure, Kind, Mode
from tests.test_protocol import AUDIO, SID, START, media, opened

UPDATE = session_update(system_prompt="p", greeting="hello", voice="ivy", tools=[])
AGAIN = "Sorry, say again?"


def wire(actions: list[Any]) -> list[Any]:
    return [a for a in actions if isinstance(a, ToAgent | ToTwilio)]


def of(kind: type, actions: list[Any]) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


def ready_call() -> CallProtocol:
    call = CallProtocol(session_update=UPDATE, reconnect_greeting=AGAIN)
    opened(call, START)
    assert call.agent_message({"type": "session.ready", "session_id": "sess_1",
                               "resume_token": "rt_1"}) == [LinkReady()]
    call.link_ready(0.1)
    return call


def test_a_drop_cuts_what_plays_and_asks_to_resume_with_the_resume_token() -> None:
    call = ready_call()
    call.agent_message({"type": "reply.started", "reply_id": "r1"})
    call.agent_message({"type": "reply.audio", "reply_id": "r1", "data": AUDIO})
    actions = call.link_lost("connection lost (close code 1006)", now=10.0)
    assert wire(actions) == [ToTwilio({"event": "clear", "streamSid": SID})]
    (open_link,) = of(OpenLink, actions)
    assert open_link.attempt.mode is Mode.RESUME and open_link.credential == "rt_1"
    (line,) = [a for a in actions if isinstance(a, Log) and a.kind == "agent.fault"]
    assert "sess_1" in line.message and "resuming" in line.message
    # the gap: caller audio is dropped, never queued for later
    assert call.twilio_message(media()) == []
    assert call.dropped_before_ready == 1
    # the new link's first message is session.resume with the saved id
    assert wire(call.link_opened()) == [
        ToAgent({"type": "session.resume", "session_id": "sess_1"})]
    assert call.agent_message({"type": "session.ready", "session_id": "sess_1",
                               "resume_token": "rt_2"}) == [LinkReady()]
    back = call.link_ready(10.4)
    assert any("resumed after 0.4 s" in a.message for a in of(Log, back))
    assert call.resume_token == "rt_2"
    # the interrupted reply stays muted on the resumed session; new audio flows
    assert call.agent_message({"type": "reply.audio", "reply_id": "r1", "data": AUDIO}) == []
    assert wire(call.twilio_message(media())) == [ToAgent({"type": "input.audio",
                                                           "audio": AUDIO})]


def test_a_silent_drop_clears_nothing_when_nothing_plays() -> None:
    call = ready_call()
    assert wire(call.link_lost("lost", now=1.0)) == []


def test_a_refused_resume_opens_a_fresh_session_with_the_reconnect_greeting() -> None:
    call = ready_call()
    call.link_lost("lost", now=0.0)
    call.link_opened()
    (failed,) = of(LinkFailed, call.agent_message({
        "type": "session.error", "code": "session_not_found", "message": "gone"}))
    assert failed.failure.code == "session_not_found"
    actions = call.link_failed(failed.failure, now=0.2)
    (open_link,) = of(OpenLink, actions)
    assert open_link.attempt.mode is Mode.FRESH and open_link.credential is None
    (update,) = wire(call.link_opened())
    assert update.message["type"] == "session.update"
    assert update.message["session"]["greeting"] == AGAIN
    assert UPDATE["session"]["greeting"] == "hello"  # the shared default is untouched
    call.agent_message({"type": "session.ready", "session_id": "sess_2"})
    back = call.link_ready(0.5)
    assert any("fresh agent session" in a.message for a in of(Log, back))


def test_without_a_reconnect_greeting_the_fresh_session_listens_first() -> None:
    call = CallProtocol(session_update=UPDATE, reconnect_greeting=None)
    opened(call, START)
    call.agent_message({"type": "session.ready"})  # no session_id: nothing to resume
    call.link_ready(0.0)
    (open_link,) = of(OpenLink, call.link_lost("lost", now=0.0))
    assert open_link.attempt.mode is Mode.FRESH
    (update,) = wire(call.link_opened())
    assert "greeting" not in update.message["session"]


def test_a_tool_result_across_a_resume_goes_to_the_resumed_session() -> None:
    call = ready_call()
    call.agent_message({"type": "reply.started", "reply_id": "r1"})
    assert of(RunTool, call.agent_message(
        {"type": "tool.call", "call_id": "c1", "name": "f", "arguments": {}}))
    call.agent_message({"type": "reply.done", "reply_id": "r1"})
    call.link_lost("lost", now=0.0)
    held = call.tool_finished("c1", '{"ok": true}', is_error=False)
    assert wire(held) == []  # no link: held
    call.link_opened()
    call.agent_message({"type": "session.ready", "session_id": "sess_1"})
    assert wire(call.link_ready(0.1)) == [ToAgent(
        {"type": "tool.result", "call_id": "c1", "result": '{"ok": true}', "is_error": False})]


def test_a_tool_result_across_a_fresh_session_is_dropped() -> None:
    call = ready_call()
    call.agent_message({"type": "tool.call", "call_id": "c1", "name": "f", "arguments": {}})
    call.agent_message({"type": "tool.call", "call_id": "c2", "name": "g", "arguments": {}})
    call.link_lost("lost", now=0.0)
    call.tool_finished("c1", "{}", is_error=False)  # finished during the gap
    call.link_opened()
    step = call.link_failed(Failure(Kind.ERROR, "gone", code="session_not_found"), now=0.1)
    assert of(OpenLink, step)
    call.link_opened()
    call.agent_message({"type": "session.ready", "session_id": "sess_2"})
    back = call.link_ready(0.2)
    assert wire(back) == []
    assert any("c1 dropped" in a.message for a in of(Log, back))
    late = call.tool_finished("c2", "{}", is_error=False)  # still running at the switch
    assert wire(late) == [] and any("c2 dropped" in a.message for a in of(Log, late))


def test_before_ready_a_session_error_fails_the_attempt_and_a_retry_resends_the_update() -> None:
    call = CallProtocol(session_update=UPDATE)
    (first,) = of(OpenLink, call.begin(0.0))
    assert first.attempt.mode is Mode.FIRST
    opened(call, START)
    (failed,) = of(LinkFailed, call.agent_message({"type": "session.error",
                                                   "code": "at_capacity"}))
    (retry,) = of(OpenLink, call.link_failed(failed.failure, now=0.1))
    assert retry.attempt.number == 2 and retry.attempt.delay > 0
    assert wire(call.link_opened()) == [ToAgent(UPDATE)]
    (failed,) = of(LinkFailed, call.agent_message({"type": "session.error",
                                                   "code": "at_capacity"}))
    actions = call.link_failed(failed.failure, now=0.5)
    (end,) = of(EndCall, actions)
    assert end.outcome is Outcome.AGENT_FAILED and end.code == 1011


def test_reconnect_results_are_reported_for_the_metrics() -> None:
    def results(actions: list[Any]) -> list[str]:
        return [a.data["result"] for a in of(Log, actions) if a.kind == "agent.reconnect"]

    call = ready_call()
    call.link_lost("lost", now=0.0)
    call.link_opened()
    call.agent_message({"type": "session.ready", "session_id": "sess_1"})
    assert results(call.link_ready(0.1)) == ["resumed"]
    call.link_lost("lost", now=1.0)
    call.link_opened()
    step = call.link_failed(Failure(Kind.TIMEOUT, "silent"), now=1.0 + 7.0)
    assert results(step) == ["failed"]
