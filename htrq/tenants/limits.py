"""Per-tenant limits: requests per second, and heavy requests at once.

The state lives in Redis (the broker's), so every API process on every machine enforces one
limit per tenant; each check is one Lua script, atomic on the server, timed by the server's
clock (``TIME``), so processes whose clocks differ still agree.

- **Rate**: a token bucket per tenant. It holds up to ``burst`` tokens and refills at
  ``rate`` per second; each request takes one. An empty bucket answers how long until the
  next token (``Retry-After``).
- **Heavy requests** (submissions, exports, page images: what costs the API seconds of CPU,
  disk or a PDF renderer): at most ``heavy`` at once per tenant. Each holds a slot, a member
  of a sorted set scored by its expiry; a request gives its slot back when it ends, and a
  slot whose process died before that (``kill -9``) stops counting at its expiry instead of
  leaking for good.

Redis that cannot be reached lets requests through (logged): the limits protect the service
from one tenant, and an outage of their store must not refuse every tenant.
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

import redis

log = logging.getLogger(__name__)

PREFIX = "htrq:limits"
#: Refusals counted by code (a hash), for ``/metrics``.
REFUSED_KEY = f"{PREFIX}:refused"
#: Seconds a refused heavy request is told to wait: slots free when requests end, which the
#: limiter cannot foresee; a short wait keeps a polite client close behind.
HEAVY_RETRY_AFTER = 2

# KEYS[1]: the tenant's bucket; KEYS[2]: the refusal counts.
# ARGV: rate (tokens per second), burst. Returns the seconds to wait, as text ("0": taken).
_TAKE_TOKEN = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
  redis.call('HINCRBY', KEYS[2], 'rate_limited', 1)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return tostring(wait)
"""

# KEYS[1]: the tenant's slots (member: token, score: expiry); KEYS[2]: the refusal counts.
# ARGV: limit, seconds a slot lasts, the new slot's token. Returns 1 when taken, else 0.
_TAKE_SLOT = """
local limit = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= limit then
  redis.call('HINCRBY', KEYS[2], 'too_many_concurrent', 1)
  return 0
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[3])
redis.call('EXPIRE', KEYS[1], math.ceil(ttl) + 1)
return 1
"""


class Limited(Exception):
    """A request over its tenant's limit: answered 429 with ``Retry-After``."""

    def __init__(self, code: str, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.code, self.message, self.retry_after = code, message, retry_after


@dataclass(frozen=True)
class LimitSettings:
    """The limits in force (``HTRQ_TENANT_*``); 0 turns one off."""

    rate: float  #: requests per second per tenant
    burst: int  #: requests a tenant may make at once after idling
    heavy: int  #: heavy requests at once per tenant
    slot_seconds: float  #: how long a heavy request's slot counts at most


class TenantLimiter:
    """The two limits of :mod:`htrq.tenants.limits` on one Redis."""

    def __init__(self, client: redis.Redis, limits: LimitSettings) -> None:
        self.client, self.limits = client, limits
        self._take_token = client.register_script(_TAKE_TOKEN)
        self._take_slot = client.register_script(_TAKE_SLOT)
        self._warned_at = -math.inf

    @classmethod
    def from_url(cls, url: str, limits: LimitSettings) -> TenantLimiter:
        # Short timeouts: a Redis that hangs must not hold every request (it lets them through).
        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        return cls(client, limits)

    def check_rate(self, tenant: uuid.UUID) -> None:
        """Take one of the tenant's tokens, or raise :class:`Limited` (``rate_limited``)."""
        rate, burst = self.limits.rate, self.limits.burst
        if rate <= 0:
            return
        try:
            wait = float(
                self._take_token(keys=[f"{PREFIX}:rate:{tenant}", REFUSED_KEY], args=[rate, burst])
            )
        except redis.RedisError as exc:
            self._unchecked(exc)
            return
        if wait > 0:
            raise Limited(
                "rate_limited",
                f"over this tenant's limit of {rate:g} requests per second (burst {burst}; "
                "HTRQ_TENANT_RATE, HTRQ_TENANT_BURST); send again after Retry-After seconds",
                max(1, math.ceil(wait)),
            )

    @contextmanager
    def heavy_slot(self, tenant: uuid.UUID) -> Iterator[None]:
        """Hold one of the tenant's heavy slots for the block, or raise :class:`Limited`
        (``too_many_concurrent``) when all are taken."""
        heavy = self.limits.heavy
        if heavy <= 0:
            yield
            return
        key, token = f"{PREFIX}:heavy:{tenant}", secrets.token_hex(8)
        try:
            taken = self._take_slot(
                keys=[key, REFUSED_KEY], args=[heavy, self.limits.slot_seconds, token]
            )
        except redis.RedisError as exc:
            self._unchecked(exc)
            yield
            return
        if not taken:
            raise Limited(
                "too_many_concurrent",
                f"this tenant already has {heavy} submissions, exports or page images in "
                "progress (HTRQ_TENANT_HEAVY); send again when one has finished",
                HEAVY_RETRY_AFTER,
            )
        try:
            yield
        finally:
            # A slot that cannot be given back stops counting at its expiry.
            with contextlib.suppress(redis.RedisError):
                self.client.zrem(key, token)

    def refused(self) -> dict[str, int]:
        """Requests refused so far, by code, over every API process."""
        # (redis types a reply for its sync and async clients alike; this one is sync.)
        counts = cast(dict[bytes, bytes], self.client.hgetall(REFUSED_KEY))
        return {k.decode(): int(v) for k, v in counts.items()}

    def _unchecked(self, exc: Exception) -> None:
        # Once a minute at most: an outage would otherwise log once per request.
        now = time.monotonic()
        if now - self._warned_at > 60:
            self._warned_at = now
            log.warning("tenant limits not checked, Redis did not answer: %s", exc)
