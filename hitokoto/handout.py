"""How the web hands out pool sentences: the concurrent requests of one process share one
pool statement (hitokoto.combine) on the process's one pool connection.

Under load, N requests cost one claim statement of N rows instead of N statements, N write
transactions and N turns at the write lock (bench/http_throughput.py); a lone request runs
at once. Every request still gets its own uniformly random unused sentence (Pool.claim_unused_many).
"""

from __future__ import annotations

from hitokoto.combine import Combiner
from hitokoto.pool import Pool, Sentence


class Handout:
    """take(recycle) -> (sentence or None when the pool is empty, recycled)."""

    def __init__(self, path):
        self._pool = Pool(path, one_connection=True)  # only the leading request touches it
        self._combiner = Combiner(self._serve)

    def take(self, recycle: bool) -> tuple[Sentence | None, bool]:
        return self._combiner.submit(recycle)

    def _serve(self, recycle_flags: list[bool]) -> list[tuple[Sentence | None, bool]]:
        claimed = iter(self._pool.claim_unused_many(recycle_flags.count(False)))
        answers = []
        for recycle in recycle_flags:
            if recycle:  # "重样": anything from the whole pool, marking nothing
                sentence = self._pool.pick_any()
                answers.append((sentence, bool(sentence and sentence.used)))
            elif (sentence := next(claimed, None)) is not None:
                answers.append((sentence, False))
            else:  # no unused sentence was left for this request: the seed's fallback
                answers.append((self._pool.pick_any(), True))
        return answers
