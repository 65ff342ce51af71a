"""POST /hitokoto-cached with its shared-state steps made free, to price each one under load
(bench/http_throughput.py). The app is the product's own, from create_app(); only its
hand-out gets stand-ins: "limit" admits every request without Redis, "claim" hands out one
fixed sentence without SQLite, and "sqlite" does the same but first releases the GIL as
often as a real claim does (the sqlite3 module releases it around every step and reset), to
show how much of the claim's price under load is those releases rather than SQLite's work.
Routing, the body and token checks, the group commit and the JSON answer are the product's
code.

with_leases() is not a stand-in but a sketch of a design that is not built: both steps
bought ahead per web process (quota leased, claims reserved) and handed out from memory,
with real Redis and SQLite work, to price what bench/FINDINGS.md's last section describes.

    gunicorn -c gunicorn.conf.py "bench.free_steps_app:with_free('limit', 'claim')"
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time

from limits import parse
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from hitokoto import create_app
from hitokoto.handout import Handout
from hitokoto.pool import Pool, Sentence

SENTENCE = Sentence(
    1, "0" * 32, "风停了，旗子才想起自己是旗子。", "batch", "bench", "2026-11-26T00:00:00Z", False
)


class AdmitAll:
    """A rate limit that counts nothing and refuses nothing."""

    def hit_many(self, name: str, clients: list[str]) -> list[tuple[bool, None]]:
        return [(True, None)] * len(clients)


class OneSentence:
    """A pool that hands out the same sentence and writes nothing."""

    def is_empty(self) -> bool:
        return False

    def claim_unused_many(self, count: int) -> list[Sentence]:
        return [SENTENCE] * count

    def pick_any(self) -> Sentence:
        return SENTENCE


class GilReleasesOnly(OneSentence):
    """OneSentence that releases the GIL as often as Pool.claim_unused_many does: a step and
    a reset for the claim, two steps and a reset to read the claimed sentences back."""

    RELEASES_PER_CLAIM = 5

    def claim_unused_many(self, count: int) -> list[Sentence]:
        for _ in range(self.RELEASES_PER_CLAIM):
            time.sleep(0)  # releases the GIL and takes it back, like a short sqlite3 call
        return super().claim_unused_many(count)


# How many hits a process leases from Redis, and sentences it reserves from the pool, at a time.
AHEAD = 64


class LeasedQuota:
    """Not the product: a sketch of per-process quota leases, to price the design that
    bench/FINDINGS.md describes under "What reaching the two missed goals would take". A
    client's hits are bought from the real Redis moving window AHEAD at a time (one script
    call, the library's `cost`) and spent from this process's memory; unspent hits are never
    returned, and a refusal is not built (the bench's limit is never reached). Only the
    leading request of a batch calls it (hitokoto.combine), so no lock."""

    def __init__(self, redis_url: str, rate: str):
        self._limiter = MovingWindowRateLimiter(RedisStorage(redis_url))
        self._item = parse(rate)
        self._leased: dict[str, int] = collections.defaultdict(int)

    def hit_many(self, name: str, clients: list[str]) -> list[tuple[bool, None]]:
        verdicts = []
        for client in clients:
            if self._leased[client] == 0 and self._limiter.hit(self._item, name, client, cost=AHEAD):
                self._leased[client] = AHEAD
            allowed = self._leased[client] > 0
            self._leased[client] -= allowed
            verdicts.append((allowed, None))
        return verdicts


class ReservedClaims:
    """Not the product: a sketch of per-process claim reservations. The real pool's claim
    takes AHEAD sentences at once (one statement) and this process hands them out from
    memory; a thread of its own claims the next AHEAD once fewer than half are left, so a
    request waits for a claim only when that thread falls behind. A crash would lose what a
    process holds, and a sentence's hand-out time is when it was reserved."""

    def __init__(self, pool: Pool):
        self._pool = pool
        self._reserved: collections.deque[Sentence] = collections.deque()  # thread-safe ends
        self._refill_wanted = threading.Event()
        self._refill_thread: threading.Thread | None = None  # started after gunicorn forks

    def is_empty(self) -> bool:
        return self._pool.is_empty()

    def claim_unused_many(self, count: int) -> list[Sentence]:
        if len(self._reserved) < count:  # the refill thread fell behind: claim here
            self._reserved.extend(self._pool.claim_unused_many(max(AHEAD, count - len(self._reserved))))
        taken = [self._reserved.popleft() for _ in range(min(count, len(self._reserved)))]
        if len(self._reserved) < AHEAD // 2:
            self._wake_refill()
        return taken

    def pick_any(self) -> Sentence | None:
        return self._pool.pick_any()

    def _wake_refill(self) -> None:
        if self._refill_thread is None:
            self._refill_thread = threading.Thread(target=self._refill_forever, daemon=True)
            self._refill_thread.start()
        self._refill_wanted.set()

    def _refill_forever(self) -> None:
        own_pool = Pool(self._pool.path)  # a connection of this thread's own
        while True:
            self._refill_wanted.wait()
            self._refill_wanted.clear()
            if len(self._reserved) < AHEAD // 2:
                self._reserved.extend(own_pool.claim_unused_many(AHEAD))


def with_leases():
    """The real app, its cached hand-out with the limit leased and the claims reserved AHEAD
    at a time (LeasedQuota, ReservedClaims): what the design bench/FINDINGS.md describes as
    not built would reach."""
    app = create_app()
    services = app.extensions["hitokoto"]
    config = services.config
    limits = LeasedQuota(config.redis_url, config.rate_cached)
    pool = ReservedClaims(Pool(config.database, one_connection=True))
    app.extensions["hitokoto"] = dataclasses.replace(services, handout=Handout(pool, limits, "cached"))
    return app


def with_free(*steps: str):
    """The real app, its cached hand-out with the named steps ("limit", "claim", "sqlite") made free."""
    unknown = set(steps) - {"limit", "claim", "sqlite"}
    if unknown:
        raise ValueError(f"unknown step(s): {sorted(unknown)}")
    if {"claim", "sqlite"} <= set(steps):
        raise ValueError('"claim" (no claim at all) and "sqlite" (its GIL releases only) exclude each other')
    app = create_app()
    services = app.extensions["hitokoto"]
    limits = AdmitAll() if "limit" in steps else services.limits
    if "claim" in steps:
        pool = OneSentence()
    elif "sqlite" in steps:
        pool = GilReleasesOnly()
    else:
        pool = Pool(services.config.database, one_connection=True)
    app.extensions["hitokoto"] = dataclasses.replace(services, handout=Handout(pool, limits, "cached"))
    return app
