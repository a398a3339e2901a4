"""The goodbye's stages: result sent, reply started, reply done (mark sent), mark echoed."""

from __future__ import annotations

from relay.goodbye import HANGUP_MARK, Goodbye


def test_a_tool_request_waits_for_its_result_then_the_next_reply() -> None:
    goodbye = Goodbye("hang up", "c1", result_pending=True)
    goodbye.reply_started("r0")  # a reply before the result went out is not the goodbye
    assert not goodbye.reply_done("r0")
    goodbye.result_sent("c2")  # another tool's result
    assert goodbye.stage == "result"
    goodbye.result_sent("c1")
    goodbye.reply_started("r1")
    assert not goodbye.heard(HANGUP_MARK)  # no mark was sent yet
    assert not goodbye.reply_done("r2")  # not the goodbye's reply
    assert goodbye.reply_done("r1")
    assert not goodbye.heard("1:r1") and goodbye.heard(HANGUP_MARK)
    assert goodbye.action == "hang up"


def test_without_a_pending_result_the_next_reply_is_the_goodbye() -> None:
    goodbye = Goodbye("transfer", None, result_pending=False)
    goodbye.reply_started(None)  # a reply without an id still counts
    goodbye.reply_started("later")  # only the first reply after the request
    assert goodbye.reply_done(None)
    assert not goodbye.reply_done(None)  # the mark is sent once
    assert goodbye.heard(HANGUP_MARK)
