"""CallTools without sockets: what a tool may ask of its call, checked before anything happens."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import pytest

from relay.actions import Action, EndCall, Log, RunTool, Transfer
from relay.agent_messages import session_update
from relay.call_tools import CallTools
from relay.config import Settings
from relay.outcomes import Outcome
from relay.protocol import CallProtocol
from relay.tools import CallInfo, Registry, ToolContext, tool

pytestmark = pytest.mark.anyio
CALL = CallInfo("CA1", "+15550001111", "+15550002222", "inbound", {})


class Harness:
    """A CallTools whose tasks and actions are collected instead of run by a bridge."""

    def __init__(self, registry: Registry, **settings: Any) -> None:
        self.actions: list[Action] = []
        self.tasks: list[str] = []
        protocol = CallProtocol(session_update=session_update(
            system_prompt="p", greeting="g", voice="v", tools=[]))
        base = dict(public_url="http://127.0.0.1:1", hangup_timeout=0.01)
        base.update(settings)

        self.tools = CallTools(
            settings=Settings(**base), registry=registry, http=None,  # type: ignore[arg-type]
            protocol=protocol,
            perform=self.actions.extend, spawn=self.spawn,
            log=logging.LoggerAdapter(logging.getLogger("test")))

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        self.tasks.append(name)
        work.close()


@tool
async def transfer_to(ctx: ToolContext, number: str) -> str:
    """Transfer the call."""
    return ctx.control.transfer(number)


@tool
def hang_up_from_a_thread(ctx: ToolContext) -> str:
    """Hang up, from a worker thread."""
    ctx.control.end_call("done")
    return "ok"


async def run(h: Harness, name: str, arguments: dict[str, Any]) -> None:
    h.tools.started(CALL)
    await h.tools.run(RunTool("c1", name, arguments))


async def test_a_transfer_to_an_allowed_number_waits_for_the_goodbye() -> None:
    h = Harness(Registry([transfer_to]), transfer_number="+15550009999")
    await run(h, "transfer_to", {"number": "+15550009999"})
    assert h.tasks == ["hang-up deadline"]  # the goodbye's wait, bounded


@pytest.mark.parametrize(("settings", "refusal"), [
    ({}, "Transfers are not available"),
    ({"transfer_number": "+15550009999"}, "is not a number calls may be transferred to"),
])
async def test_transfers_that_cannot_happen_are_refused(settings: dict[str, Any],
                                                        refusal: str) -> None:
    h = Harness(Registry([transfer_to]), **settings)
    await run(h, "transfer_to", {"number": "+15550000000"})
    assert h.tasks == []
    assert not any(isinstance(a, Transfer) for a in h.actions)
    assert any(refusal in a.message for a in h.actions if isinstance(a, Log))


async def test_a_sync_tool_asks_from_its_thread_and_the_loop_acts() -> None:
    h = Harness(Registry([hang_up_from_a_thread]))
    await run(h, "hang_up_from_a_thread", {})
    await asyncio.sleep(0)  # the request was handed to the loop's thread
    assert h.tasks == ["hang-up deadline"]


async def test_a_second_request_while_one_is_pending_is_ignored_and_spawns_nothing() -> None:
    h = Harness(Registry([]))
    h.tools.started(CALL)
    assert h.tools.finish_after_goodbye(EndCall("agent ended the call", 1000, Outcome.COMPLETED), None) is True
    assert h.tools.finish_after_goodbye(Transfer("+15550009999"), None) is False
    assert h.tasks == ["hang-up deadline"]  # one deadline, carrying the first request
