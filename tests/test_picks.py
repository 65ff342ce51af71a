"""Recycle picks read a block at a time (hitokoto.picks): uniform over the pool, cheap in
statements, and never older than their bound."""

import collections
import concurrent.futures
import itertools

import pytest

from hitokoto.picks import RecyclePicks
from hitokoto.pool import Pool
from tests.helpers import client_for, fill, new_pool, post


@pytest.fixture
def pool(tmp_path):
    return new_pool(tmp_path)


class CountingPool(Pool):
    """A pool that counts the blocks read from it."""

    block_reads = 0

    def pick_block(self, size):
        self.block_reads += 1
        return super().pick_block(size)


def test_picks_are_uniform_even_when_blocks_end_part_read(pool):
    """37 sentences in blocks of 16: the last block holds 5. Blocks are dropped after a few
    picks (a clock that moves on at every look), so most are left part read: a design that
    dealt only the sentences a block holds would hand out the last five about three times as
    often as the rest, and fail the chi-square."""
    fill(pool, 37)
    picks = RecyclePicks(pool, block_size=16, open_blocks=4, max_age_s=3, clock=itertools.count().__next__)
    rounds = 200
    counts = collections.Counter(picks.pick().id for _ in range(37 * rounds))
    assert set(counts) == set(range(1, 38))
    chi_square = sum((counts[sentence_id] - rounds) ** 2 / rounds for sentence_id in range(1, 38))
    assert chi_square < 76.6  # df=36, p=0.0001: a false alarm once in 10,000 runs


def test_one_block_read_serves_many_picks(tmp_path):
    counting = new_pool(tmp_path, CountingPool)
    fill(counting, 1600)
    picks = RecyclePicks(counting, block_size=16, open_blocks=64, clock=lambda: 0.0)
    picked = [picks.pick() for _ in range(4096)]
    assert len({sentence.id for sentence in picked}) > 1000  # drawn from all over the pool
    assert counting.block_reads <= 4096 / 16 + 64  # each block read is dealt out in full
    assert counting.counts() == (1600, 1600)  # marks nothing


def test_an_empty_pool_picks_nothing_until_it_is_filled(pool):
    picks = RecyclePicks(pool)
    assert picks.pick() is None
    fill(pool, 1)
    assert picks.pick().id == 1


def test_a_sentence_added_later_is_picked_too(pool):
    fill(pool, 16)
    picks = RecyclePicks(pool, block_size=16, open_blocks=8, clock=lambda: 0.0)
    assert {picks.pick().id for _ in range(200)} == set(range(1, 17))
    fill(pool, 1, prefix="后来的")
    assert 17 in {picks.pick().id for _ in range(2000)}


def test_used_flags_are_read_again_once_a_block_is_max_age_old(pool):
    fill(pool, 16)
    now = [0.0]
    picks = RecyclePicks(pool, block_size=16, open_blocks=1, max_age_s=10, clock=lambda: now[0])
    assert not picks.pick().used
    assert len(pool.claim_unused_many(16)) == 16
    now[0] = 10.5
    assert picks.pick().used  # its block was read again: `recycled` tells the truth


def test_concurrent_recycle_requests_in_one_process(make_app):
    """Eight threads ask for recycle picks at once through one app (one handout, one set of
    open blocks): every answer is a stored sentence and nothing is marked."""
    app = make_app(rate_cached="10000/min")
    pool = app.extensions["hitokoto"].pool
    fill(pool, 100)
    token = app.extensions["hitokoto"].config.access_token

    def ask(_):
        client = client_for(app)
        return [post(client, "/hitokoto-cached", {"gptauth": token, "recycle": True}) for _ in range(50)]

    with concurrent.futures.ThreadPoolExecutor(8) as threads:
        responses = [response for batch in threads.map(ask, range(8)) for response in batch]
    assert all(response.status_code == 200 for response in responses)
    assert all(pool.get(response.json["id"]).text == response.json["hitokoto"] for response in responses)
    assert len({response.json["id"] for response in responses}) > 50
    assert pool.counts() == (100, 100)
