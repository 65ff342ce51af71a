"""hitokoto.combine: concurrent calls share batches, each gets its own answer, errors reach
everyone in the failed batch, and the combiner keeps working afterwards."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import pytest

from hitokoto.combine import Combiner


def test_a_lone_call_runs_at_once_in_its_own_thread():
    threads = []
    combiner = Combiner(lambda items: threads.append(threading.get_ident()) or [item * 2 for item in items])
    assert combiner.submit(21) == 42
    assert threads == [threading.get_ident()]


def test_concurrent_calls_share_batches_and_each_gets_its_own_result():
    batches = []

    def run_batch(items):
        batches.append(list(items))
        time.sleep(0.002)  # while one batch runs, the other threads queue up
        return [f"answer to {item}" for item in items]

    combiner = Combiner(run_batch, max_batch=8)
    with concurrent.futures.ThreadPoolExecutor(16) as executor:
        answers = list(executor.map(combiner.submit, range(800)))
    assert answers == [f"answer to {item}" for item in range(800)]
    served = [item for batch in batches for item in batch]
    assert sorted(served) == list(range(800))  # every call served exactly once
    assert max(len(batch) for batch in batches) == 8  # batches formed, and stayed bounded
    assert len(batches) < 400


def test_a_failed_batch_fails_each_of_its_calls_and_later_calls_still_work():
    started, release = threading.Event(), threading.Event()

    def run_batch(items):
        if items == ["first"]:
            started.set()
            release.wait(10)  # hold the lead until the others are queued
            return ["ok"]
        if "broken" in items:
            raise ValueError("the pool is on fire")
        return ["ok"] * len(items)

    combiner = Combiner(run_batch)
    with concurrent.futures.ThreadPoolExecutor(5) as executor:
        first = executor.submit(combiner.submit, "first")
        started.wait(10)
        queued = [executor.submit(combiner.submit, item) for item in ("broken", "a", "b", "c")]
        time.sleep(0.2)
        release.set()
        assert first.result(10) == "ok"
        errors = [future.exception(10) for future in queued]
    assert all(isinstance(error, ValueError) and str(error) == "the pool is on fire" for error in errors)
    assert len({id(error) for error in errors}) == 4  # one exception object per thread
    assert combiner.submit("later") == "ok"


def test_a_batch_with_the_wrong_number_of_results_is_an_error():
    combiner = Combiner(lambda items: [])
    with pytest.raises(RuntimeError, match="gave 0 results"):
        combiner.submit("x")
