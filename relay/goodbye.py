"""The wait for the agent's goodbye before a hang-up or a transfer: pure, no I/O, no clock.

A tool asks to end the call; the caller should still hear the agent say goodbye. The wait
goes through four stages, each left by one event the protocol reports:

    result ──(the tool's result sent to the agent)──▶ reply
    reply ──(reply.started)──▶ speaking
    speaking ──(reply.done of that reply: send the "hangup" mark)──▶ mark
    mark ──(the "hangup" mark echoed: the goodbye was heard)──▶ the hang-up or transfer

A request made outside a tool call, or by a tool whose result is already sent, starts at
``reply``. The bridge bounds the whole wait with ``HANGUP_TIMEOUT``.
"""

from __future__ import annotations

from typing import Generic, Literal, TypeVar

HANGUP_MARK = "hangup"

A = TypeVar("A")
Stage = Literal["result", "reply", "speaking", "mark"]


class Goodbye(Generic[A]):
    """One pending hang-up or transfer (``action``), waiting for the goodbye to be heard."""

    __slots__ = ("action", "call_id", "reply_id", "stage")

    def __init__(self, action: A, call_id: str | None, *, result_pending: bool) -> None:
        self.action = action
        self.call_id = call_id  # the tool call that asked, if any
        self.stage: Stage = "result" if result_pending else "reply"
        self.reply_id: str | None = None

    def result_sent(self, call_id: str) -> None:
        if self.stage == "result" and call_id == self.call_id:
            self.stage = "reply"

    def reply_started(self, reply_id: str | None) -> None:
        if self.stage == "reply":
            self.stage = "speaking"
            self.reply_id = reply_id

    def reply_done(self, reply_id: str | None) -> bool:
        """The goodbye finished playing out of the agent: True when the mark is to be sent."""
        if self.stage == "speaking" and reply_id == self.reply_id:
            self.stage = "mark"
            return True
        return False

    def heard(self, mark: str) -> bool:
        """True when ``mark`` is the echo that says the caller heard the goodbye."""
        return self.stage == "mark" and mark == HANGUP_MARK
