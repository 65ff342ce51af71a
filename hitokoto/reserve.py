"""No-repeat claims for one web process, bought ahead: while the pool is large, the claim that
serves a batch of requests also reserves as many sentences as this process handed out in the
last second (at most MAX_AHEAD), and the next requests are served from memory without
touching the pool (take_held). The request that leaves fewer than REFILL_BELOW of them held
reserves the next ones (a refill) while the others go on being served from what is left, so
under steady load few requests wait for the pool, and the pool file is written once per three
quarters of MAX_AHEAD requests instead of once per batch (bench/http_throughput.py);
Pool.claim_ahead records the reservation in that same write. A request that finds nothing
held while a refill is under way waits for that refill rather than joining a batch that
would wait for the pool behind it.

What keeps the pool's promises (SPEC §3, §5):
* A reserved sentence is claimed by the pool's own claim, so it is uniformly random and goes
  to one process only; its hand-out time is the second it was reserved.
* It is handed out before its reservation ends (HOLD_S), or given back by a thread of this
  process with a fresh clock, which makes it exactly like a new unused sentence. gunicorn's
  worker_exit hook gives back what a stopping worker holds. A refill's reservation replaces
  the last one, and what is left of that one is then held until the new one ends.
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

from hitokoto.pool import RESERVATION_GRACE_S, Pool, PoolError, Reservation, Sentence

log = logging.getLogger("hitokoto")

# Sentences one process may hold: what a SIGKILL can take out of the no-repeat pool. Served
# from memory without waiting for the pool (take_held), 64 measured 0.76 of bare Flask in two
# runs against 0.71-0.72 with 32 and 0.75 with 128; 16 ran dry while a request reserved more
# (0.68-0.69, no better than before). The web worker's RSS grew 2.9 and 4.1 % over
# bench/memory.py's 10,000 requests after warm-up with 64, 3.4 % with 32 (bench/FINDINGS.md,
# twenty-fourth session).
MAX_AHEAD = 64
REFILL_BELOW = 1 / 4  # of MAX_AHEAD: held sentences under which a request reserves more
SPARE = 4096  # unused sentences a reservation must leave in the pool
HOLD_S = 1.0  # how long a reservation may be spent before what is left goes back
WAIT_POLL_S = 0.02  # how often a claim that found the pool empty looks again while others hold


class ReservedClaims:
    """claim(count) -> up to count distinct unused sentences, uniformly random; fewer only when
    the pool has no unused sentence left and no other process holds any. take_held() -> one
    of them from memory, or None when none is held. Thread-safe."""

    def __init__(
        self,
        pool: Pool,
        lock: threading.RLock | None = None,
        max_ahead: int = MAX_AHEAD,
        spare: int = SPARE,
        hold_s: float = HOLD_S,
    ):
        # The pool connection is used, whichever thread does it, only under `lock`: a caller
        # that uses the same connection otherwise (hitokoto.handout) holds that lock meanwhile,
        # so a web process keeps one pool connection and one page cache. What is held is
        # guarded by a lock of its own, never held across a pool statement, so a request can
        # take a held sentence while another thread waits on the pool.
        self._pool = pool
        self._lock = lock or threading.RLock()
        self._max_ahead = max_ahead
        self._refill_below = max_ahead * REFILL_BELOW  # held sentences that start the next reservation
        self._spare = spare
        self._hold_s = hold_s
        self._held_lock = threading.Lock()
        self._held: collections.deque[Sentence] = collections.deque()
        self._refilling = False  # a refill is under way (under self._held_lock)
        self._refilled = threading.Condition(self._held_lock)  # notified when it ends
        self._until = 0.0  # Unix time: other processes compare it with theirs
        self._booked = False  # this process has a row in the pool's reservations table
        self._holder = ""  # this process's name in that table, made after gunicorn forks
        self._holder_pid = 0
        self._rate = _Rate(hold_s)
        self._wake = threading.Event()  # wakes the keeper: a reservation to give back in time
        self._keeper: threading.Thread | None = None

    def take_held(self) -> Sentence | None:
        """One held sentence, without touching the pool; None when none can be handed out now
        (the caller then claims). The request that leaves few held reserves more before
        it answers, unless the pool is busy in another thread, while other requests go on
        being served from what is still held. When none is left while a refill is under way,
        the request waits for it (at most hold_s): 1-2.5 % of requests under load did, and
        as a batch each woke a leader and waited behind the refill for the pool lock
        (bench/FINDINGS.md, twenty-sixth session)."""
        with self._held_lock:
            if not self._can_hand_out():
                # Returns at once when no refill is under way.
                self._refilled.wait_for(lambda: not self._refilling, self._hold_s)
                if not self._can_hand_out():
                    return None
            sentence = self._held.popleft()
            self._rate.count(1)
            running_low = len(self._held) < self._refill_below
        if running_low and self._lock.acquire(blocking=False):
            try:
                self._refill()
            finally:
                self._lock.release()
        return sentence

    def claim(self, count: int) -> list[Sentence]:
        with self._lock:
            taken = self._spend(count)
            if len(taken) < count:
                taken += self._claim_more(count - len(taken))
            with self._held_lock:
                self._rate.count(len(taken))
        return taken

    def give_back(self) -> None:
        """Return what this process holds now (a stopping worker)."""
        with self._lock:
            self._end_reservation()

    def _spend(self, count: int) -> list[Sentence]:
        with self._held_lock:
            late = self._held and time.time() >= self._until
        if late:  # the keeper is late giving back: do it here
            self._end_reservation()
        with self._held_lock:
            return [self._held.popleft() for _ in range(min(count, len(self._held)))]

    def _claim_more(self, count: int) -> list[Sentence]:
        """Claim count now, reserving ahead while the pool is large; while the pool is short and
        another process holds a reservation, wait for it to be spent or given back."""
        with self._held_lock:
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
            self._keep(reservation, replaces=True)
            if not reservation.others_hold or time.time() >= give_up_at:
                break
            time.sleep(WAIT_POLL_S)
        return taken

    def _refill(self) -> None:
        """Reserve more while some are still held (under the pool lock): what the last second
        would spend, up to max_ahead held in all. Those still held are then kept until the new
        reservation ends; when the pool is too short to reserve, nothing changes."""
        with self._held_lock:
            ahead = min(self._rate.ahead(self._max_ahead), self._max_ahead - len(self._held))
            if not (self._can_hand_out() and ahead > 0):
                return
            self._refilling = True
        try:
            self._keep(self._pool.claim_ahead(self._holder_name(), 0, ahead, self._spare, self._hold_s))
        finally:
            with self._held_lock:
                self._refilling = False
                self._refilled.notify_all()

    def _can_hand_out(self) -> bool:  # under self._held_lock
        """Sentences are held and their reservation has not ended."""
        return bool(self._held) and time.time() < self._until

    def _keep(self, reservation: Reservation, replaces: bool = False) -> None:
        """Hold what `reservation` reserved. One that reserved nothing replaced this process's
        row in the pool only when it claimed for requests at hand (`replaces`)."""
        with self._held_lock:
            keeper_idle = not self._booked  # otherwise it wakes at the old end and sees the new one
            if reservation.held:
                self._held.extend(reservation.held)
                self._until = reservation.until
                self._booked = True
            elif replaces:
                self._booked = False
        if reservation.held and keeper_idle:
            self._wake_keeper()

    def _end_reservation(self) -> None:
        with self._held_lock:
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

    def _wake_keeper(self) -> None:  # under the pool lock
        if self._keeper is None:  # started on first use: a thread would not survive the fork
            self._keeper = threading.Thread(target=self._keep_reservations, daemon=True)
            self._keeper.start()
        self._wake.set()

    def _keep_reservations(self) -> None:
        """The keeper thread: end each reservation when its time is up, unless a newer one
        replaced it."""
        while True:
            self._wake.clear()  # before looking, so that a wake-up while it looks is not lost
            with self._held_lock:
                booked, wait_s = self._booked, self._until - time.time()
            if not booked or wait_s > 0:
                self._wake.wait(wait_s if booked else None)
                continue
            with self._lock:
                with self._held_lock:
                    due = self._booked and time.time() >= self._until
                if due:
                    self._end_reservation()


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
