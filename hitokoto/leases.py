"""Rate-limit quota bought ahead per web process, for limits large enough to share out: the
first request of a client leases a few hits of its quota from the Redis moving window, and its
next requests in this process, for up to LEASE_S, spend them without a round trip
(bench/http_throughput.py). Limits under LEASE_FRACTION * 2 per window, like the default
"3/min", lease nothing: every hit is its own, exactly as the `limits` library counts it.

Why a client is never let past its limit: a lease's hits go into the same Redis list as
lone hits (the library's format, so its window reads stay right), but stamped at the end of
the time they may be spent in, while the window is checked at the lease's start; and no
entry is stamped earlier than the newest one, so the list stays ordered as the library's
reads and checks assume. Every hit is then counted at or after the moment it was spent, and
each lease was checked against every hit, spent or leased, that could share a window with
it. The price is the other way round: a client near its limit can be refused while other
processes still hold leased hits of it, at most (processes - 1) * limit / LEASE_FRACTION.
What a lease leaves unspent is given back (removed from the list) by the next lease this
process takes once the lease's time is up.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time

from limits import RateLimitItem
from limits.storage import RedisStorage

LEASE_S = 1.0  # how long a lease may be spent...
LEASE_WINDOW_SHARE = 100  # ...and at most this fraction of the window: see QuotaLeases
LEASE_FRACTION = 256  # a lease is at most this fraction of the limit...
MAX_LEASE = 64  # ...and at most this many hits: what a refused neighbour may be short of

# KEYS: leases to give back, then keys to lease on. ARGV: now, limit, expiry (s), stamp for the
# new leases (their end), how many keys to give back, the key's lifetime (s); then per key
# given back: unspent hits and their stamp; then per key leased on: hits wanted.
# Returns per key leased on: {hits granted, their stamp}.
_LEASE_SCRIPT = """
local now, limit, expiry = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local lease_end, returns, lifetime = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local arg = 7
for i = 1, returns do
    redis.call('lrem', KEYS[i], tonumber(ARGV[arg]), ARGV[arg + 1])
    arg = arg + 2
end
-- entries stamped at or after now - expiry, as the library counts them (newest first)
local function in_window(key)
    local low, high, count = 0, limit - 1, 0
    while low <= high do
        local mid = math.floor((low + high) / 2)
        local stamp = tonumber(redis.call('lindex', key, mid))
        if stamp and stamp >= now - expiry then
            count, low = mid + 1, mid + 1
        else
            high = mid - 1
        end
    end
    return count
end
local granted = {}
for i = returns + 1, #KEYS do
    local key = KEYS[i]
    local grant = math.min(tonumber(ARGV[arg]), limit)
    -- the library's own check for `grant` hits (one LINDEX, past the list's end while it is
    -- short); only a client near its limit pays for counting its window
    local entry = redis.call('lindex', key, limit - grant)
    if entry and tonumber(entry) >= now - expiry then
        grant = limit - in_window(key)
    end
    arg = arg + 1
    local stamp = lease_end
    if grant > 0 then
        local newest = redis.call('lindex', key, 0)
        if newest and tonumber(newest) > tonumber(stamp) then
            stamp = newest
        end
        local entries = {}
        for n = 1, grant do
            entries[n] = stamp
        end
        redis.call('lpush', key, unpack(entries))
        redis.call('ltrim', key, 0, limit - 1)
        redis.call('expire', key, lifetime)
    else
        grant = 0
    end
    granted[#granted + 1] = {grant, stamp}
end
return granted
"""


def lease_size(item: RateLimitItem) -> int:
    """Hits one lease holds for this limit; under 2, the limit is not leased."""
    return min(MAX_LEASE, item.amount // LEASE_FRACTION)


@dataclasses.dataclass
class _Lease:
    left: int
    until: float  # Unix time; spendable before it
    stamp: str  # what its hits are stamped with in Redis (to give back the unspent ones)


class QuotaLeases:
    """hit_many(clients) -> a verdict per request, for one limit counted in Redis per client."""

    def __init__(self, storage: RedisStorage, item: RateLimitItem, name: str, lease_s: float = LEASE_S):
        self._storage = storage
        self._item = item
        self._name = name
        self._size = lease_size(item)
        # A lease's hits are stamped at its end, so a client kept at its limit gets its next
        # window up to this much later: at most 1 % of the window.
        self._lease_s = min(lease_s, item.get_expiry() / LEASE_WINDOW_SHARE)
        self._acquire = storage.get_connection().register_script(_LEASE_SCRIPT)
        self._leases: collections.OrderedDict[str, _Lease] = collections.OrderedDict()  # oldest first
        self._lock = threading.Lock()

    def hit_many(self, clients: list[str]) -> list[bool]:
        """Spend one hit per entry of `clients`, in order, leasing more where a client's
        lease is spent or out of time. Raises redis errors (the caller falls back)."""
        with self._lock:
            now = time.time()
            verdicts = [self._spend(client, now) for client in clients]
            short = collections.Counter(
                client for client, allowed in zip(clients, verdicts, strict=True) if not allowed
            )
            if short:
                self._lease(short, now)
                verdicts = [
                    allowed or self._spend(client, now)
                    for client, allowed in zip(clients, verdicts, strict=True)
                ]
            return verdicts

    def spend(self, client: str) -> bool:
        """Spend one hit of `client`'s lease, if this process holds one with a hit left."""
        with self._lock:
            return self._spend(client, time.time())

    def _spend(self, client: str, now: float) -> bool:
        lease = self._leases.get(client)
        if lease is None or lease.left == 0 or now >= lease.until:
            return False
        lease.left -= 1
        return True

    def _lease(self, wanted: collections.Counter, now: float) -> None:
        """One script call: give back what the leases out of time left unspent, and lease for
        each client in `wanted` at least as many hits as it asks for."""
        ended = self._end_leases(now, wanted)
        key = self._key
        args = [now, self._item.amount, self._item.get_expiry(), repr(now + self._lease_s), len(ended)]
        args.append(self._item.get_expiry() + int(self._lease_s) + 1)
        for lease in ended.values():
            args += [lease.left, lease.stamp]
        args += [max(self._size, count) for count in wanted.values()]
        granted = self._acquire(keys=[key(client) for client in [*ended, *wanted]], args=args)
        for client, (hits, stamp) in zip(wanted, granted, strict=True):
            if hits:
                self._leases[client] = _Lease(int(hits), now + self._lease_s, _text(stamp))

    def _end_leases(self, now: float, wanted: collections.Counter) -> dict[str, _Lease]:
        """Forget the leases out of time (the oldest come first) and those of `wanted`;
        return the ones with hits to give back, by client."""
        ended = {}
        while self._leases:
            client, lease = next(iter(self._leases.items()))
            if now < lease.until and client not in wanted:
                break
            del self._leases[client]
            if lease.left:
                ended[client] = lease
        for client in wanted:
            lease = self._leases.pop(client, None)
            if lease is not None and lease.left:
                ended[client] = lease
        return ended

    def _key(self, client: str) -> str:
        return self._storage.prefixed_key(self._item.key_for(self._name, client))


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
