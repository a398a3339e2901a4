"""Taking over a call whose instance died mid-call: the decision (pure) and what it streams.

When the instance holding a call's stream dies (SIGKILL, OOM, a lost machine), Twilio sees the
stream end without the relay closing it and requests the ``<Connect action>`` URL, which any
instance may answer. That instance finds no outcome record (the holder never wrote one) but
the call's entry in the live-call directory (``relay.call_directory``), which outlives its
holder by up to ``CALL_LEASE`` seconds and holds the agent's ``session_id``, its resume token
and the stream's ``<Parameter>``s. It answers a new ``<Connect action><Stream>`` for the same
call with the same parameters, a fresh token and ``restream=N``; the stream that opens (on any
instance) resumes the agent session with ``session.resume`` (``CallProtocol.take_over``), so
the caller is back in the same conversation. If the resume is refused, the recovery opens a
fresh session with ``AGENT_RECONNECT_GREETING``, and only then the fallback.

At most ``MAX_RESTREAMS`` times per call; with no session to resume, or once Twilio reports
the call ``completed``, the action answers as before (the fallback, or a hang-up).
"""

from __future__ import annotations

from relay.call_directory import LiveEntry

# Streams a call may be given again after its instance died (counted in <Parameter restream>).
MAX_RESTREAMS = 2
RESTREAM = "restream"


def restream_parameters(entry: LiveEntry | None, call_status: str) -> dict[str, str] | None:
    """The ``<Parameter>``s of a stream that takes the call over (its token still to be
    added), or None when it cannot be taken over."""
    if call_status == "completed" or entry is None or not entry.session_id:
        return None
    if entry.restreams >= MAX_RESTREAMS:
        return None
    params = {k: v for k, v in entry.parameters.items() if k != "token"}
    params[RESTREAM] = str(entry.restreams + 1)
    return params


def restreams(parameters: dict[str, str]) -> int:
    """How many times this stream's call has been streamed again (0: its first stream)."""
    try:
        return max(0, int(parameters.get(RESTREAM, "0")))
    except ValueError:
        return 0
