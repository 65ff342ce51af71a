"""How the web hands out pool sentences: the concurrent requests of one process share one
Redis pipeline for their rate limit and one pool statement for their sentences
(hitokoto.combine), on the process's one pool connection, and while the pool is large most
of those sentences were reserved ahead by an earlier statement (hitokoto.reserve).

Under load, N requests cost one round trip and one claim statement for N sentences instead of N
of each, N write transactions and N turns at the write lock, and each request waits for
one batch, not two (bench/http_throughput.py); a lone request runs at once. Every request
is still counted and judged on its own, and gets its own uniformly random unused sentence
(Pool.claim_unused_many).
"""

from __future__ import annotations

import dataclasses
import threading

from limits.strategies import MovingWindowRateLimiter

from hitokoto.combine import Combiner
from hitokoto.pool import Pool, Sentence
from hitokoto.ratelimit import RateLimits
from hitokoto.reserve import ReservedClaims


@dataclasses.dataclass(frozen=True)
class _Refused:
    limiter: MovingWindowRateLimiter  # the one that counted the refused hit


class Handout:
    """take(recycle, client) -> (sentence or None when the pool is empty, recycled), after
    spending the client's quota on limit `limit_name` (a 429 ApiError when over it). While
    the pool is empty no quota is spent: the client can retry once `batch.py` has filled it."""

    def __init__(self, pool: Pool, limits: RateLimits, limit_name: str, claims: ReservedClaims | None = None):
        # Only the leading request touches it (Pool(path, one_connection=True)), and holds
        # self._pool_lock meanwhile, so that the claims can give back on it from another thread.
        self._pool = pool
        self._pool_lock = threading.RLock()
        self._claims = claims or ReservedClaims(pool, self._pool_lock)
        self._limits = limits
        self._limit_name = limit_name
        self._combiner = Combiner(self._serve)
        # Rows are never deleted, so once the pool holds a sentence it always will and the
        # check below costs nothing more.
        self._pool_has_sentences = False

    def take(self, recycle: bool, client: str) -> tuple[Sentence | None, bool]:
        answer = self._combiner.submit((recycle, client))
        if isinstance(answer, _Refused):
            self._limits.refuse(self._limit_name, client, answer.limiter)
        return answer

    def _serve(self, requests: list[tuple[bool, str]]) -> list:
        with self._pool_lock:
            return self._serve_locked(requests)

    def _serve_locked(self, requests: list[tuple[bool, str]]) -> list:
        if not self._has_sentences():  # pool_empty for all, before any quota is spent
            return [(None, False)] * len(requests)
        verdicts = self._limits.hit_many(self._limit_name, [client for _, client in requests])
        decided = list(zip(requests, verdicts, strict=True))
        claims = sum(allowed and not recycle for (recycle, _), (allowed, _) in decided)
        claimed = iter(self._claims.claim(claims) if claims else ())
        answers = []
        for (recycle, _), (allowed, limiter) in decided:
            if not allowed:  # refused requests claim nothing
                answers.append(_Refused(limiter))
            elif recycle:  # "重样": anything from the whole pool, marking nothing
                sentence = self._pool.pick_any()
                answers.append((sentence, bool(sentence and sentence.used)))
            elif (sentence := next(claimed, None)) is not None:
                answers.append((sentence, False))
            else:  # no unused sentence was left for this request: the seed's fallback
                answers.append((self._pool.pick_any(), True))
        return answers

    def give_back(self) -> None:
        """Return the sentences this process reserved to the pool (a stopping web worker)."""
        self._claims.give_back()

    def _has_sentences(self) -> bool:
        if not self._pool_has_sentences:
            self._pool_has_sentences = not self._pool.is_empty()
        return self._pool_has_sentences
