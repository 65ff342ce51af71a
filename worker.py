"""Generation workers: `python worker.py` serves the `instant` queue before `batch`.

Starts one process that only takes instant jobs (so a long batch job never delays an
instant request) plus --workers processes that take instant first, then batch. Each process
imports the SDK and builds its client once, and runs jobs in-process (no fork per job).
SIGTERM/SIGINT let running jobs finish; a crashed process is restarted.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
import uuid

from redis.exceptions import RedisError
from rq import Queue, SimpleWorker, worker_registration
from rq.utils import as_text

import hitokoto.jobs  # noqa: F401 - imports openai once, before forking the worker processes
from hitokoto.config import Config, ConfigError
from hitokoto.embedded_redis import URL_FILE, recorded_url
from hitokoto.pool import Pool, PoolError
from hitokoto.queues import BATCH_QUEUE, INSTANT_QUEUE, connect, recover_dead_worker
from hitokoto.startup import fail, fail_redis_unreachable, load_config_or_exit, redacted_url

log = logging.getLogger("hitokoto.worker")
RESTART_DELAY_S = 2
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# RQ heartbeats every WORKER_TTL_S - 15 seconds while idle; the web app counts registered
# workers, so a short TTL makes a lost registration come back (and a dead one go) quickly.
WORKER_TTL_S = 20


class EarlyCallQueue(Queue):
    """RQ's queue as a worker pops from it: popping an instant job's id sends the job's model
    call at once (the one armed while the worker waited, hitokoto.jobs.start_model_call_early),
    before RQ fetches the job and records it as started. Calls whose jobs will not run are
    orphaned, and keep their sentences (hitokoto.jobs.orphan_early_model_calls)."""

    early_call_queues = frozenset({INSTANT_QUEUE})  # queues that hold nothing but instant jobs

    @classmethod
    def lmove(cls, connection, queue_key, timeout):  # a worker on one queue pops with this
        return cls._popped(super().lmove(connection, queue_key, timeout))

    @classmethod
    def lpop(cls, queue_keys, timeout, connection=None):  # a worker on several queues, with this
        return cls._popped(super().lpop(queue_keys, timeout, connection=connection))

    @classmethod
    def dequeue_any(cls, *args, **kwargs):
        result = None
        try:  # it pops again when a job is gone, and may then wait until its timeout raises
            result = super().dequeue_any(*args, **kwargs)
            return result
        finally:
            hitokoto.jobs.orphan_early_model_calls(except_job_id=result[0].id if result else None)

    @classmethod
    def _popped(cls, result):
        if result is not None:
            queue_key, job_id = map(as_text, result)
            if queue_key.removeprefix(cls.redis_queue_namespace_prefix) in cls.early_call_queues:
                hitokoto.jobs.start_model_call_early(job_id)
        return result


class ResilientWorker(SimpleWorker):
    """A SimpleWorker whose instant jobs' model calls are built while it waits and sent when
    the job is popped (EarlyCallQueue), and that registers again when Redis lost its state
    (restarted without persistence), so the web app does not see "no worker" while this one
    is listening."""

    queue_class = EarlyCallQueue

    # RQ heartbeats several times per job; one EXISTS each cost 17% of a worker's time
    # (py-spy, bench/instant_latency.py), so the registration is checked at most this often.
    registration_check_interval_s = 5.0
    _next_registration_check = 0.0
    _job_just_dequeued = False

    def dequeue_job_and_maintain_ttl(self, *args, **kwargs):
        if not self.queue_class.early_call_queues.isdisjoint(self.queue_names()):
            hitokoto.jobs.arm_model_call()  # built while this thread waits for the pop
        return super().dequeue_job_and_maintain_ttl(*args, **kwargs)

    def execute_job(self, job, queue):
        try:
            super().execute_job(job, queue)
        finally:
            hitokoto.jobs.orphan_early_model_calls()  # one the job did not take (RQ failed it first)

    def reorder_queues(self, reference_queue):
        # RQ calls this only when a job was dequeued. Its next standalone heartbeat (the one
        # right after the dequeue) is redundant: prepare_job_execution sends one in its own
        # pipeline a moment later. Skipping it saves a round trip before every job (~0.3 ms
        # of an instant request, MONITOR on bench/instant_latency.py).
        super().reorder_queues(reference_queue)
        self._job_just_dequeued = True

    def heartbeat(self, timeout: int | None = None, pipeline=None):
        if pipeline is not None:
            super().heartbeat(timeout, pipeline)
            return
        if self._job_just_dequeued:
            self._job_just_dequeued = False
            return
        if time.monotonic() >= self._next_registration_check:
            self._next_registration_check = time.monotonic() + self.registration_check_interval_s
            self._register_again_if_lost()
        # RQ sends a heartbeat's three commands one by one; batched they cost one round trip.
        with self.connection.pipeline(transaction=False) as batch:
            super().heartbeat(timeout, batch)
            batch.execute()

    def _register_again_if_lost(self) -> None:
        if not self.connection.exists(self.key):
            self.log.warning("worker %s: registration lost (Redis restarted?); registering again", self.name)
            with self.connection.pipeline() as registration:
                registration.hset(self.key, mapping=self.serialize())
                worker_registration.register(self, registration)
                registration.execute()


def run_worker(worker_name: str, queue_names: list[str], burst: bool) -> None:
    """Body of one worker process: a SimpleWorker on the given queues, in priority order."""
    for signum in STOP_SIGNALS:  # not the supervisor's handler; RQ sets its own
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # held while a restart forked this process
    try:  # config, pool and SDK client, built once before any job
        context = hitokoto.jobs.worker_context()
    except (ConfigError, PoolError) as exc:
        fail(str(exc))
    connection = connect(context.config.redis_url, socket_timeout_s=30)
    worker = ResilientWorker(queue_names, name=worker_name, connection=connection, worker_ttl=WORKER_TTL_S)
    try:
        worker.work(burst=burst, logging_level="INFO")
    except RedisError as exc:
        # RQ waits out a Redis outage while it listens, but not one during its other writes,
        # such as deregistering on the way out when Redis stopped first. One line, not RQ's
        # traceback; the registration expires by itself, and the supervisor restarts this
        # process unless it is stopping.
        log.warning("worker %s ended: Redis unavailable (%s)", worker_name, type(exc).__name__)
        raise SystemExit(1) from None


def _start(queue_names: list[str], burst: bool) -> multiprocessing.Process:
    worker_name = f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    process = multiprocessing.get_context("fork").Process(
        target=run_worker, args=(worker_name, queue_names, burst), name=worker_name
    )
    process.start()
    return process


def _recover(redis_url: str, process: multiprocessing.Process) -> None:
    """After a worker process died abnormally, make sure its job is not silently lost."""
    try:
        job_id = recover_dead_worker(connect(redis_url), process.name)
    except RedisError as exc:
        log.error("could not recover jobs of worker %s: %s", process.name, type(exc).__name__)
        return
    if job_id:
        log.warning("worker %s died during job %s; RQ retries it or marks it failed", process.name, job_id)


def supervise(redis_url: str, plans: list[list[str]], burst: bool) -> int:
    """Run one process per plan; forward stop signals; restart crashed processes."""
    processes = [_start(plan, burst) for plan in plans]
    stopping = False

    def stop(signum, _frame):
        nonlocal stopping
        stopping = True
        for process in processes:
            if process.is_alive():
                _kill(process, signum)  # RQ ignores a duplicate within 1 s (e.g. Ctrl-C)

    for signum in STOP_SIGNALS:
        signal.signal(signum, stop)
    while True:
        for index, process in enumerate(processes):
            process.join(timeout=0.2)
            if process.is_alive() or stopping or burst:
                continue
            log.warning("worker %s exited with %s; restarting", process.name, process.exitcode)
            _recover(redis_url, process)
            time.sleep(RESTART_DELAY_S)
            with _stop_signals_held():  # a stop meanwhile starts nothing; one from now on stops it
                if not stopping:
                    processes[index] = _start(plans[index], burst)
        if not any(process.is_alive() for process in processes) and (stopping or burst):
            return 0


@contextlib.contextmanager
def _stop_signals_held():
    """Stop signals wait until the block ends: a process started in it is in the supervisor's
    list before its stop handler can run, and the child starts with them held until it has
    set its own handlers (run_worker), so neither misses one."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _kill(process: multiprocessing.Process, signum: int) -> None:
    try:
        os.kill(process.pid, signum)
    except ProcessLookupError:
        pass


def wait_for_redis(redis_url: str, timeout_s: float) -> bool:
    """True once Redis answers; Redis may be starting beside us (honcho, containers). Says
    once that it waits, so a wrong REDIS_URL is not met with silence."""
    connection = connect(redis_url)
    deadline = time.monotonic() + timeout_s
    for attempt in itertools.count():
        try:
            return connection.ping()
        except RedisError:
            if time.monotonic() >= deadline:
                return False
            if attempt == 0:
                log.info("waiting up to %g s for Redis at %s", timeout_s, redacted_url(redis_url))
            time.sleep(0.5)


def warn_if_run_sh_serves_elsewhere(config: Config) -> None:
    """A worker started by hand beside ./run.sh, with no Redis configured, takes jobs from
    the default Redis, while the service's web and batch.py use ./run.sh's private one (its
    URL in URL_FILE): say so, and how to join that service, rather than wait in silence.
    ./run.sh hands its own worker REDIS_URL, which counts as configured."""
    private_url = recorded_url()
    if config.redis_url_configured or private_url is None or private_url == config.redis_url:
        return
    log.warning(
        "no Redis is configured, so this worker takes jobs from %s; ./run.sh left the URL of its "
        "private Redis in %s: to work for that service, start the worker with REDIS_URL=%s",
        redacted_url(config.redis_url),
        URL_FILE,
        redacted_url(private_url),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workers", type=int, default=1, help="processes taking instant then batch jobs (default 1)"
    )
    parser.add_argument(
        "--instant-workers", type=int, default=1, help="processes taking only instant jobs (default 1)"
    )
    parser.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    parser.add_argument(
        "--redis-wait", type=float, default=20, help="seconds to wait for Redis at start-up (default 20)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The SDK's HTTP client logs every request at INFO; RQ already logs each job.
    for noisy in ("httpx", "httpx2", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    config = load_config_or_exit(web=False)
    try:
        pool = Pool(config.database)
        pool.migrate()
        pool.close()  # each process opens its own connection after the fork
    except PoolError as exc:
        fail(str(exc))
    plans = [[INSTANT_QUEUE]] * args.instant_workers + [[INSTANT_QUEUE, BATCH_QUEUE]] * args.workers
    if not plans:
        fail("nothing to run: --workers and --instant-workers are both 0")
    warn_if_run_sh_serves_elsewhere(config)  # before a wait for a Redis that may not run
    if not wait_for_redis(config.redis_url, args.redis_wait):
        fail_redis_unreachable(config.redis_url)
    shown_url = redacted_url(config.redis_url)
    log.info("starting %d worker process(es); model %s; Redis %s", len(plans), config.model, shown_url)
    return supervise(config.redis_url, plans, args.burst)


if __name__ == "__main__":
    sys.exit(main())
