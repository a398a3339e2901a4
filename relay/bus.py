"""Messages between the instances of one relay: publish on a channel, listen on it.

What one instance asks of a call that another instance holds (hang it up) travels here.
``MemoryBus`` delivers within this process; ``RedisBus`` is Redis pub/sub, so every instance
that listens on a channel gets each message once, and nothing is kept for an instance that was
not listening (a hang-up for a call nobody holds any more is rightly lost). Publishing has the
store's short timeout and reports failure instead of raising; a listener that loses Redis
reconnects by itself every ``retry_after`` seconds, with one WARNING line per outage (the
store's ERROR line is the one that marks it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)
Handler = Callable[[str], None]


class Bus(Protocol):
    async def publish(self, channel: str, message: str) -> bool:
        """Send ``message`` to the listeners of ``channel``; False when it could not be sent."""
        ...

    async def listen(self, channel: str, handler: Handler) -> None:
        """Call ``handler`` with each message of ``channel`` until cancelled."""


class MemoryBus:
    """The bus of one process."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = {}

    async def publish(self, channel: str, message: str) -> bool:
        for handler in list(self._handlers.get(channel, ())):
            handler(message)
        return True

    async def listen(self, channel: str, handler: Handler) -> None:
        handlers = self._handlers.setdefault(channel, [])
        handlers.append(handler)
        try:
            await asyncio.Event().wait()  # until cancelled
        finally:
            handlers.remove(handler)


class RedisBus:
    """Redis pub/sub; ``prefix`` keeps the relay's channels apart."""

    def __init__(self, client: aioredis.Redis, *, timeout: float, retry_after: float = 1.0,
                 prefix: str = "relay:") -> None:
        self.client = client
        self.timeout = timeout
        self.retry_after = retry_after
        self.prefix = prefix

    async def publish(self, channel: str, message: str) -> bool:
        try:
            async with asyncio.timeout(self.timeout):
                await self.client.publish(self.prefix + channel, message)
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("could not publish on %s: %s: %s", channel, type(exc).__name__, exc)
            return False
        return True

    async def listen(self, channel: str, handler: Handler) -> None:
        down = False
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                async with asyncio.timeout(self.timeout):
                    await pubsub.subscribe(self.prefix + channel)
                if down:
                    log.info("listening on %s again", channel)
                    down = False
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        data = message["data"]
                        handler(data.decode() if isinstance(data, bytes) else str(data))
            except (RedisError, OSError, TimeoutError) as exc:
                if not down:  # a warning: the store's ERROR line already marks the outage
                    log.warning("lost the bus channel %s (%s: %s): retrying every %.0f s",
                                channel, type(exc).__name__, exc, self.retry_after)
                    down = True
            finally:
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    async with asyncio.timeout(self.timeout):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(self.retry_after)
