"""Tools that act on the phone call itself: hang up, and transfer to a human.

Both only ask ``ctx.control`` to act after the agent's next reply, so the caller hears the
goodbye or the transfer announcement first. They are async so that ``ctx.control`` is used
on the event loop, never from a worker thread.
"""

from __future__ import annotations

from typing import Annotated

from relay.tools import ToolContext, tool


@tool
async def end_call(
    ctx: ToolContext,
    reason: Annotated[str, "Short reason, e.g. 'caller said goodbye'"] = "",
) -> dict[str, str]:
    """Hang up the phone call. Use it only when the conversation is over: the caller said
    goodbye, asked you to hang up, or confirmed they need nothing else. Then say one short
    goodbye sentence; the line is cut when you finish speaking."""
    ctx.control.end_call(reason)
    return {"status": "ending",
            "instructions": "Say a short goodbye now; the call ends after it."}


@tool
async def transfer_call(
    ctx: ToolContext,
    number: Annotated[str | None, "E.164 number such as +14155550123; omit it to reach the "
                                  "default team"] = None,
) -> dict[str, str]:
    """Transfer the caller to a human. Use it when the caller asks for a person or when you
    cannot help them; leave out the number unless the caller named a specific one. Then tell
    the caller you are transferring them; the transfer happens when you finish speaking."""
    used = ctx.control.transfer(number)
    return {"status": "transferring", "to": used,
            "instructions": "Tell the caller you are transferring them now."}
