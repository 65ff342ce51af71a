"""Recycle picks for one web process, read a block at a time. A `recycle` request ("重样")
gets a uniformly random sentence from the whole pool. Read one at a time, each pick costs a
random page of the pool file, and in a 10-million-sentence pool that page is not in SQLite's
cache: a read from the kernel's page cache, ~3 µs of a 6-8 µs pick, so the pick cost 1.3-1.7
times as much as in a 10-thousand-sentence pool (bench/pool_flatness.py, bench/FINDINGS.md).
Here one statement reads BLOCK_SIZE sentences with consecutive ids (a leaf page or two) and
they are handed out one by one, mixed with those of up to OPEN_BLOCKS other blocks.

Why each pick is still uniform over the pool: ids are dense (rows are never deleted) and are
cut into blocks of BLOCK_SIZE from the smallest; a block is drawn uniformly (Pool.pick_block)
and each of its BLOCK_SIZE places is a ticket. A pick draws one of the open blocks, then one
of its tickets not yet drawn; a ticket whose place has no sentence (the last block's tail) is
thrown away and the pick starts again. A block is read anew when its tickets run out or it is
older than MAX_AGE_S, whatever its tickets hold. Every ticket is treated alike, so every
sentence is handed out equally often.

What it changes for a user: two picks in a row come from the same block about once in
OPEN_BLOCKS (neighbouring ids were mostly written by one model call), `recycled` says whether
the sentence had been handed out when its block was read (at most MAX_AGE_S earlier), and a
sentence added to the last block is drawn once that block is read again.
"""

from __future__ import annotations

import dataclasses
import random
import time

from hitokoto.pool import Pool, PoolError, Sentence

BLOCK_SIZE = 16  # ids per block: about one leaf page of a pool of short sentences
OPEN_BLOCKS = 64  # blocks picks are mixed from
MAX_AGE_S = 10.0  # how long a block's sentences (and their `used` flags) are served after it was read
MAX_DRAWS = 4096  # tickets drawn before a pick gives up (only a pool with holes in its ids gets near)


@dataclasses.dataclass
class _Block:
    read_at: float
    tickets: list[Sentence | None]  # shuffled; None where the block's place holds no sentence


class RecyclePicks:
    """pick() -> a uniformly random sentence from the whole pool, marking nothing; None when the
    pool is empty. Not thread-safe: the caller serialises picks and the pool connection
    (hitokoto.handout does both under its pool lock)."""

    def __init__(
        self,
        pool: Pool,
        block_size: int = BLOCK_SIZE,
        open_blocks: int = OPEN_BLOCKS,
        max_age_s: float = MAX_AGE_S,
        clock=time.monotonic,
    ):
        self._pool = pool
        self._block_size = block_size
        self._blocks: list[_Block | None] = [None] * open_blocks
        self._max_age_s = max_age_s
        self._clock = clock

    def pick(self) -> Sentence | None:
        for _draw in range(MAX_DRAWS):
            slot = random.randrange(len(self._blocks))
            block = self._blocks[slot]
            if block is None or not block.tickets or self._clock() - block.read_at > self._max_age_s:
                block = self._blocks[slot] = self._read_block()
                if not any(block.tickets) and self._pool.is_empty():
                    return None
            sentence = block.tickets.pop()
            if sentence is not None:
                return sentence
        raise PoolError("sentence pool ids are too sparse to pick from")

    def _read_block(self) -> _Block:
        tickets: list[Sentence | None] = [None] * self._block_size
        read_at = self._clock()
        for place, sentence in self._pool.pick_block(self._block_size):
            tickets[place] = sentence
        random.shuffle(tickets)
        return _Block(read_at, tickets)
