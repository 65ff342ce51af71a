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
import contextlib
import dataclasses
import os
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
# How long a process may hand out what it leased or reserved (the sketch with bookkeeping).
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


class ReservedClaims:
    """Not the product: a sketch of per-process claim reservations. The real pool's claim
    takes AHEAD sentences at once (one statement) and this process hands them out from
    memory; a thread of its own claims the next AHEAD once fewer than half are left, so a
    request waits for a claim only when that thread falls behind. A crash would lose what a
    process holds, and a sentence's hand-out time is when it was reserved.

    With bookkeeping, the writes a correct version would add: each reservation's rows in a
    table of outstanding reservations (inserted after the claim, deleted once handed out),
    and a sentence held past LEASE_S given back to the pool with a fresh clock. Only the
    refill thread's reservations are booked: the rare claim made on the request path when
    that thread falls behind is not."""

    def __init__(self, pool: Pool, bookkeeping: bool = False):
        self._pool = pool
        self._bookkeeping = bookkeeping
        # (sentence, hand out before (monotonic)); a deque's two ends are thread-safe
        self._reserved: collections.deque[tuple[Sentence, float]] = collections.deque()
        self._expired: collections.deque[Sentence] = collections.deque()
        self._refill_wanted = threading.Event()
        self._refill_thread: threading.Thread | None = None  # started after gunicorn forks

    def is_empty(self) -> bool:
        return self._pool.is_empty()

    def claim_unused_many(self, count: int) -> list[Sentence]:
        taken = []
        while len(taken) < count:
            if not self._reserved:  # the refill thread fell behind: claim here
                self._reserved.extend(self._stamped(self._pool.claim_unused_many(max(AHEAD, count))))
                if not self._reserved:
                    break
            sentence, until = self._reserved.popleft()
            if self._bookkeeping and time.monotonic() >= until:
                self._expired.append(sentence)
            else:
                taken.append(sentence)
        if len(self._reserved) < AHEAD // 2:
            self._wake_refill()
        return taken

    def pick_any(self) -> Sentence | None:
        return self._pool.pick_any()

    def _stamped(self, sentences: list[Sentence]) -> list[tuple[Sentence, float]]:
        until = time.monotonic() + LEASE_S
        return [(sentence, until) for sentence in sentences]

    def _wake_refill(self) -> None:
        if self._refill_thread is None:
            self._refill_thread = threading.Thread(target=self._refill_forever, daemon=True)
            self._refill_thread.start()
        self._refill_wanted.set()

    def _refill_forever(self) -> None:
        own_pool = Pool(self._pool.path)  # a connection of this thread's own
        outstanding: collections.deque[list[int]] = collections.deque()  # ids per reservation
        if self._bookkeeping:
            own_pool.connect().execute(_RESERVATIONS_SQL)
        while True:
            self._refill_wanted.wait()
            self._refill_wanted.clear()
            if len(self._reserved) < AHEAD // 2:
                sentences = own_pool.claim_unused_many(AHEAD)
                if self._bookkeeping:
                    self._book(own_pool.connect(), sentences, outstanding)
                self._reserved.extend(self._stamped(sentences))

    def _book(self, conn, sentences: list[Sentence], outstanding: collections.deque[list[int]]) -> None:
        """Record the new reservation, forget the one two refills back (handed out by now),
        and give back what expired unread."""
        owner, until = os.getpid(), time.time() + LEASE_S
        ids = [sentence.id for sentence in sentences]
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT OR REPLACE INTO reservations VALUES (?, ?, ?)", [(i, owner, until) for i in ids]
            )
            if len(outstanding) >= 2:
                done = outstanding.popleft()
                conn.execute(
                    f"DELETE FROM reservations WHERE sentence_id IN ({','.join('?' * len(done))})", done
                )
            expired = [self._expired.popleft().id for _ in range(len(self._expired))]
            for sentence_id in expired:
                conn.execute(_RECLOCK_SQL, (sentence_id,))
            if expired:
                conn.execute("UPDATE pool_state SET unused_count = unused_count + ?", (len(expired),))
        outstanding.append(ids)


_RESERVATIONS_SQL = """
    CREATE TABLE IF NOT EXISTS reservations (
        sentence_id INTEGER PRIMARY KEY, owner INTEGER NOT NULL, until REAL NOT NULL
    )
"""
_RECLOCK_SQL = (
    "UPDATE sentence_rows SET clock = (SELECT clock_floor FROM pool_state) + exponential_clock() WHERE id = ?"
)


def with_leases(bookkeeping: bool = False):
    """The real app, its cached hand-out with the limit leased and the claims reserved AHEAD
    at a time (LeasedQuota, ReservedClaims): what the design bench/FINDINGS.md describes as
    not built would reach. With bookkeeping, a little nearer what a correct version costs."""
    app = create_app()
    services = app.extensions["hitokoto"]
    config = services.config
    limits = LeasedQuota(config.redis_url, config.rate_cached, bookkeeping)
    pool = ReservedClaims(Pool(config.database, one_connection=True), bookkeeping)
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
