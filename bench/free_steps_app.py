"""POST /hitokoto-cached with its shared-state steps made free, to price each one under load
(bench/http_throughput.py). The app is the product's own, from create_app(); only its
hand-out gets stand-ins: "limit" admits every request without Redis, "claim" hands out one
fixed sentence without SQLite, and "sqlite" does the same but, as often as the product
refills what it holds (hitokoto.reserve), releases the GIL as often as a refill does (the
sqlite3 module releases it around every step, reset and column read), to show how much of
the claim's price under load is those releases rather than SQLite's work.
Routing, the body and token checks, the group commit and the JSON answer are the product's
code.

    gunicorn -c gunicorn.conf.py "bench.free_steps_app:with_free('limit', 'claim')"
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time

from hitokoto import create_app
from hitokoto.answer import sentence_body
from hitokoto.handout import Handout
from hitokoto.pool import Pool, Sentence
from hitokoto.reserve import MAX_AHEAD, REFILL_BELOW

_PLAIN = Sentence(
    1, "0" * 32, "风停了，旗子才想起自己是旗子。", "batch", "bench", "2026-11-26T00:00:00Z", False
)
# Answered as the product answers a claimed sentence: with the body made when it was claimed.
_BODY = sentence_body(vars(_PLAIN), False)
_ANSWER = json.dumps(_BODY, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
SENTENCE = dataclasses.replace(_PLAIN, answer=_ANSWER)


class AdmitAll:
    """A rate limit that counts nothing and refuses nothing."""

    def hit_many(self, name: str, clients: list[str]) -> list[tuple[bool, None]]:
        return [(True, None)] * len(clients)

    def hit_leased(self, name: str, client: str) -> bool:
        return True


class OneSentence:
    """A pool, and its claims, that hand out the same sentence and write nothing."""

    def is_empty(self) -> bool:
        return False

    def claim(self, count: int) -> list[Sentence]:
        return [SENTENCE] * count

    def take_held(self) -> Sentence | None:
        return SENTENCE

    def give_back(self) -> None:
        pass

    def pick_block(self, size: int) -> list[tuple[int, Sentence]]:
        return [(place, SENTENCE) for place in range(size)]


class GilReleasesOnly(OneSentence):
    """OneSentence, except that one take in REFILL_EVERY first releases the GIL as often as
    the product's refill (Pool.claim_ahead) does: four statements of five releases each, and
    four more to read the claimed sentences back (counted with a uprobe on
    PyEval_SaveThread, bench/FINDINGS.md, thirtieth session)."""

    RELEASES_PER_REFILL = 24
    REFILL_EVERY = round(MAX_AHEAD * (1 - REFILL_BELOW))  # what one refill reserves under load

    def __init__(self):
        self._takes = itertools.count()  # next() on it is atomic: threads share it

    def take_held(self) -> Sentence:
        if next(self._takes) % self.REFILL_EVERY == 0:
            for _ in range(self.RELEASES_PER_REFILL):
                time.sleep(0)  # releases the GIL and takes it back, like a short sqlite3 call
        return super().take_held()


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
        pool = claims = OneSentence()
    elif "sqlite" in steps:
        pool = claims = GilReleasesOnly()
    else:
        pool, claims = Pool(services.config.database, one_connection=True), None  # the product's
    handout = Handout(pool, limits, "cached", claims=claims)
    app.extensions["hitokoto"] = dataclasses.replace(services, handout=handout)
    return app
