"""No-repeat claims for one web process, bought ahead: while the pool is large, the claim that
serves a batch of requests also reserves as many sentences as this process handed out in the
last second (at most MAX_AHEAD), and the next requests are served from memory without
touching the pool. Under load that is one pool statement per MAX_AHEAD requests instead of
one per batch (bench/http_throughput.py); Pool.claim_ahead records the reservation in it.

What keeps the pool's promises (SPEC §3, §5):
* A reserved sentence is claimed by the pool's own claim, so it is uniformly random and goes
  to one process only; its hand-out time is the second it was reserved.
* It is handed out before its reservation ends (HOLD_S), or given back by a thread of this
  process with a fresh clock, which makes it exactly like a new unused sentence. gunicorn's
  worker_exit hook gives back what a stopping worker holds.
* A claim that finds the pool empty while another process's reservation could still come
  back waits for it (at most HOLD_S plus the pool's grace) before answering `recycled`.
* A process killed while holding a reservation is counted dead after that grace: what it
  held stays handed out (still served by `recycle`), never handed out twice.
* No reservation is made while fewer than SPARE unused sentences would be left, so a small
  pool is claimed exactly as without reservations.
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import threading
import time
import uuid

from hitokoto.pool import RESERVATION_GRACE_S, Pool, PoolError, Sentence

log = logging.getLogger("hitokoto")

# Sentences one process may hold: what a SIGKILL can take out of the no-repeat pool. 64 held
# more memory for longer: the web worker's RSS grew 5.3-6.1 % over bench/memory.py's 10,000
# requests after warm-up (3.8 % without reservations; 5.1 % with 32); with 16, 3.9-4.2 %. More
# frequent reservations cost some throughput instead (bench/FINDINGS.md, last two sections).
MAX_AHEAD = 16
SPARE = 4096  # unused sentences a reservation must leave in the pool
HOLD_S = 1.0  # how long a reservation may be spent before what is left goes back
WAIT_POLL_S = 0.02  # how often a claim that found the pool empty looks again while others hold


class ReservedClaims:
    """claim(count) -> up to count distinct unused sentences, uniformly random; fewer only when
    the pool has no unused sentence left and no other process holds any. Thread-safe."""

    def __init__(
        self,
        pool: Pool,
        lock: threading.RLock | None = None,
        max_ahead: int = MAX_AHEAD,
        spare: int = SPARE,
        hold_s: float = HOLD_S,
    ):
        # Claims and gives back, whichever thread does it, always under `lock`: a caller that
        # uses the same connection otherwise (hitokoto.handout) holds that lock meanwhile, so
        # a web process keeps one pool connection and one page cache.
        self._pool = pool
        self._lock = lock or threading.RLock()
        self._max_ahead = max_ahead
        self._spare = spare
        self._hold_s = hold_s
        self._held: collections.deque[Sentence] = collections.deque()
        self._until = 0.0  # Unix time: other processes compare it with theirs
        self._booked = False  # this process has a row in the pool's reservations table
        self._holder = ""  # this process's name in that table, made after gunicorn forks
        self._holder_pid = 0
        self._rate = _Rate(hold_s)
        self._reserved = threading.Event()  # wakes the thread that gives back in time
        self._returner: threading.Thread | None = None

    def claim(self, count: int) -> list[Sentence]:
        with self._lock:
            taken = self._spend(count)
            if len(taken) < count:
                taken += self._claim_more(count - len(taken))
            self._rate.count(len(taken))
        return taken

    def give_back(self) -> None:
        """Return what this process holds now (a stopping worker)."""
        with self._lock:
            self._end_reservation()

    def _spend(self, count: int) -> list[Sentence]:
        if self._held and time.time() >= self._until:
            self._end_reservation()  # the thread giving back is late: do it here
        return [self._held.popleft() for _ in range(min(count, len(self._held)))]

    def _claim_more(self, count: int) -> list[Sentence]:
        """Claim count now, reserving ahead while the pool is large; while the pool is short and
        another process holds a reservation, wait for it to be spent or given back."""
        ahead = self._rate.ahead(self._max_ahead)
        # Nothing to reserve and no reservation to close: the claim is one statement, as it
        # was before reservations (a quiet site).
        taken = self._pool.claim_unused_many(count) if not (ahead or self._booked) else []
        give_up_at = time.time() + self._hold_s + RESERVATION_GRACE_S + 1
        while len(taken) < count:
            reservation = self._pool.claim_ahead(
                self._holder_name(), count - len(taken), ahead, self._spare, self._hold_s
            )
            taken += reservation.now
            self._booked = bool(reservation.held)
            if reservation.held:
                self._held.extend(reservation.held)
                self._until = reservation.until
                self._wake_returner()
            if not reservation.others_hold or time.time() >= give_up_at:
                break
            time.sleep(WAIT_POLL_S)
        return taken

    def _end_reservation(self) -> None:
        if not self._booked:
            return
        unspent = [sentence.id for sentence in self._held]
        self._held.clear()
        self._booked = False
        try:
            self._pool.give_back(self._holder_name(), unspent)
        except PoolError as exc:  # they stay handed out; the pool forgets the row after its grace
            log.error("could not give back %d reserved sentences: %s", len(unspent), exc)

    def _holder_name(self) -> str:
        if self._holder_pid != os.getpid():  # first use in this process
            self._holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
            self._holder_pid = os.getpid()
        return self._holder

    def _wake_returner(self) -> None:
        if self._returner is None:  # started on first use: a thread would not survive the fork
            self._returner = threading.Thread(target=self._give_back_in_time, daemon=True)
            self._returner.start()
        self._reserved.set()

    def _give_back_in_time(self) -> None:
        """End each reservation when its time is up, unless a newer one replaced it."""
        while True:
            self._reserved.wait()
            with self._lock:
                wait_s = self._until - time.time()
                if wait_s <= 0:
                    self._end_reservation()
                    self._reserved.clear()
                    continue
            time.sleep(wait_s)


class _Rate:
    """Sentences handed out by this process in the current and the previous period."""

    def __init__(self, period_s: float):
        self._period_s = period_s
        self._period_start = time.monotonic()
        self._current = 0
        self._previous = 0

    def count(self, handed_out: int) -> None:
        now = time.monotonic()
        if now - self._period_start >= self._period_s:
            elapsed_periods = (now - self._period_start) // self._period_s
            self._previous = self._current if elapsed_periods == 1 else 0
            self._current = 0
            self._period_start += elapsed_periods * self._period_s
        self._current += handed_out

    def ahead(self, most: int) -> int:
        """How many to reserve: what one period of the recent traffic would spend."""
        return min(most, max(self._current, self._previous))
