"""How the web hands out pool sentences: the concurrent requests of one process share one
Redis pipeline for their rate limit and one pool statement for their sentences
(hitokoto.combine), on the process's one pool connection, and while the pool is large most
of those sentences were reserved ahead by an earlier statement (hitokoto.reserve).

Under load, N requests cost one round trip and one claim statement for N sentences instead of N
of each, N write transactions and N turns at the write lock, and each request waits for
one batch, not two (bench/http_throughput.py); a lone request runs at once. Every request
is still counted and judged on its own, and gets its own uniformly random unused sentence
(Pool.claim_unused_many).

Most requests under load need neither: a request whose client has quota leased to this
process (hitokoto.leases) and for which a reserved sentence is held is answered from memory
at once, without joining a batch, so it never waits for a leader that is waiting on Redis or
the pool (bench/FINDINGS.md, twenty-fourth session). `recycle` picks, and the answers of
requests that find no unused sentence left, are drawn from blocks of the pool read ahead
(hitokoto.picks).
"""

from __future__ import annotations

import dataclasses
import threading

from limits.strategies import MovingWindowRateLimiter

from hitokoto.combine import Combiner
from hitokoto.picks import RecyclePicks
from hitokoto.pool import Pool, Sentence
from hitokoto.ratelimit import RateLimits
from hitokoto.reserve import ReservedClaims

# The verdict of a request that a lease of this process already counted (RateLimits.hit_leased).
_COUNTED = (True, None)


@dataclasses.dataclass(frozen=True)
class _Refused:
    limiter: MovingWindowRateLimiter  # the one that counted the refused hit


class Handout:
    """take(recycle, client) -> (sentence or None when the pool is empty, recycled), after
    spending the client's quota on limit `limit_name` (a 429 ApiError when over it). While
    the pool is empty no quota is spent: the client can retry once `batch.py` has filled it."""

    def __init__(self, pool: Pool, limits: RateLimits, limit_name: str, claims: ReservedClaims | None = None):
        # One connection per process (Pool(path, one_connection=True)), used only under
        # self._pool_lock: by the leading request, and by the claims when a request reserves
        # more or a thread gives back (hitokoto.reserve).
        self._pool = pool
        self._pool_lock = threading.RLock()
        self._claims = claims or ReservedClaims(pool, self._pool_lock)
        self._recycle_picks = RecyclePicks(pool)  # used under self._pool_lock
        self._limits = limits
        self._limit_name = limit_name
        self._combiner = Combiner(self._serve)
        # Rows are never deleted, so once the pool holds a sentence it always will and the
        # check below costs nothing more.
        self._pool_has_sentences = False

    def take(self, recycle: bool, client: str) -> tuple[Sentence | None, bool]:
        # Served at once, touching neither Redis nor the pool, when this process holds both
        # what the request needs: a lease of the client's quota and a reserved sentence. No
        # other thread is waited for, not even a leader waiting on Redis or the pool. Otherwise
        # the request joins the next batch (its quota already spent if a lease covered it).
        counted = self._pool_has_sentences and self._limits.hit_leased(self._limit_name, client)
        if counted and not recycle and (sentence := self._claims.take_held()) is not None:
            return sentence, False
        answer = self._combiner.submit((recycle, client, counted))
        if isinstance(answer, _Refused):
            self._limits.refuse(self._limit_name, client, answer.limiter)
        return answer

    def _serve(self, requests: list[tuple[bool, str, bool]]) -> list:
        if not self._has_sentences():  # pool_empty for all, before any quota is spent
            return [(None, False)] * len(requests)
        # The limit first, without the pool lock: a request reserving more from the pool
        # (ReservedClaims.take_held) need not wait for this batch's round trip to Redis.
        uncounted = [client for _, client, counted in requests if not counted]
        verdicts = iter(self._limits.hit_many(self._limit_name, uncounted) if uncounted else ())
        decided = [
            ((recycle, client), _COUNTED if counted else next(verdicts))
            for recycle, client, counted in requests
        ]
        with self._pool_lock:
            return self._hand_out(decided)

    def _hand_out(self, decided: list) -> list:
        claims = sum(allowed and not recycle for (recycle, _), (allowed, _) in decided)
        claimed = iter(self._claims.claim(claims) if claims else ())
        answers = []
        for (recycle, _), (allowed, limiter) in decided:
            if not allowed:  # refused requests claim nothing
                answers.append(_Refused(limiter))
            elif recycle:  # "重样": anything from the whole pool, marking nothing
                sentence = self._recycle_picks.pick()
                answers.append((sentence, bool(sentence and sentence.used)))
            elif (sentence := next(claimed, None)) is not None:
                answers.append((sentence, False))
            else:  # no unused sentence was left for this request: the seed's fallback
                answers.append((self._recycle_picks.pick(), True))
        return answers

    def give_back(self) -> None:
        """Return the sentences this process reserved to the pool (a stopping web worker)."""
        self._claims.give_back()

    def _has_sentences(self) -> bool:
        if not self._pool_has_sentences:
            with self._pool_lock:
                self._pool_has_sentences = not self._pool.is_empty()
        return self._pool_has_sentences
