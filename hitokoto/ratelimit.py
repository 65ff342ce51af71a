"""Per-client-IP, per-endpoint rate limits: a moving window kept in Redis, shared by every
web process, with the `limits` library's strategy and storage.

hit_many() counts a batch of requests in one Redis command: the limits library's own
moving-window Lua script, run once per request inside one script (_BATCH_SCRIPT), so every
request is counted and judged exactly as a lone `MovingWindowRateLimiter.hit` would. The
cached endpoint batches its concurrent requests (hitokoto.handout); an instant request,
which then waits for the model anyway, spends alone. One command rather than a pipeline of
one script call per request, because redis-py's Python packing and parsing per command was
most of the limit's own work: 116,000 instructions per request in a batch of 4, 64,000 now
(callgrind; bench/instructions.py measures the whole endpoint).
Flask-Limiter wrapped the same call in about 250 µs of Python per request
(bench/http_throughput.py, cProfile), so the Flask glue is ours: which limit applies is
decided by the view, not looked up per request.

A limit large enough to share out (512 or more per window) is not hit request by request:
each web process leases a little of each client's quota at a time (hitokoto.leases).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import NoReturn

from limits import RateLimitItem, parse
from limits.errors import StorageError
from limits.storage import MemoryStorage, RedisStorage
from limits.strategies import MovingWindowRateLimiter
from redis.exceptions import RedisError

from hitokoto.errors import ApiError
from hitokoto.leases import QuotaLeases, lease_size

log = logging.getLogger("hitokoto")

# Whether a hit was allowed, and the limiter that counted it (Redis, or memory while Redis is down).
Verdict = tuple[bool, MovingWindowRateLimiter]

# The limits library's own moving-window script (one key, one hit) as a local function,
# applied to each key in turn with the same ARGV: 1 where the hit was counted, 0 where refused.
_BATCH_SCRIPT = """
local function acquire(KEYS, ARGV)
{library_script}
end
local verdicts = {}
for i = 1, #KEYS do
    verdicts[i] = acquire({KEYS[i]}, ARGV) and 1 or 0
end
return verdicts
"""
# Redis for limits must fail fast: a request should not hang because Redis is down.
_REDIS_OPTIONS = {"socket_connect_timeout": 1, "socket_timeout": 2}
# After a Redis failure, requests count in memory for this long before Redis is tried again,
# so an unreachable Redis costs one timeout per interval, not one per request.
REDIS_RETRY_INTERVAL_S = 2.0


class RateLimits:
    """Named limits ("instant", "cached"), each applied per client address.

    When Redis is unreachable, counting falls back to this process's memory with the same
    rates (each web process then counts on its own) instead of switching limits off.
    """

    def __init__(self, redis_url: str, rates: dict[str, str]):
        self._items: dict[str, RateLimitItem] = {name: parse(rate) for name, rate in rates.items()}
        self._storage = RedisStorage(redis_url, wrap_exceptions=True, **_REDIS_OPTIONS)
        # redis-py's Script loads it again by itself when a restarted Redis has forgotten it.
        self._acquire_batch = self._storage.get_connection().register_script(
            _batch_script(self._storage.lua_acquire_moving_window.script)
        )
        self._leased = {
            name: QuotaLeases(self._storage, item, name)
            for name, item in self._items.items()
            if lease_size(item) >= 2
        }
        self._shared = MovingWindowRateLimiter(self._storage)
        self._local = MovingWindowRateLimiter(MemoryStorage())
        self._redis_retry_at = 0.0
        self._lock = threading.Lock()

    def spend(self, name: str, client: str) -> None:
        """Count one request of `client` against limit `name`; raise a 429 ApiError when over."""
        ((allowed, limiter),) = self.hit_many(name, [client])
        if not allowed:
            self.refuse(name, client, limiter)

    def hit_many(self, name: str, clients: list[str]) -> list[Verdict]:
        """Count one request per entry of `clients` against limit `name`, for a caller that
        batches its requests itself (hitokoto.handout); give each refused one to refuse()."""
        item = self._items[name]
        if time.monotonic() >= self._redis_retry_at:
            try:
                return [(allowed, self._shared) for allowed in self._hit_in_redis(item, name, clients)]
            except (StorageError, RedisError, OSError) as exc:
                self._redis_failed(exc)
        return [(self._local.hit(item, name, client), self._local) for client in clients]

    def hit_leased(self, name: str, client: str) -> bool:
        """Count one request of `client` from a lease this process holds, without Redis: True
        when one covered it; False when none did, and it is still to be counted (hit_many)."""
        leases = self._leased.get(name)
        return leases is not None and leases.spend(client)

    def refuse(self, name: str, client: str, limiter: MovingWindowRateLimiter) -> NoReturn:
        """Raise the 429 for a request that was over its limit (counted by `limiter`)."""
        item = self._items[name]
        headers = _limit_headers(limiter, item, name, client)
        raise ApiError(429, f"Rate limit exceeded ({item}); wait before trying again.", headers=headers)

    def _hit_in_redis(self, item: RateLimitItem, name: str, clients: list[str]) -> list[bool]:
        """RedisStorage.acquire_entry once per client, in one script call (see _BATCH_SCRIPT),
        or from this process's leases of the limit."""
        if name in self._leased:
            return self._leased[name].hit_many(clients)
        storage = self._storage
        keys = [storage.prefixed_key(item.key_for(name, client)) for client in clients]
        verdicts = self._acquire_batch(keys=keys, args=[time.time(), item.amount, item.get_expiry(), 1])
        return [verdict == 1 for verdict in verdicts]

    def _redis_failed(self, exc: Exception) -> None:
        with self._lock:
            if time.monotonic() < self._redis_retry_at:
                return
            self._redis_retry_at = time.monotonic() + REDIS_RETRY_INTERVAL_S
        reason = type(exc).__name__
        log.warning("rate limits: Redis unavailable (%s); counting in this process for now", reason)


def _batch_script(library_script: str | bytes) -> str:
    if isinstance(library_script, bytes):
        library_script = library_script.decode()
    return _BATCH_SCRIPT.replace("{library_script}", library_script)


def _limit_headers(limiter: MovingWindowRateLimiter, item: RateLimitItem, name: str, client: str) -> dict:
    """Retry-After and RateLimit-* (IETF draft: Reset in seconds). Built on a 429 only,
    because reading the window is a second Redis round trip."""
    try:
        reset_at, remaining = limiter.get_window_stats(item, name, client)
    except (StorageError, RedisError, OSError):
        return {"Retry-After": str(item.get_expiry())}
    reset_in_s = max(0, math.ceil(reset_at - time.time()))
    return {
        "RateLimit-Limit": str(item.amount),
        "RateLimit-Remaining": str(max(0, remaining)),
        "RateLimit-Reset": str(reset_in_s),
        "Retry-After": str(max(1, reset_in_s)),
    }
