"""Voice Agent API wire format: builders for the messages the relay sends to the agent.

Reference: ``shared/spec/agent-api.md`` §3. Audio is ``audio/pcmu`` (G.711 μ-law, 8 kHz) in
both directions, the exact bytes Twilio carries, so base64 strings pass through unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

PCMU = {"encoding": "audio/pcmu"}
# The agent waits this much longer for a tool than the relay lets it run, so the relay's
# timeout (an error result the agent can speak around) always comes first (agent-api.md §3.1.4).
TOOL_TIMEOUT_MARGIN = 5

# Error codes after which the session cannot go on (agent-api.md §4.4); compared lower-case.
FATAL_ERRORS = frozenset({
    "unauthorized", "forbidden", "internal_error", "agent_init_failed", "agent_timeout",
    "agent_not_found", "agent_id_not_first", "session_not_found", "session_forbidden",
    "session_expired", "at_capacity", "concurrency_exceeded",
})


def session_update(
    *,
    system_prompt: str,
    greeting: str | None,
    voice: str,
    tools: Sequence[Mapping[str, Any]],
    tool_timeout: float | None = None,
) -> dict[str, Any]:
    """The first message of a session: persona, greeting, μ-law both ways, and the tools.

    ``greeting`` is omitted when empty (the agent then listens first): ``null`` is rejected.
    ``output`` cannot change after ``session.ready``, so everything is set here. With
    ``tool_timeout`` (the relay's), each tool tells the agent to wait a little longer.
    """
    specs = [dict(t) for t in tools]
    if tool_timeout is not None:
        wait = min(300, max(1, math.ceil(tool_timeout) + TOOL_TIMEOUT_MARGIN))
        for spec in specs:
            spec.setdefault("timeout_seconds", wait)
    session: dict[str, Any] = {
        "system_prompt": system_prompt,
        "input": {"format": dict(PCMU)},
        "output": {"voice": voice, "format": dict(PCMU)},
        "tools": specs,
    }
    if greeting:
        session["greeting"] = greeting
    return {"type": "session.update", "session": session}


def session_resume(session_id: str) -> dict[str, str]:
    """The first message of a new link after a drop, instead of ``session.update`` (§3.2)."""
    return {"type": "session.resume", "session_id": session_id}


def input_audio(payload: str) -> dict[str, str]:
    return {"type": "input.audio", "audio": payload}


def tool_result(call_id: str, result: str, *, is_error: bool) -> dict[str, Any]:
    """``result`` is JSON text: the API wants a string, not an object."""
    return {"type": "tool.result", "call_id": call_id, "result": result, "is_error": is_error}


def reply_create(instructions: str) -> dict[str, str]:
    return {"type": "reply.create", "instructions": instructions}


def session_end() -> dict[str, str]:
    return {"type": "session.end"}


def is_fatal(code: str) -> bool:
    return code.lower() in FATAL_ERRORS
