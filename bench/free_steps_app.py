"""POST /hitokoto-cached with its shared-state steps made free, to price each one under load
(bench/http_throughput.py). The app is the product's own, from create_app(); only its
hand-out gets stand-ins: "limit" admits every request without Redis, "claim" hands out one
fixed sentence without SQLite, and "sqlite" does the same but first releases the GIL as
often as a real claim does (the sqlite3 module releases it around every step and reset), to
show how much of the claim's price under load is those releases rather than SQLite's work.
Routing, the body and token checks, the group commit and the JSON answer are the product's
code.

with_leases() is not a stand-in but a sketch of the half of a design that is not built:
the client's quota leased ahead per web process and spent from memory, with real Redis work,
beside the product's claims reserved ahead (hitokoto.reserve), to price what
bench/FINDINGS.md's last section describes.

    gunicorn -c gunicorn.conf.py "bench.free_steps_app:with_free('limit', 'claim')"
"""

from __future__ import annotations

import contextlib
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
    """A pool, and its claims, that hand out the same sentence and write nothing."""

    def is_empty(self) -> bool:
        return False

    def claim(self, count: int) -> list[Sentence]:
        return [SENTENCE] * count

    def give_back(self) -> None:
        pass

    def pick_any(self) -> Sentence:
        return SENTENCE


class GilReleasesOnly(OneSentence):
    """OneSentence that releases the GIL as often as Pool.claim_unused_many does: a step and
    a reset for the claim, two steps and a reset to read the claimed sentences back."""

    RELEASES_PER_CLAIM = 5

    def claim(self, count: int) -> list[Sentence]:
        for _ in range(self.RELEASES_PER_CLAIM):
            time.sleep(0)  # releases the GIL and takes it back, like a short sqlite3 call
        return super().claim(count)


# How many hits a process leases from Redis at a time.
AHEAD = 64
# How long a process may spend what it leased (the sketch with bookkeeping).
LEASE_S = 1.0


class LeasedQuota:
    """Not the product: a sketch of per-process quota leases, to price the design that
    bench/FINDINGS.md describes under "What reaching the two missed goals would take". A
    client's hits are bought from the real Redis moving window AHEAD at a time (one script
    call, the library's `cost`) and spent from this process's memory; unspent hits are never
    returned, and a refusal is not built (the bench's limit is never reached). Only the
    leading request of a batch calls it (hitokoto.combine), so no lock.

    With bookkeeping, what a correct version would add on the request path: a lock, and a
    lease that may be spent only for LEASE_S seconds."""

    def __init__(self, redis_url: str, rate: str, bookkeeping: bool = False):
        self._limiter = MovingWindowRateLimiter(RedisStorage(redis_url))
        self._item = parse(rate)
        self._bookkeeping = bookkeeping
        self._leases: dict[str, list] = {}  # client: [hits left, spendable until (monotonic)]
        self._lock = threading.Lock()

    def hit_many(self, name: str, clients: list[str]) -> list[tuple[bool, None]]:
        with self._lock if self._bookkeeping else contextlib.nullcontext():
            return [(self._hit(name, client), None) for client in clients]

    def _hit(self, name: str, client: str) -> bool:
        lease = self._leases.get(client)
        if lease is None or lease[0] == 0 or (self._bookkeeping and time.monotonic() >= lease[1]):
            if not self._limiter.hit(self._item, name, client, cost=AHEAD):
                return False
            lease = self._leases[client] = [AHEAD, time.monotonic() + LEASE_S]
        lease[0] -= 1
        return True


def with_leases(bookkeeping: bool = False):
    """The real app, its cached hand-out's limit leased AHEAD hits at a time (LeasedQuota);
    its claims are the product's, reserved ahead (hitokoto.reserve). What the lease half of
    the design bench/FINDINGS.md describes would reach; with bookkeeping, a little nearer what
    a correct version of it costs."""
    app = create_app()
    services = app.extensions["hitokoto"]
    config = services.config
    limits = LeasedQuota(config.redis_url, config.rate_cached, bookkeeping)
    pool = Pool(config.database, one_connection=True)
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
        pool = claims = OneSentence()
    elif "sqlite" in steps:
        pool = claims = GilReleasesOnly()
    else:
        pool, claims = Pool(services.config.database, one_connection=True), None  # the product's
    handout = Handout(pool, limits, "cached", claims=claims)
    app.extensions["hitokoto"] = dataclasses.replace(services, handout=handout)
    return app
