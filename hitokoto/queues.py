"""Redis connections and the two RQ queues: `instant` (requests wait on it) and `batch`."""

from __future__ import annotations

import json
import logging
import time

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Retry, Worker, get_current_job, worker_registration
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.results import Result
from rq.utils import as_text

from hitokoto.config import Config

INSTANT_QUEUE = "instant"
BATCH_QUEUE = "batch"
INSTANT_JOB = "hitokoto.jobs.generate_instant"
BATCH_JOB = "hitokoto.jobs.generate_batch"
CONNECT_TIMEOUT_S = 2
# How long finished results and failures stay readable in Redis.
RESULT_TTL_S = 3600
FAILURE_TTL_S = 7 * 24 * 3600
# A job whose worker died mid-run (SIGKILL, OOM) runs once more before it counts as failed.
RETRIES_AFTER_CRASH = 1
# The early copy of an instant job's outcome is only read while its request waits.
OUTCOME_TTL_S = 600
OUTCOME_KEY_PREFIX = "hitokoto:instant-outcome:"
# What a waiting request gets when RQ records the job as failed (an exception in the job, or
# its worker died on every try).
JOB_FAILED = {"error": {"code": "upstream_error", "message": "Generation failed in the worker."}}

log = logging.getLogger("hitokoto")


def connect(redis_url: str, socket_timeout_s: float = 10) -> Redis:
    """A Redis client that fails fast when Redis is down. Blocking reads must use a
    socket_timeout longer than the wait, or redis-py gives up before RQ does."""
    return Redis.from_url(
        redis_url,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=socket_timeout_s,
        health_check_interval=30,
    )


def instant_queue(connection: Redis) -> Queue:
    return Queue(INSTANT_QUEUE, connection=connection)


def batch_queue(connection: Redis) -> Queue:
    return Queue(BATCH_QUEUE, connection=connection)


def job_timeout_s(config: Config) -> int:
    """Worst case for one model call with every SDK retry, plus backoff slack."""
    per_call = config.model_timeout * (config.model_max_retries + 1) + 10 * config.model_max_retries
    return int(per_call) + 30


def _enqueue(queue: Queue, config: Config, function_name: str, argument, pipeline) -> Job:
    return queue.enqueue(
        function_name,
        argument,
        job_timeout=job_timeout_s(config),
        result_ttl=RESULT_TTL_S,
        failure_ttl=FAILURE_TTL_S,
        retry=Retry(max=RETRIES_AFTER_CRASH),
        pipeline=pipeline,
    )


def enqueue_job(queue: Queue, config: Config, function_name: str, argument) -> Job:
    """Queue function_name(argument) with our timeouts, result TTLs and crash retry."""
    # One pipeline: without it RQ sends its queue-set update and the job in two round trips.
    with queue.connection.pipeline() as pipeline:
        job = _enqueue(queue, config, function_name, argument, pipeline)
        pipeline.execute()
    return job


def enqueue_instant(queue: Queue, config: Config, keep_unused: bool, presence: WorkerPresence) -> Job:
    """Queue one instant generation. The job is kept (no TTL) so a request that timed out
    still gets its sentence into the pool when a worker reaches it. The same round trip
    counts the workers registered on the queue and tells `presence`."""
    with queue.connection.pipeline() as pipeline:
        job = _enqueue(queue, config, INSTANT_JOB, keep_unused, pipeline)
        pipeline.scard(worker_registration.WORKERS_BY_QUEUE_KEY % queue.name)
        presence.saw(pipeline.execute()[-1])
    return job


def enqueue_batch(queue: Queue, config: Config, count: int) -> Job:
    """Queue one batch job asking the model for `count` sentences in a single call."""
    return enqueue_job(queue, config, BATCH_JOB, count)


def queued_batch_sizes(queue: Queue) -> list[int]:
    """Sentences asked for by each batch job still waiting on `queue` or running now."""
    job_ids = queue.get_job_ids() + queue.started_job_registry.get_job_ids()
    jobs = Job.fetch_many(job_ids, connection=queue.connection)
    return [job.args[0] for job in jobs if job is not None and job.func_name == BATCH_JOB and job.args]


def publish_outcome(outcome: dict) -> None:
    """From inside an instant job: hand its outcome to the waiting request now.

    RQ records the result only after its own bookkeeping (registries, dependents, worker
    stats: four round trips, ~1.3 ms on the instant bench). RQ still records it; this copy
    just arrives first. Outside a job, or when Redis fails, the request falls back to RQ's.
    """
    job = get_current_job()
    if job is None:
        return
    key = OUTCOME_KEY_PREFIX + job.id
    try:
        with job.connection.pipeline(transaction=False) as pipeline:
            pipeline.xadd(key, {"outcome": json.dumps(outcome, ensure_ascii=False)}, maxlen=1)
            pipeline.expire(key, OUTCOME_TTL_S)
            pipeline.execute()
    except RedisError as exc:
        log.warning("instant job %s: early outcome not published (%s)", job.id, type(exc).__name__)


def wait_for_outcome(job: Job, timeout_s: int) -> dict | None:
    """Block until the instant job's outcome is known; None when timeout_s passes first.

    Waits on two streams at once: the job's early copy (publish_outcome) and RQ's own result,
    which is how failures (an exception, a worker that died on every try) arrive.
    """
    rq_key, early_key = Result.get_key(job.id), OUTCOME_KEY_PREFIX + job.id
    streams = job.connection.xread({early_key: "0-0", rq_key: "0-0"}, block=timeout_s * 1000)
    entries_by_key = {as_text(key): entries for key, entries in streams or []}
    if entries_by_key.get(early_key):
        _entry_id, fields = entries_by_key[early_key][-1]
        return json.loads(fields[b"outcome"])
    if not entries_by_key.get(rq_key):
        return None
    result_id, payload = entries_by_key[rq_key][-1]
    result = Result.restore(
        job.id, as_text(result_id), payload, connection=job.connection, serializer=job.serializer
    )
    if result.type != Result.Type.SUCCESSFUL:
        log.error("instant job %s failed in the worker", job.id)
        return JOB_FAILED
    return result.return_value


def worker_count(queue: Queue) -> int:
    """Workers registered as listening on this queue."""
    return Worker.count(connection=queue.connection, queue=queue)


class WorkerPresence:
    """Answers "is any worker listening?" for the instant path. A yes is trusted for
    `confirm_s` seconds and renewed by every enqueue, which counts the workers in its own
    pipeline (saw()), so steady traffic never pays a separate round trip for it; a no is
    checked every time, so a worker that starts is seen at once."""

    def __init__(self, queue: Queue, confirm_s: float = 2.0):
        self.queue = queue
        self.confirm_s = confirm_s
        self._confirmed_until = 0.0

    def any_listening(self) -> bool:
        if time.monotonic() < self._confirmed_until:
            return True
        return self.saw(worker_count(self.queue))

    def saw(self, workers_listening: int) -> bool:
        """Record a worker count read elsewhere; returns whether any worker listens."""
        self._confirmed_until = time.monotonic() + self.confirm_s if workers_listening > 0 else 0.0
        return workers_listening > 0


def recover_dead_worker(connection: Redis, worker_name: str) -> str | None:
    """Unregister a worker that died without cleaning up, and hand its running job to RQ's
    abandoned-job handling now (retried if it has retries left, else moved to the failed
    registry) instead of after its heartbeat expires. Returns that job's id, if any."""
    worker = Worker.find_by_key(Worker.redis_worker_namespace_prefix + worker_name, connection=connection)
    if worker is None:
        return None
    job = worker.get_current_job()
    worker.register_death()
    if job is None:
        return None
    registry = StartedJobRegistry(job.origin, connection=connection)
    entries = [
        entry
        for entry in connection.zrange(registry.key, 0, -1)
        if registry.parse_job_id(as_text(entry)) == job.id
    ]
    if entries:
        connection.zadd(registry.key, dict.fromkeys(entries, 0), xx=True)  # expire them now
        registry.cleanup(timestamp=0)
    return job.id
