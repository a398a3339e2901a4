"""A call's tools: runs each tool call, and carries out what a tool asks of its call.

``CallTools`` belongs to one ``CallBridge`` and does its work in the bridge's tasks (``spawn``)
and through the bridge's ``perform``. A tool call runs under ``TOOL_TIMEOUT`` and its outcome
goes back through the protocol, which decides when the agent gets it. What a tool may do to
its call (``ToolContext.control``: hang up, transfer) waits for the agent's goodbye
(``relay.goodbye``), at most ``HANGUP_TIMEOUT``. A transfer is one REST request to Twilio, made
once, after which the call ends: the caller is now ringing the number.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from twilio.base.exceptions import TwilioException

from relay.config import Settings
from relay.errors import CallEnded
from relay.masking import MaskedLog, mask_number, mask_numbers
from relay.protocol import Action, CallProtocol, EndCall, Finish, Log, RunTool, Transfer
from relay.tools import CallInfo, Registry, ToolContext

# Transfers a call to a number through Twilio's REST API; set when credentials are configured.
Transferrer = Callable[[str, str], Awaitable[None]]


class CallTools:
    """The tool calls and call control of one call."""

    def __init__(
        self,
        *,
        settings: Settings,
        registry: Registry,
        http: Any,
        transfer: Transferrer | None,
        protocol: CallProtocol,
        perform: Callable[[list[Action]], None],
        spawn: Callable[[Coroutine[Any, Any, None], str], None],
        log: logging.LoggerAdapter[logging.Logger],
    ) -> None:
        self._settings = settings
        self._registry = registry
        self._http = http
        self._transfer = transfer
        self._protocol = protocol
        self._perform = perform
        self._spawn = spawn
        self._log = log
        self._call: CallInfo | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.get_ident()
        self._transferring = False
        self.finished_by: str | None = None  # what the call ended as, when not its last error

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

    def finish_after_goodbye(self, action: Finish, call_id: str | None) -> None:
        """Hang up or transfer after the agent's next reply, with a bounded wait."""
        for log in self._protocol.finish_after_goodbye(action, call_id):
            if isinstance(log, Log):
                self._log.log(logging.getLevelName(log.level), "%s", mask_numbers(log.message))
        self._spawn(self._finish_deadline(action), "hang-up deadline")

    async def _finish_deadline(self, action: Finish) -> None:
        await asyncio.sleep(self._settings.hangup_timeout)
        self._log.info("no goodbye heard within %.0f s", self._settings.hangup_timeout)
        self._perform([action])

    async def transfer(self, number: str) -> None:
        """Redirect the call to ``number``, then end it.

        Raises:
            CallEnded: always, once the transfer is made or has failed.
        """
        assert self._transfer is not None and self._call is not None
        if self._transferring:
            return  # the goodbye's mark and the deadline may both get here: transfer once
        self._transferring = True
        try:
            await self._transfer(self._call.call_sid, number)
        except (TwilioException, OSError, TimeoutError):
            self._log.exception("transfer to %s failed; hanging up", mask_number(number))
            raise CallEnded("transfer failed", 1011) from None
        self.finished_by = f"transferred to {mask_number(number)}"
        # The call now runs the <Dial>; the agent session ends now rather than at Twilio's stop.
        raise CallEnded(f"transferred to {mask_number(number)}")

    def can_transfer(self) -> bool:
        return self._transfer is not None


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
        self._schedule(EndCall(f"agent ended the call{': ' + reason if reason else ''}"))

    def transfer(self, number: str | None = None) -> str:
        s = self._tools._settings
        if not self._tools.can_transfer():
            raise ValueError("Transfers are not available: Twilio credentials are not configured.")
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
