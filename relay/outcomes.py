"""How a call ended: one set of named values, shared by logs, metrics, call records and reports.

Each value has one meaning; a new way for a call to end gets a new value, never an old one.
"""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    COMPLETED = "completed"  # the agent's goodbye (end_call) was heard, then the relay hung up
    CALLER_HUNG_UP = "caller_hung_up"  # Twilio's stop, or the stream closed cleanly by Twilio
    AGENT_ENDED = "agent_ended"  # the agent ended the session on purpose (session.ended)
    TRANSFERRED = "transferred"  # handed to a number with <Dial>
    AGENT_FAILED = "agent_failed"  # no agent could be had: the caller got the fallback
    MAX_DURATION = "max_duration"  # MAX_CALL_SECONDS reached
    DRAINED = "drained"  # ended by the drain deadline of a shutting-down process
    SHUT_DOWN = "shut_down"  # cut by the server's forced shutdown (the stream closed with 1012)
    REFUSED_BUSY = "refused_busy"  # refused at the webhook for lack of capacity
    REFUSED_RATE_LIMITED = "refused_rate_limited"  # refused at the webhook: CALLER_RATE_LIMIT
    REFUSED_UNAUTHORIZED = "refused_unauthorized"  # forged webhook or stream
    OPERATOR_HUNG_UP = "operator_hung_up"  # hung up from the calls page or its API
    STREAM_FAILED = "stream_failed"  # the Twilio stream broke: no start, protocol error, stalled,
    # or dropped without a close (1006)
    STREAM_LOST = "stream_lost"  # Twilio's stream dropped with the agent session live: the
    # session and the call's entry were left for the stream the <Connect action> opens next
    RELAY_ERROR = "relay_error"  # a fault in the relay itself (logged with its traceback)
