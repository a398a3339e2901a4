"""The shared ``Store``: the same values and slots as ``MemoryStore``, kept in Redis.

Several relay instances that point at one Redis see one set of outcomes, used tokens and
agent-session slots. Values are plain keys written with ``SET ... PX`` (``SET NX PX`` for
``put_new``), so Redis expires them itself. A pool of slots is a sorted set of holders scored by
the time their slot expires; a Lua script makes "drop the expired, count, add or renew" one
atomic step, with Redis's own clock so that instances whose clocks differ still agree.

Every operation runs under ``timeout`` seconds and raises ``StoreUnavailable`` when Redis
cannot answer in time; ``FailOpenStore`` (``relay/fail_open.py``) decides what the relay does
then. The client retries once at once (a pooled connection that Redis closed on a restart
fails on its first use) and never backs off: a slow Redis must cost a call milliseconds, not
seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from relay.errors import StoreUnavailable

T = TypeVar("T")

# KEYS[1]: the pool; ARGV: holder, limit, ttl in ms. Returns 1 when the holder has a slot.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1])
        and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
    return 0
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then
    redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
"""

# KEYS[1]: the value's key; ARGV: the writer's mark, the new value, ttl in ms. Sets the key
# when it is unset or its value starts with the mark; returns 1 when set.
_PUT_MARKED = """
local v = redis.call('GET', KEYS[1])
if v == false or string.sub(v, 1, #ARGV[1]) == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[2], 'PX', tonumber(ARGV[3]))
    return 1
end
return 0
"""

# KEYS[1]: the value's key; ARGV[1]: the writer's mark. Returns 0 when the key holds another
# writer's value, else 1 (deleted, or already unset).
_DELETE_MARKED = """
local v = redis.call('GET', KEYS[1])
if v == false then
    return 1
end
if string.sub(v, 1, #ARGV[1]) == ARGV[1] then
    redis.call('DEL', KEYS[1])
    return 1
end
return 0
"""

# KEYS[1]: the pool. Returns how many slots have not expired (ARGV[1] "list": which).
_HELD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[1] == 'list' then
    return redis.call('ZRANGE', KEYS[1], 0, -1)
end
return redis.call('ZCARD', KEYS[1])
"""


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RedisStore:
    """A ``Store`` on one Redis database; ``prefix`` keeps the relay's keys apart."""

    def __init__(self, client: aioredis.Redis, *, timeout: float, prefix: str = "relay:") -> None:
        self.client = client
        self.timeout = timeout
        self.prefix = prefix
        self._acquire = client.register_script(_ACQUIRE)
        self._held = client.register_script(_HELD)
        self._put_marked = client.register_script(_PUT_MARKED)
        self._delete_marked = client.register_script(_DELETE_MARKED)

    @classmethod
    def from_url(cls, url: str, *, timeout: float, prefix: str = "relay:") -> RedisStore:
        client = aioredis.Redis.from_url(
            url, decode_responses=True, socket_timeout=timeout, socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1), health_check_interval=30)
        return cls(client, timeout=timeout, prefix=prefix)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _run(self, op: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout(self.timeout):
                return await op
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"Redis: {type(exc).__name__}: {exc}") from exc

    async def put(self, key: str, value: str, ttl: float) -> None:
        await self._run(self.client.set(self._value(key), value, px=_ms(ttl)))

    async def put_new(self, key: str, value: str, ttl: float) -> bool:
        done: Any = await self._run(self.client.set(self._value(key), value, px=_ms(ttl),
                                                    nx=True))
        return bool(done)

    async def get(self, key: str) -> str | None:
        value = await self._run(self.client.get(self._value(key)))
        return value if value is None or isinstance(value, str) else value.decode()

    async def delete(self, key: str) -> None:
        await self._run(self.client.delete(self._value(key)))

    async def put_marked(self, key: str, mark: str, value: str, ttl: float) -> bool:
        done = await self._run(self._put_marked(keys=[self._value(key)],
                                                args=[mark, value, _ms(ttl)]))
        return bool(done)

    async def delete_marked(self, key: str, mark: str) -> bool:
        deleted = await self._run(self._delete_marked(keys=[self._value(key)], args=[mark]))
        return bool(deleted)

    def _value(self, key: str) -> str:
        return f"{self.prefix}value:{key}"

    def _pool(self, pool: str) -> str:
        return f"{self.prefix}slots:{pool}"

    async def acquire(self, pool: str, holder: str, *, limit: int, ttl: float) -> bool:
        taken = await self._run(self._acquire(keys=[self._pool(pool)],
                                              args=[holder, limit, _ms(ttl)]))
        return bool(taken)

    async def release(self, pool: str, holder: str) -> None:
        await self._run(self.client.zrem(self._pool(pool), holder))

    async def held(self, pool: str) -> int:
        count = await self._run(self._held(keys=[self._pool(pool)], args=["count"]))
        return int(count)

    async def holders(self, pool: str) -> list[str]:
        found = await self._run(self._held(keys=[self._pool(pool)], args=["list"]))
        return [str(holder) for holder in found]
