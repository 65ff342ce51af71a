"""Redis connections and the two RQ queues: `instant` (requests wait on it) and `batch`."""

from __future__ import annotations

import time

from redis import Redis
from rq import Queue, Retry, Worker
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.results import Result
from rq.utils import as_text

from hitokoto.config import Config

INSTANT_QUEUE = "instant"
BATCH_QUEUE = "batch"
CONNECT_TIMEOUT_S = 2
# How long finished results and failures stay readable in Redis.
RESULT_TTL_S = 3600
FAILURE_TTL_S = 7 * 24 * 3600
# A job whose worker died mid-run (SIGKILL, OOM) runs once more before it counts as failed.
RETRIES_AFTER_CRASH = 1


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


def _enqueue(queue: Queue, config: Config, function_name: str, argument) -> Job:
    return queue.enqueue(
        function_name,
        argument,
        job_timeout=job_timeout_s(config),
        result_ttl=RESULT_TTL_S,
        failure_ttl=FAILURE_TTL_S,
        retry=Retry(max=RETRIES_AFTER_CRASH),
    )


def enqueue_instant(queue: Queue, config: Config, keep_unused: bool) -> Job:
    """Queue one instant generation. The job is kept (no TTL) so a request that timed out
    still gets its sentence into the pool when a worker reaches it."""
    return _enqueue(queue, config, "hitokoto.jobs.generate_instant", keep_unused)


def enqueue_batch(queue: Queue, config: Config, count: int) -> Job:
    """Queue one batch job asking the model for `count` sentences in a single call."""
    return _enqueue(queue, config, "hitokoto.jobs.generate_batch", count)


def wait_for_result(job: Job, timeout_s: int) -> Result | None:
    """Block until the job has a result (success or failure) or timeout_s passes (None)."""
    return job.latest_result(timeout=timeout_s)


def worker_count(queue: Queue) -> int:
    """Workers registered as listening on this queue."""
    return Worker.count(connection=queue.connection, queue=queue)


class WorkerPresence:
    """Answers "is any worker listening?" for the instant path. A yes is trusted for
    `confirm_s` seconds (saves two Redis round trips a request); a no is checked every time,
    so a worker that starts is seen at once."""

    def __init__(self, queue: Queue, confirm_s: float = 2.0):
        self.queue = queue
        self.confirm_s = confirm_s
        self._confirmed_until = 0.0

    def any_listening(self) -> bool:
        now = time.monotonic()
        if now < self._confirmed_until:
            return True
        if worker_count(self.queue) > 0:
            self._confirmed_until = now + self.confirm_s
            return True
        return False


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
