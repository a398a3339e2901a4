"""A call's tools: runs each tool call, and carries out what a tool asks of its call.

``CallTools`` belongs to one ``CallBridge`` and does its work in the bridge's tasks (``spawn``)
and through the bridge's ``perform``. A tool call runs under ``TOOL_TIMEOUT`` and its outcome
goes back through the protocol, which decides when the agent gets it. What a tool may do to
its call (``ToolContext.control``: hang up, transfer) waits for the agent's goodbye
(``relay.goodbye``), at most ``HANGUP_TIMEOUT``. A transfer needs no REST credentials: the call
ends with the outcome ``transferred`` and the number, recorded before the stream is closed, and
Twilio's ``<Connect action>`` request is answered with ``<Dial>`` to it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from relay.actions import Action, EndCall, Finish, Log, RunTool, Transfer
from relay.config import Settings
from relay.masking import MaskedLog, mask_numbers
from relay.outcomes import Outcome
from relay.protocol import CallProtocol
from relay.tools import CallInfo, Registry, ToolContext


class CallTools:
    """The tool calls and call control of one call."""

    def __init__(
        self,
        *,
        settings: Settings,
        registry: Registry,
        http: Any,
        protocol: CallProtocol,
        perform: Callable[[list[Action]], None],
        spawn: Callable[[Coroutine[Any, Any, None], str], None],
        log: logging.LoggerAdapter[logging.Logger],
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._http = http
        self._protocol = protocol
        self._perform = perform
        self._spawn = spawn
        self._log = log
        self._call: CallInfo | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.get_ident()

    def started(self, call: CallInfo) -> None:
        """The call began (on the event loop): tools may run from now on."""
        self._call = call
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()

    async def run(self, action: RunTool) -> None:
        assert self._call is not None
        ctx = ToolContext(call=self._call, http=self._http, log=MaskedLog(self._log),
                          control=_Control(self, action.call_id))
        outcome = await self._registry.call(action.name, action.arguments, ctx,
                                            timeout=self._settings.tool_timeout)
        self._perform(self._protocol.tool_finished(
            action.call_id, outcome.result, is_error=outcome.is_error))

    def finish_after_goodbye(self, action: Finish, call_id: str | None) -> bool:
        """Hang up or transfer after the agent's next reply, with a bounded wait.

        Returns False when the call is already finishing: the request is ignored.
        """
        logs = self._protocol.finish_after_goodbye(action, call_id)
        if logs is None:
            self._log.warning("call is already finishing; request ignored")
            return False
        for log in logs:
            if isinstance(log, Log):
                self._log.log(logging.getLevelName(log.level), "%s", mask_numbers(log.message))
        self._spawn(self._finish_deadline(action), "hang-up deadline")
        return True

    async def _finish_deadline(self, action: Finish) -> None:
        await asyncio.sleep(self._settings.hangup_timeout)
        self._log.info("no goodbye heard within %.0f s", self._settings.hangup_timeout)
        self._perform([action])

    def can_transfer(self) -> bool:
        return self._settings.transfers_enabled


class _Control:
    """What a tool may do to its call; safe to call from a sync tool's worker thread."""

    def __init__(self, tools: CallTools, call_id: str) -> None:
        self._tools = tools
        self._call_id = call_id

    def _schedule(self, action: Finish) -> None:
        tools = self._tools
        if tools._loop is None or threading.get_ident() == tools._thread:
            tools.finish_after_goodbye(action, self._call_id)
        else:
            tools._loop.call_soon_threadsafe(tools.finish_after_goodbye, action, self._call_id)

    def end_call(self, reason: str = "") -> None:
        self._schedule(EndCall(f"agent ended the call{': ' + reason if reason else ''}", 1000,
                               Outcome.COMPLETED))

    def transfer(self, number: str | None = None) -> str:
        s = self._tools._settings
        if not self._tools.can_transfer():
            raise ValueError("Transfers are not available: no TRANSFER_NUMBER is configured.")
        target = number or s.transfer_number
        if target is None:
            raise ValueError("No transfer number is configured.")
        allowed = set(s.transfer_allowed)
        if s.transfer_number:
            allowed.add(s.transfer_number)
        if target not in allowed:
            raise ValueError(f"{target} is not a number calls may be transferred to.")
        self._schedule(Transfer(target))
        return target
