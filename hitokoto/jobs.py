"""RQ job functions. Each worker process builds its config, pool and SDK client once."""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading

from rq import get_current_job

from hitokoto.config import Config, load_config
from hitokoto.generate import (
    CallCancelled,
    GenerationError,
    SendGate,
    generate_many,
    generate_one,
    hold_requests,
    make_client,
)
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


class EarlyModelCall:
    """An instant job's model call, made ahead of its job in a daemon thread of its own (a
    worker told to stop at once does not wait for the model); text() waits for its answer.

    It is armed while the worker waits for jobs: the thread builds the SDK request and holds
    it at a SendGate, so when fire(job_id) sends it, ~1.5 ms of the SDK's Python is already
    done (bench/FINDINGS.md). A call cancelled before it was fired sent nothing.

    A fired call that its job never takes (the job was gone when RQ fetched it, its data
    could not be read, or RQ failed it before it ran) is orphaned: its sentence still goes
    into the pool, as unused, since the tokens are spent either way."""

    def __init__(self, context: WorkerContext):
        self.context = context
        self._gate = SendGate()
        self._job_id: str | None = None
        self._answered = threading.Event()
        self._text: str | None = None
        self._error: Exception | None = None
        self._lock = threading.Lock()  # between the answer arriving and orphan()
        self._orphaned = False
        self._thread = threading.Thread(target=self._call, name="model-call", daemon=True)

    def arm(self) -> None:
        """Start building the request; raises RuntimeError when no thread can be had."""
        self._thread.start()

    def fire(self, job_id: str) -> None:
        """Send the request (at once if it is built, else as soon as it is) for `job_id`."""
        self._job_id = job_id
        self._gate.open()

    def cancel(self) -> None:
        """Drop an armed call that was never fired: its request is not sent."""
        self._gate.cancel()

    def _call(self) -> None:
        hold_requests(self._gate)
        try:
            self._text = generate_one(self.context.client, self.context.config)
        except CallCancelled:
            return  # never sent and never fired: nobody waits for it
        except Exception as exc:  # noqa: BLE001 - raised again by text(), in the job
            self._error = exc
        finally:
            with self._lock:
                self._answered.set()
                orphaned = self._orphaned
        if orphaned:
            self._keep_sentence()

    def text(self) -> str:
        self._answered.wait()
        if self._error is not None:
            raise self._error
        return self._text

    def orphan(self) -> None:
        """No job will take this call: keep its sentence, now or when the model answers."""
        with self._lock:
            self._orphaned = True
            answered = self._answered.is_set()
        if answered:
            self._keep_sentence()

    def _keep_sentence(self) -> None:
        if self._error is not None:
            log.warning("model call for job %s, which never ran, failed: %s", self._job_id, self._error)
            return
        try:
            self.context.pool.add_instant(self._text, self.context.config.model, keep_unused=True)
        except PoolError as exc:
            log.error("sentence of job %s, which never ran, not stored: %s", self._job_id, exc)
            return
        log.info("job %s never ran; its model call's sentence was added to the pool as unused", self._job_id)


# The call armed for the next instant job this worker pops, if any.
_armed_call: EarlyModelCall | None = None
# Fired by the worker when it popped an instant job's id, before RQ fetches the job and
# records it as started; each is taken by its own job, or orphaned.
_early_model_calls: dict[str, EarlyModelCall] = {}


def arm_model_call() -> None:
    """From a worker about to wait for instant jobs: have the next job's model call built and
    held, ready to send the moment its id is popped (a no-op while one is armed)."""
    global _armed_call
    _armed_call = _ready_call(worker_context())


def _ready_call(context: WorkerContext) -> EarlyModelCall | None:
    """The armed call for `context`, else a new one armed now; None when no thread can be
    had (the job then asks the model itself)."""
    call = _take_armed_call(context)
    if call is not None:
        return call
    call = EarlyModelCall(context)
    try:
        call.arm()
    except RuntimeError:
        return None
    return call


def _take_armed_call(context: WorkerContext) -> EarlyModelCall | None:
    """The armed call, now no longer armed; None when there is none for `context` (one armed
    for an earlier context, as tests reload it, is cancelled)."""
    global _armed_call
    call, _armed_call = _armed_call, None
    if call is not None and call.context is not context:
        call.cancel()
        return None
    return call


def start_model_call_early(job_id: str) -> None:
    """From the worker, as soon as it has popped `job_id` from a queue of instant jobs: send
    that job's model call now (the armed one, or one started here), so that it runs while
    RQ fetches the job and records it as started (three round trips and their Python: ~1 ms
    less per instant request than a call made by the job function, bench/FINDINGS.md). The
    job function then takes its answer."""
    call = _ready_call(worker_context())
    if call is not None:
        call.fire(job_id)
        _early_model_calls[job_id] = call


def orphan_early_model_calls(except_job_id: str | None = None) -> None:
    """From the worker, when the calls it fired, but the one of `except_job_id` (about to
    run), will not be taken by their jobs: after a job has run or failed, or when RQ popped
    a job it could not fetch. Their sentences go into the pool."""
    for job_id in [job_id for job_id in _early_model_calls if job_id != except_job_id]:
        _early_model_calls.pop(job_id).orphan()


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
