"""A task that runs for as long as a block does: started on entry, cancelled and awaited on exit.

The process-wide loops (the live-call directory's renewals, the workers' metrics copies) live
for the app's lifespan; ``running_task`` is their one owner, so none outlives its block.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any


@contextlib.asynccontextmanager
async def running_task(work: Coroutine[Any, Any, None], name: str) -> AsyncIterator[None]:
    task = asyncio.create_task(work, name=name)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
