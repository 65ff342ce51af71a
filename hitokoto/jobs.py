"""RQ job functions. Each worker process builds its config, pool and SDK client once."""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading

from rq import get_current_job
from rq.exceptions import DeserializationError
from rq.job import Job

from hitokoto.config import Config, load_config
from hitokoto.generate import GenerationError, generate_many, generate_one, make_client
from hitokoto.pool import Pool, PoolError
from hitokoto.queues import INSTANT_JOB, publish_outcome

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


class EarlyModelCall:
    """An instant job's model call, running in a daemon thread of its own (a worker told to
    stop at once does not wait for the model); text() waits for its answer."""

    def __init__(self, context: WorkerContext, job_id: str):
        self._context = context
        self._answered = threading.Event()
        self._text: str | None = None
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._call, name=f"model-call-{job_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _call(self) -> None:
        try:
            self._text = generate_one(self._context.client, self._context.config)
        except Exception as exc:  # noqa: BLE001 - raised again by text(), in the job
            self._error = exc
        finally:
            self._answered.set()

    def text(self) -> str:
        self._answered.wait()
        if self._error is not None:
            raise self._error
        return self._text


# Started by the worker before RQ's bookkeeping, by job id; each is taken by its own job.
_early_model_calls: dict[str, EarlyModelCall] = {}


def start_model_call_early(job: Job) -> None:
    """From the worker, as soon as it has dequeued `job`: if it is an instant job, start its
    model call now, so that it runs while RQ records the job as started (two round trips and
    their Python: ~0.35 ms less per instant request, bench/FINDINGS.md). The job function
    then takes the call's answer."""
    try:
        if job.func_name != INSTANT_JOB:
            return
    except DeserializationError:  # unreadable job data: RQ fails the job when it runs it
        return
    call = EarlyModelCall(worker_context(), job.id)
    try:
        call.start()
    except RuntimeError:  # no thread to be had (a resource limit): the job asks the model itself
        return
    _early_model_calls[job.id] = call


def drop_early_model_call(job: Job) -> None:
    """From the worker, once `job` has run or failed: its early call is never reused."""
    _early_model_calls.pop(job.id, None)


def _model_text(context: WorkerContext) -> str:
    """The current job's early model call, or a call made now (no worker started one)."""
    job = get_current_job()
    call = _early_model_calls.pop(job.id, None) if job is not None else None
    if call is None:
        return generate_one(context.client, context.config)
    return call.text()


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
        text = _model_text(context)
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
