"""RQ job functions. Each worker process builds its config, pool and SDK client once."""

from __future__ import annotations

import dataclasses
import functools
import logging

from hitokoto.config import Config, load_config
from hitokoto.generate import GenerationError, generate_many, generate_one, make_client
from hitokoto.pool import Pool, PoolError
from hitokoto.queues import publish_outcome

log = logging.getLogger("hitokoto.jobs")


@dataclasses.dataclass(frozen=True)
class WorkerContext:
    config: Config
    pool: Pool
    client: object


@functools.cache
def worker_context() -> WorkerContext:
    """Loaded on first use (worker.py calls it at start-up so errors show before any job)."""
    config = load_config(web=False)
    pool = Pool(config.database)
    pool.migrate()
    return WorkerContext(config=config, pool=pool, client=make_client(config))


def _error(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def generate_instant(keep_unused: bool) -> dict:
    """Generate one sentence, store it, and return {"sentence": {...}, "new": bool}; the
    waiting request gets the same outcome at once through publish_outcome.

    Expected failures come back as {"error": {"code", "message"}} so the waiting request can
    answer with them and the worker log gets one line, not a traceback.
    """
    outcome = _instant_outcome(keep_unused)
    publish_outcome(outcome)
    return outcome


def _instant_outcome(keep_unused: bool) -> dict:
    context = worker_context()
    try:
        text = generate_one(context.client, context.config)
        sentence, is_new = context.pool.add_instant(text, context.config.model, keep_unused)
    except GenerationError as exc:
        log.warning("instant generation failed: %s", exc)
        return _error("upstream_error", str(exc))
    except PoolError as exc:
        log.error("instant sentence not stored: %s", exc)
        return _error("unavailable", "the sentence pool could not be written; try again later")
    return {"sentence": dataclasses.asdict(sentence), "new": is_new}


def generate_batch(count: int) -> dict:
    """Ask the model for `count` sentences in one call and store the usable ones.

    Returns {"new", "duplicate", "rejected"} counts, plus "error" when the call failed.
    """
    context = worker_context()
    try:
        texts, rejected = generate_many(context.client, context.config, count)
    except GenerationError as exc:
        log.warning("batch generation failed: %s", exc)
        return {"new": 0, "duplicate": 0, "rejected": 0, "error": str(exc)}
    added = context.pool.add_batch(texts, context.config.model)
    return {"new": added.new, "duplicate": added.duplicate, "rejected": rejected}
