"""Generation workers: `python worker.py` serves the `instant` queue before `batch`.

Starts one process that only takes instant jobs (so a long batch job never delays an
instant request) plus --workers processes that take instant first, then batch. Each process
imports the SDK and builds its client once, and runs jobs in-process (no fork per job).
SIGTERM/SIGINT let running jobs finish; a crashed process is restarted.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import signal
import sys
import time

from redis.exceptions import RedisError
from rq import SimpleWorker

import hitokoto.jobs  # noqa: F401 - imports openai once, before forking the worker processes
from hitokoto.pool import Pool, PoolError
from hitokoto.queues import BATCH_QUEUE, INSTANT_QUEUE, connect
from hitokoto.startup import fail, load_config_or_exit, redacted_url

log = logging.getLogger("hitokoto.worker")
RESTART_DELAY_S = 2
# A worker that dies without unregistering disappears from Redis after this long.
WORKER_TTL_S = 60


def run_worker(queue_names: list[str], burst: bool) -> None:
    """Body of one worker process: a SimpleWorker on the given queues, in priority order."""
    config = load_config_or_exit(web=False)
    hitokoto.jobs.worker_context()  # build the SDK client and open the pool before any job
    connection = connect(config.redis_url, socket_timeout_s=30)
    worker = SimpleWorker(queue_names, connection=connection, worker_ttl=WORKER_TTL_S)
    worker.work(burst=burst, logging_level="INFO")


def _start(queue_names: list[str], burst: bool) -> multiprocessing.Process:
    process = multiprocessing.get_context("fork").Process(
        target=run_worker, args=(queue_names, burst), name="+".join(queue_names)
    )
    process.start()
    return process


def supervise(plans: list[list[str]], burst: bool) -> int:
    """Run one process per plan; forward stop signals; restart crashed processes."""
    processes = [_start(plan, burst) for plan in plans]
    stopping = False

    def stop(signum, _frame):
        nonlocal stopping
        stopping = True
        for process in processes:
            if process.is_alive():
                _kill(process, signum)  # RQ ignores a duplicate within 1 s (e.g. Ctrl-C)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        for index, process in enumerate(processes):
            process.join(timeout=0.2)
            if process.is_alive() or stopping or burst:
                continue
            log.warning("worker %s exited with %s; restarting", process.name, process.exitcode)
            time.sleep(RESTART_DELAY_S)
            processes[index] = _start(plans[index], burst)
        if not any(process.is_alive() for process in processes) and (stopping or burst):
            return 0


def _kill(process: multiprocessing.Process, signum: int) -> None:
    try:
        os.kill(process.pid, signum)
    except ProcessLookupError:
        pass


def wait_for_redis(redis_url: str, timeout_s: float) -> bool:
    """True once Redis answers; Redis may be starting beside us (honcho, containers)."""
    connection = connect(redis_url)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return connection.ping()
        except RedisError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)


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

    config = load_config_or_exit(web=False)
    try:
        pool = Pool(config.database)
        pool.migrate()
        pool.close()  # each process opens its own connection after the fork
    except PoolError as exc:
        fail(str(exc))
    if not wait_for_redis(config.redis_url, args.redis_wait):
        fail(f"cannot reach Redis at {redacted_url(config.redis_url)}; start it or set REDIS_URL")
    plans = [[INSTANT_QUEUE]] * args.instant_workers + [[INSTANT_QUEUE, BATCH_QUEUE]] * args.workers
    if not plans:
        fail("nothing to run: --workers and --instant-workers are both 0")
    log.info("starting %d worker process(es); model %s", len(plans), config.model)
    return supervise(plans, args.burst)


if __name__ == "__main__":
    sys.exit(main())
