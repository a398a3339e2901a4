"""What ``CallProtocol`` asks its owner to do: the actions, and what ``start`` says.

Plain frozen dataclasses, no behaviour: the protocol returns them, the bridge performs them in
order, and tests compare them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from relay.outcomes import Outcome
from relay.recovery import Attempt, Failure


@dataclass(frozen=True, slots=True)
class ToTwilio:
    message: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ToAgent:
    message: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class RunTool:
    call_id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class EndCall:
    reason: str
    code: int  # the close code for the Twilio stream: 1011 when something failed
    outcome: Outcome  # how the call ended; what the <Connect action> answers


@dataclass(frozen=True, slots=True)
class OpenLink:
    """Open an agent link for ``attempt``; report ``link_opened``, then ``LinkReady`` or
    ``link_failed``. ``credential``: the resume token to authenticate with (None: the key)."""

    attempt: Attempt
    credential: str | None = None


@dataclass(frozen=True, slots=True)
class LinkReady:
    """``session.ready`` arrived on the current link: the owner calls ``link_ready(now)``."""


@dataclass(frozen=True, slots=True)
class LinkFailed:
    """The current attempt failed before ``session.ready`` (a ``session.error``)."""

    failure: Failure


@dataclass(frozen=True, slots=True)
class Transfer:
    number: str


@dataclass(frozen=True, slots=True)
class Log:
    """A call event worth one log line; ``level`` is a ``logging`` level name.

    ``kind`` names events an observer (the simulator, the softphone) may be shown and the
    call's recorder keeps; ``data`` carries their fields (ids, text), never audio.
    """

    message: str
    level: str = "INFO"
    kind: str | None = None
    data: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What Twilio's ``start`` says about the stream and its call."""

    stream_sid: str
    call_sid: str
    parameters: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Authorize:
    """The stream started: check its per-call token, then call ``open_session`` (or end it)."""

    info: StreamInfo


Action = (ToTwilio | ToAgent | RunTool | EndCall | Transfer | Log | Authorize | OpenLink
          | LinkReady | LinkFailed)
Finish = EndCall | Transfer
