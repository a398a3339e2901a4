"""Taking over a call whose instance died: the action's decision and the protocol's resume."""

from __future__ import annotations

from typing import Any

from relay.call_directory import LiveEntry
from relay.protocol import Authorize, CallProtocol, LinkFailed, LinkReady, OpenLink, ToAgent
from relay.recovery import Mode
from relay.takeover import MAX_RESTREAMS, restream_parameters, restreams
from tests.test_protocol import START, media
from tests.test_protocol_recovery import AGAIN, UPDATE, of, wire

PARAMS = {"caller": "+15550001111", "called": "+15550002222", "direction": "inbound",
          "greeting": "Hi"}


def entry(**changes: Any) -> LiveEntry:
    values: dict[str, Any] = dict(call_sid="CA1", instance="host:1:ab", started_at=1.0,
                                  parameters=dict(PARAMS), session_id="sess_1",
                                  resume_token="rt_1")
    values.update(changes)
    return LiveEntry(**values)


def test_a_live_session_without_an_outcome_is_streamed_again_a_bounded_number_of_times() -> None:
    assert restream_parameters(entry(), "in-progress") == {**PARAMS, "restream": "1"}
    again = restream_parameters(entry(restreams=1, parameters={**PARAMS, "restream": "1",
                                                               "token": "old"}), "in-progress")
    assert again == {**PARAMS, "restream": "2"}  # never the old token
    assert restream_parameters(entry(restreams=MAX_RESTREAMS), "in-progress") is None
    assert restream_parameters(entry(session_id=None), "in-progress") is None  # nothing live
    assert restream_parameters(None, "in-progress") is None
    assert restream_parameters(entry(), "completed") is None  # the caller hung up
    assert restreams({"restream": "2"}) == 2
    assert restreams({}) == restreams({"restream": "x"}) == 0


def taken_over() -> tuple[CallProtocol, list[Any]]:
    """A stream of a taken-over call: its first link is up, start checked, then take_over."""
    call = CallProtocol(session_update=UPDATE, reconnect_greeting=AGAIN)
    call.begin(0.0)
    assert call.link_opened() == []
    (authorize,) = call.twilio_message(START)
    assert isinstance(authorize, Authorize)
    return call, call.take_over("sess_1", "rt_1", now=1.0)


def test_a_taken_over_stream_resumes_the_session_with_its_resume_token() -> None:
    call, actions = taken_over()
    (open_link,) = of(OpenLink, actions)
    assert open_link.attempt.mode is Mode.RESUME and open_link.credential == "rt_1"
    assert call.twilio_message(media()) == []  # no agent yet: the caller's audio is dropped
    assert wire(call.link_opened()) == [ToAgent({"type": "session.resume",
                                                 "session_id": "sess_1"})]
    assert call.agent_message({"type": "session.ready", "session_id": "sess_1",
                               "resume_token": "rt_2"}) == [LinkReady()]
    call.link_ready(1.3)
    assert call.resume_token == "rt_2" and call.agent_ready
    (sent,) = wire(call.twilio_message(media()))
    assert sent.message["type"] == "input.audio"


def test_a_refused_takeover_resume_opens_a_fresh_session_with_the_reconnect_greeting() -> None:
    call, _ = taken_over()
    call.link_opened()
    (failed,) = of(LinkFailed, call.agent_message({
        "type": "session.error", "code": "session_not_found", "message": "gone"}))
    (open_link,) = of(OpenLink, call.link_failed(failed.failure, now=1.5))
    assert open_link.attempt.mode is Mode.FRESH and open_link.credential is None
    (update,) = wire(call.link_opened())
    assert update.message["type"] == "session.update"
    assert update.message["session"]["greeting"] == AGAIN
