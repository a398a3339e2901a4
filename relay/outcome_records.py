"""Outcome records: why the relay closed a call's stream, kept for Twilio's action request.

When the relay closes a ``<Connect><Stream>``, Twilio requests the ``<Connect action>`` URL
and plays what it answers. The process that answers may not be the one that held the stream
(several instances, or a restart), so the bridge writes the outcome to the ``Store`` by
CallSid *before* it closes the stream (``record_outcome``, the one writer), and the action
route reads it (``read_outcome``) and turns it into TwiML (``answer``, pure). Records expire
after ``OUTCOME_TTL``; a call with no record (its process died, or the record expired) gets
the fallback: the caller hears an apology rather than a click.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from relay import twiml
from relay.masking import mask_number
from relay.outcomes import Outcome
from relay.store import Store

KEY_PREFIX = "outcome:"
# Outcomes whose action answer is a plain hang-up: the call was over on purpose.
HANG_UP = frozenset({Outcome.COMPLETED, Outcome.AGENT_ENDED, Outcome.MAX_DURATION,
                     Outcome.CALLER_HUNG_UP, Outcome.DRAINED, Outcome.OPERATOR_HUNG_UP})


@dataclass(frozen=True, slots=True)
class OutcomeRecord:
    outcome: Outcome
    number: str | None = None  # the <Dial> target of a transfer


async def record_outcome(store: Store, call_sid: str, outcome: Outcome, *,
                         ttl: float, number: str | None = None) -> None:
    """Write why ``call_sid``'s stream is being closed; call it before closing the stream."""
    value = orjson.dumps({"outcome": outcome.value, "number": number}).decode()
    await store.put(KEY_PREFIX + call_sid, value, ttl)


async def read_outcome(store: Store, call_sid: str) -> OutcomeRecord | None:
    """The recorded outcome of ``call_sid``, or None when there is none (or it is unreadable)."""
    raw = await store.get(KEY_PREFIX + call_sid)
    if raw is None:
        return None
    try:
        data = orjson.loads(raw)
        return OutcomeRecord(Outcome(data["outcome"]), data.get("number") or None)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class ActionAnswer:
    twiml: str
    says: str  # for the log: what the caller hears next


def answer(record: OutcomeRecord | None, *, call_status: str, fallback_message: str,
           fallback_number: str | None) -> ActionAnswer:
    """What Twilio plays once the stream has ended (pure).

    A call Twilio reports ``completed`` is gone (the caller hung up): ``<Hangup/>``. A goodbye
    hangs up, a transfer (or a call drained with a number) dials, and everything else,
    including an unknown call, falls back.
    """
    if call_status == "completed":
        return ActionAnswer(twiml.hang_up(), "nothing: the call is over")
    if record is not None and record.outcome is Outcome.DRAINED and record.number:
        # the drain deadline handed the call to FALLBACK_NUMBER
        return ActionAnswer(twiml.dial(record.number), f"a dial to {mask_number(record.number)}")
    if record is not None and record.outcome in HANG_UP:
        return ActionAnswer(twiml.hang_up(), f"a hang-up ({record.outcome})")
    if record is not None and record.outcome is Outcome.TRANSFERRED and record.number:
        return ActionAnswer(twiml.dial(record.number), f"a dial to {mask_number(record.number)}")
    why = "no outcome recorded" if record is None else str(record.outcome)
    then = f"a dial to {mask_number(fallback_number)}" if fallback_number else "a hang-up"
    return ActionAnswer(twiml.fallback(fallback_message, fallback_number),
                        f"the fallback message, then {then} ({why})")

