"""The relay's exceptions.

    RelayError
    ├── ConfigError         invalid settings, raised at start-up
    ├── ProtocolViolation   a peer sent something the protocol forbids (bad JSON, bad base64, …)
    ├── ToolError           a tool was declared in a way the registry cannot describe
    └── StoreUnavailable    the shared store (Redis) did not answer in time

    CallEnded               not an error: how a call's task or callback ends the call
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relay.outcomes import Outcome


class RelayError(Exception):
    pass


class ConfigError(RelayError):
    pass


class ProtocolViolation(RelayError):
    pass


class ToolError(RelayError):
    pass


class StoreUnavailable(RelayError):
    pass


class CallEnded(Exception):
    """A peer or the relay finished the call; the message is the reason.

    ``outcome`` (a ``relay.outcomes.Outcome``) is how the call ended, named where it ends
    (never guessed from the reason); the ``<Connect action>`` answers from it once the stream is
    closed. ``number`` is the ``<Dial>`` target of a transfer.
    """

    def __init__(self, reason: str, close_code: int, outcome: Outcome,
                 number: str | None = None) -> None:
        super().__init__(reason)
        self.close_code = close_code
        self.outcome = outcome
        self.number = number
