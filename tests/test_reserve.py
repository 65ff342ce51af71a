"""Claims reserved ahead per process (hitokoto.reserve): served from memory, given back in
time, waited for near exhaustion, never handed out twice, not even by a killed holder."""

import multiprocessing
import os
import random
import signal
import threading
import time

import pytest

from hitokoto.pool import RESERVATION_GRACE_S, Pool
from hitokoto.reserve import ReservedClaims
from tests.helpers import fill, new_pool, wait_until


@pytest.fixture
def pool(tmp_path):
    return new_pool(tmp_path)


def _holders(pool: Pool) -> list[tuple[str, int]]:
    return pool.connect().execute("SELECT holder, outstanding FROM reservations").fetchall()


def _reserving(pool: Pool, **options) -> ReservedClaims:
    """A ReservedClaims that has handed out 8 sentences in the last second, so its next
    claim that finds nothing held reserves min(8, max_ahead) ahead."""
    claims = ReservedClaims(Pool(pool.path, one_connection=True), **({"spare": 0} | options))
    assert len(claims.claim(8)) == 8
    return claims


def test_reserved_sentences_are_handed_out_from_memory_each_once(pool):
    fill(pool, 200)
    claims = _reserving(pool, hold_s=30)
    handed_out = [sentence.id for sentence in claims.claim(1)]  # reserves 8 more
    assert pool.counts() == (200, 200 - 8 - 1 - 8)
    assert [outstanding for _, outstanding in _holders(pool)] == [8]
    for _ in range(8):
        handed_out += [sentence.id for sentence in claims.claim(1)]
    assert pool.counts() == (200, 183)  # the pool was not touched
    assert len(set(handed_out)) == 9
    assert all(pool.get(sentence_id).used for sentence_id in handed_out)


def test_a_plain_claim_on_the_holders_connection_leaves_its_reservation_alone(pool):
    # The reservation is recorded by a trigger from the claim's own statement; a later claim on
    # the same connection that reserves nothing (as on a quiet site) must not touch it.
    fill(pool, 200)
    holder = Pool(pool.path, one_connection=True)
    reservation = holder.claim_ahead("web-1", count=1, ahead=8, spare=0, hold_s=30)
    assert (len(reservation.now), len(reservation.held)) == (1, 8)
    assert _holders(pool) == [("web-1", 8)]
    assert len(holder.claim_unused_many(3)) == 3
    assert _holders(pool) == [("web-1", 8)]
    assert pool.counts()[1] == 200 - 9 - 3


def _until(pool: Pool) -> float:
    return pool.connect().execute("SELECT until FROM reservations").fetchone()[0]


def test_the_request_that_leaves_few_held_reserves_more_before_the_rest_run_out(pool):
    fill(pool, 200)
    claims = _reserving(pool, max_ahead=16, hold_s=30)
    handed_out = [sentence.id for sentence in claims.claim(1)]  # 8 held
    first_until = _until(pool)
    for _ in range(4):  # 4 held: not yet fewer than a quarter of 16
        handed_out.append(claims.take_held().id)
    assert pool.counts()[1] == 200 - 8 - 1 - 8
    handed_out.append(claims.take_held().id)  # 3 held: this request reserves 13 more
    assert pool.counts()[1] == 200 - 8 - 1 - 8 - 13
    assert [outstanding for _, outstanding in _holders(pool)] == [13]  # one row, replaced
    assert _until(pool) > first_until  # the 3 left of the first reservation are held until then
    while (sentence := claims.take_held()) is not None:
        handed_out.append(sentence.id)
    assert len(handed_out) == len(set(handed_out)) >= 1 + 8 + 13
    assert pool.check_integrity() == []


class _Request(threading.Thread):
    def __init__(self, claims: ReservedClaims):
        super().__init__(daemon=True)
        self.claims, self.sentence = claims, None
        self.start()

    def run(self):
        self.sentence = self.claims.take_held()


class _RefillGate(Pool):
    """A holder's pool whose refills (claims ahead of none for now) wait until `opened`."""

    def __init__(self, path):
        super().__init__(path, one_connection=True)
        self.refilling, self.opened = threading.Event(), threading.Event()

    def claim_ahead(self, holder, count, ahead, spare, hold_s):
        if count == 0:
            self.refilling.set()
            assert self.opened.wait(10)
        return super().claim_ahead(holder, count, ahead, spare, hold_s)


def _waiting_behind_a_gated_refill(pool: Pool):
    """A holder with nothing held while its refill waits at the gate, and a request that
    came meanwhile and is waiting: (gate, refilling request, waiting request, ids handed out)."""
    fill(pool, 200)
    gate = _RefillGate(pool.path)
    claims = ReservedClaims(gate, max_ahead=16, spare=0, hold_s=30)
    claims.claim(8)
    claims.claim(1)  # 8 held
    handed_out = [claims.take_held().id for _ in range(4)]
    refiller = _Request(claims)  # leaves 3 held: reserves 13 more, held up at the gate
    assert gate.refilling.wait(10)
    handed_out += [claims.take_held().id for _ in range(3)]  # the others go on meanwhile
    waiting = _Request(claims)  # finds nothing held
    waiting.join(0.3)
    assert waiting.is_alive()  # neither answered empty-handed nor claiming behind the refill
    return gate, refiller, waiting, handed_out


def test_a_request_that_finds_nothing_held_during_a_refill_waits_for_it_instead_of_claiming(pool):
    gate, refiller, waiting, handed_out = _waiting_behind_a_gated_refill(pool)
    gate.opened.set()
    refiller.join(10)
    waiting.join(10)
    handed_out += [refiller.sentence.id, waiting.sentence.id]
    assert pool.counts()[1] == 200 - 8 - 1 - 8 - 13  # the refill's claim and no other
    assert len(set(handed_out)) == 9
    assert pool.check_integrity() == []


def test_a_request_waiting_for_a_refill_that_brings_nothing_is_answered_at_once(pool):
    gate, refiller, waiting, _ = _waiting_behind_a_gated_refill(pool)
    pool.claim_unused_many(500)  # another process drains the pool: the refill reserves nothing
    gate.opened.set()
    waiting.join(10)  # well before the reservation's 30 s
    assert not waiting.is_alive() and waiting.sentence is None  # the caller then claims
    refiller.join(10)
    assert refiller.sentence is not None


def test_what_a_refill_kept_goes_back_with_the_new_reservation(pool):
    fill(pool, 200)
    claims = _reserving(pool, max_ahead=16, hold_s=0.5)
    handed_out = [sentence.id for sentence in claims.claim(1)]  # 8 held
    handed_out += [claims.take_held().id for _ in range(5)]  # 3 left, 13 more reserved
    assert pool.counts()[1] == 200 - 8 - 1 - 8 - 13
    wait_until(lambda: pool.counts()[1] == 200 - 8 - 6, message="the 16 held sentences back in the pool")
    assert claims.take_held() is None
    assert _holders(pool) == [] and pool.check_integrity() == []
    rest = {sentence.id for sentence in pool.claim_unused_many(500)}
    assert len(rest) == 200 - 8 - 6 and rest.isdisjoint(handed_out)


def test_a_refill_that_finds_the_pool_short_leaves_the_reservation_as_it_was(pool):
    fill(pool, 200)
    holder = Pool(pool.path, one_connection=True)
    holder.claim_ahead("web-1", count=1, ahead=8, spare=0, hold_s=30)
    until = _until(pool)
    refill = holder.claim_ahead("web-1", count=0, ahead=8, spare=1000, hold_s=60)
    assert (refill.now, refill.held) == ([], [])
    assert _holders(pool) == [("web-1", 8)] and _until(pool) == until


def test_what_is_left_of_a_reservation_goes_back_when_its_time_is_up(pool):
    fill(pool, 200)
    claims = _reserving(pool, hold_s=0.3)
    handed_out = [sentence.id for sentence in claims.claim(3)]  # 3 now, 8 held
    assert pool.counts()[1] == 200 - 8 - 3 - 8
    wait_until(lambda: pool.counts()[1] == 200 - 8 - 3, message="the 8 held sentences back in the pool")
    assert _holders(pool) == []
    assert pool.check_integrity() == []
    # Every sentence not handed out is unused again, and each is claimed exactly once.
    used = {sentence_id for (sentence_id,) in pool.connect().execute("SELECT id FROM sentences WHERE used")}
    assert set(handed_out) <= used and len(used) == 11
    rest = [sentence.id for sentence in pool.claim_unused_many(500)]
    assert len(rest) == 189 and set(rest).isdisjoint(used)


def test_a_stopping_process_gives_back_what_it_holds_at_once(pool):
    fill(pool, 200)
    claims = _reserving(pool, hold_s=30)
    claims.claim(1)
    assert pool.counts()[1] == 200 - 8 - 1 - 8
    claims.give_back()
    assert pool.counts()[1] == 200 - 8 - 1
    assert _holders(pool) == []
    assert pool.check_integrity() == []


def test_a_small_pool_is_never_reserved(pool):
    fill(pool, 100)
    claims = _reserving(pool, spare=95, hold_s=30)
    claims.claim(1)  # 91 unused: reserving 8 would leave fewer than 95
    assert pool.counts()[1] == 91
    assert _holders(pool) == []


def _drain_with_reservations(path, start_together, results):
    """Claim 1-3 sentences at a time, as a web process's batches do (one from what is held
    where it can), until a claim comes back short; report every claim as (started, ended, ids
    asked for, ids got)."""
    claims = ReservedClaims(Pool(path, one_connection=True), max_ahead=16, spare=0, hold_s=0.5)
    start_together.wait(timeout=60)
    log = []
    while True:
        asked = random.randint(1, 3)
        started = time.time()
        held = claims.take_held() if asked == 1 else None  # a request served from memory, as most are
        got = [held.id] if held else [sentence.id for sentence in claims.claim(asked)]
        log.append((started, time.time(), asked, got))
        if len(got) < asked:
            break
        time.sleep(random.uniform(0, 0.002))
    results.put(log)


def test_processes_draining_through_reservations_hand_out_each_sentence_once_before_the_first_short_claim(
    tmp_path,
):
    """Four processes reserve ahead until the pool is empty. Every sentence is handed out
    exactly once, and once any claim has come back short (a request answered `recycled`), no
    claim started later gets a fresh sentence: the others' reservations were waited for."""
    store = new_pool(tmp_path)
    fill(store, 3000)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    start_together = context.Barrier(4)
    processes = [
        context.Process(target=_drain_with_reservations, args=(store.path, start_together, results))
        for _ in range(4)
    ]
    for process in processes:
        process.start()
    logs = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    handed_out = [sentence_id for log in logs for (_, _, _, got) in log for sentence_id in got]
    assert sorted(handed_out) == list(range(1, 3001))
    first_short_answer = min(ended for log in logs for (_, ended, asked, got) in log if len(got) < asked)
    assert not [entry for log in logs for entry in log if entry[0] > first_short_answer and entry[3]]
    assert all(len(log) > 50 for log in logs)  # they really ran side by side
    assert store.counts()[1] == 0 and store.check_integrity() == []


def _reserve_and_stop(path, ready):
    claims = _reserving(Pool(path), hold_s=1.0)
    claims.claim(1)  # 8 held, never handed out
    ready.set()
    signal.pause()  # until the test kills it


def test_a_killed_holder_is_waited_for_until_its_grace_and_what_it_held_is_never_handed_out_again(pool):
    fill(pool, 60)
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    holder = context.Process(target=_reserve_and_stop, args=(pool.path, ready), daemon=True)
    holder.start()
    assert ready.wait(timeout=60)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    used = pool.connect().execute("SELECT id FROM sentences WHERE used")
    held_by_the_dead = {sentence_id for (sentence_id,) in used}
    assert len(held_by_the_dead) == 8 + 1 + 8

    survivor = ReservedClaims(Pool(pool.path, one_connection=True), spare=0, hold_s=1.0)
    rest = [sentence.id for sentence in survivor.claim(100)]  # waits for the dead holder, then gives up
    assert len(rest) == 60 - 17 and set(rest).isdisjoint(held_by_the_dead)
    # The dead holder's row is forgotten by a claim once its grace is over.
    wait_until(lambda: not survivor.claim(1) and _holders(pool) == [], message="the dead holder's row gone")
    assert pool.check_integrity() == []


def test_a_holder_past_its_grace_can_no_longer_give_back(pool):
    """By then the others have stopped waiting for it and may have answered `recycled`: what
    it held stays handed out rather than turn up fresh afterwards."""
    fill(pool, 50)
    reservation = pool.claim_ahead("late holder", 1, 10, 0, hold_s=0.05)
    time.sleep(0.05 + RESERVATION_GRACE_S + 0.1)
    assert pool.give_back("late holder", [sentence.id for sentence in reservation.held]) == 0
    assert pool.counts()[1] == 50 - 11
    assert _holders(pool) == [] and pool.check_integrity() == []
