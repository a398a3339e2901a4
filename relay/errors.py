"""The relay's exceptions.

    RelayError
    ├── ConfigError         invalid settings, raised at start-up
    ├── ProtocolViolation   a peer sent something the protocol forbids (bad JSON, bad base64, …)
    ├── ToolError           a tool was declared in a way the registry cannot describe
    └── StoreUnavailable    the shared store (Redis) did not answer in time
"""

from __future__ import annotations


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
