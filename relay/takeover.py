"""Taking over a call whose stream was lost mid-call: the decisions (pure) and what it streams.

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

The same happens when Twilio's side of a stream drops (a connection lost without a close, as a
network path or a load balancer can cut it) while the instance holding it lives: that stream
ends as ``stream_lost`` (``keeps_session``) without ``session.end`` and leaves the call's entry
to its lease, so the action request streams the call again and the session is resumed.

At most ``MAX_RESTREAMS`` times per call; with no session to resume, or once Twilio reports
the call ``completed``, the action answers as before (the fallback, or a hang-up).
"""

from __future__ import annotations

from relay.call_directory import LiveEntry
from relay.outcomes import Outcome

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


def keeps_session(outcome: Outcome, *, stream_open: bool, session_id: str | None,
                  parameters: dict[str, str]) -> bool:
    """Whether a stream that has ended leaves its agent session for the call's next stream:
    Twilio's side broke (it will request the action; the relay did not end the call), there is
    a session to resume, and the call may still be streamed again."""
    return (outcome is Outcome.STREAM_FAILED and not stream_open and session_id is not None
            and restreams(parameters) < MAX_RESTREAMS)
