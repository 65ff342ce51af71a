"""Fill the sentence pool off-peak: `python batch.py -n 200`.

Enqueues batch jobs (each asks the model for many sentences in one call), shows progress
while the workers drain them, tops up when duplicates or failures leave it short, and ends
with `new / duplicate / failed`. With --fill-to N instead of -n it adds only what the pool
lacks of N unused sentences (read from the pool file, so it runs where the service does),
counting the batch jobs still queued or running as on their way. --status only shows the
pool's counts, the batch jobs waiting, running and failed, and the workers listening.
Exit status: 0 when at least one new sentence was added (or --fill-to found nothing to
add), 1 when nothing could be generated, 2 on configuration, pool or Redis errors, 141
when whoever reads the output stops reading it (a pipe into `head`).

It talks to the service's Redis: REDIS_URL (environment or .env) or config.json's redis_url
when set, else the private Redis that ./run.sh starts (it leaves the URL in data/redis/url,
relative to the working directory, as run.sh's own), else redis://127.0.0.1:6379/0.

Examples:
  python batch.py -n 200          # add 200 new sentences and wait for them
  python batch.py -n 1000 --no-wait   # only enqueue (e.g. from cron); workers do the rest
  python batch.py --fill-to 500   # top the pool up to 500 unused sentences (e.g. nightly)
  python batch.py --status        # pool counts, queued batch jobs, workers listening
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time

from redis.exceptions import RedisError
from rq.job import Job, JobStatus

from hitokoto.config import Config
from hitokoto.embedded_redis import URL_FILE, recorded_url
from hitokoto.pool import Pool, PoolError
from hitokoto.queues import (
    FAILURE_TTL_S,
    batch_queue,
    connect,
    enqueue_batch,
    instant_queue,
    queued_batch_sizes,
    worker_count,
)
from hitokoto.startup import fail, fail_redis_unreachable, load_config_or_exit, redacted_url

POLL_INTERVAL_S = 0.5
# Extra model calls allowed beyond the first round, as a multiple of it (duplicates, junk).
TOP_UP_FACTOR = 1.0


@dataclasses.dataclass
class Tally:
    new: int = 0
    duplicate: int = 0
    failed: int = 0  # model calls that failed
    rejected: int = 0  # lines of output that were not usable sentences
    calls: int = 0

    def add(self, job: Job) -> None:
        self.calls += 1
        if job.get_status() != JobStatus.FINISHED:
            self.failed += 1
            return
        outcome = job.return_value() or {}
        self.new += outcome.get("new", 0)
        self.duplicate += outcome.get("duplicate", 0)
        self.rejected += outcome.get("rejected", 0)
        if "error" in outcome:
            self.failed += 1

    def line(self) -> str:
        return f"new {self.new} / duplicate {self.duplicate} / failed {self.failed}"


def job_sizes(wanted: int, batch_size: int) -> list[int]:
    """Sentences to ask for per job so that the jobs together ask for `wanted`."""
    full, rest = divmod(wanted, batch_size)
    return [batch_size] * full + ([rest] if rest else [])


def enqueue_round(queue, config: Config, wanted: int) -> list[str]:
    return [enqueue_batch(queue, config, size).id for size in job_sizes(wanted, config.batch_size)]


def drain(connection, job_ids: list[str], tally: Tally, deadline: float) -> bool:
    """Wait for the jobs, adding each finished one to the tally. False when time ran out."""
    pending = list(job_ids)
    while pending:
        if time.monotonic() > deadline:
            return False
        still_pending = []
        for job_id, job in zip(pending, Job.fetch_many(pending, connection=connection), strict=True):
            if job is None:  # expired or deleted: counts as a failed call
                tally.calls += 1
                tally.failed += 1
            elif (
                job.is_finished
                or job.is_failed
                or job.get_status() in (JobStatus.STOPPED, JobStatus.CANCELED)
            ):
                tally.add(job)
                print(f"[batch] {tally.calls} call(s) done: {tally.line()}", file=sys.stderr, flush=True)
            else:
                still_pending.append(job_id)
        pending = still_pending
        if pending:
            time.sleep(POLL_INTERVAL_S)
    return True


def service_redis(config: Config) -> tuple[Config, str]:
    """The config with the Redis the service uses, and what to add if that Redis does not answer.

    With no Redis configured, ./run.sh serves from a private Redis on a port of its choosing,
    so the default URL would be some other Redis (where no worker takes these jobs).
    """
    if config.redis_url_configured:
        return config, ""
    url = recorded_url()
    if url is None:
        return config, " (or start ./run.sh, whose private Redis batch.py then finds by itself)"
    if not url.startswith("redis://"):
        fail(f"{URL_FILE} does not hold a Redis URL; start ./run.sh again, or set REDIS_URL")
    hint = f" (the private Redis of ./run.sh, from {URL_FILE}: is ./run.sh running?)"
    return dataclasses.replace(config, redis_url=url), hint


def read_pool_counts(config: Config, no_pool_message: str) -> tuple[int, int]:
    """(sentences, unused) read from the pool file itself (counts kept in one row: no scan).
    A path with no pool is refused rather than created: batch.py run on another machine
    than the service would otherwise find an empty pool there every time."""
    if not config.database.is_file():
        fail(no_pool_message)
    pool = Pool(config.database)
    try:
        return pool.counts()
    except PoolError as exc:
        fail(str(exc))
    finally:
        pool.close()


def missing_unused(config: Config, fill_to: int) -> int:
    """How many sentences the pool lacks of `fill_to` unused ones. Jobs already queued are
    subtracted later (beyond_queued)."""
    unused = read_pool_counts(
        config,
        f"--fill-to reads the pool, and there is none at {config.database}; run batch.py where "
        "the service runs (its worker creates the pool), or use -n",
    )[1]
    print(f"[batch] the pool holds {unused} unused sentence(s); --fill-to {fill_to}", file=sys.stderr)
    return max(0, fill_to - unused)


def show_status(config: Config) -> int:
    """--status: how full the pool is, what the batch queue holds, and who listens."""
    total, unused = read_pool_counts(
        config,
        f"there is no pool at {config.database}: the service's worker creates it when it first "
        "starts (is this where the service runs?)",
    )
    print(f"pool {config.database}: {total} sentence(s), {unused} unused")
    config, unreachable_hint = service_redis(config)
    connection = connect(config.redis_url)
    try:
        queue = batch_queue(connection)
        sizes = queued_batch_sizes(queue)
        failed = queue.failed_job_registry.count
        instant_workers = worker_count(instant_queue(connection))
        batch_workers = worker_count(queue)
    except RedisError:
        fail_redis_unreachable(config.redis_url, hint=unreachable_hint)
    print(f"batch jobs waiting or running: {len(sizes)}, asking for {sum(sizes)} sentence(s)")
    print(f"batch jobs failed in the last {FAILURE_TTL_S // 86400} days: {failed}")
    print(f"workers listening: instant {instant_workers}, batch {batch_workers}")
    return 0


def beyond_queued(queue, missing: int) -> int:
    """What --fill-to still has to ask for once the batch jobs already queued or running (an
    earlier --no-wait the workers have not caught up with) are counted as on their way."""
    on_the_way = sum(queued_batch_sizes(queue))
    if on_the_way:
        print(f"[batch] jobs already queued or running ask for {on_the_way} sentence(s)", file=sys.stderr)
    return max(0, missing - on_the_way)


def run(
    config: Config,
    wanted: int,
    wait: bool,
    timeout_s: float,
    unreachable_hint: str = "",
    count_queued: bool = False,
) -> int:
    queue = batch_queue(connect(config.redis_url))
    try:
        workers_listening = worker_count(queue)  # batch.py's first word with Redis
    except RedisError:
        fail_redis_unreachable(config.redis_url, hint=unreachable_hint)
    if workers_listening == 0:
        print(
            "[batch] warning: no worker is listening on the batch queue; start `python worker.py`",
            file=sys.stderr,
        )
    if count_queued and (wanted := beyond_queued(queue, wanted)) == 0:
        print("nothing to add: the jobs already queued ask for what the pool lacks")
        return 0
    first_round = enqueue_round(queue, config, wanted)
    print(f"[batch] enqueued {len(first_round)} job(s) for {wanted} sentence(s)", file=sys.stderr)
    if not wait:
        return 0
    tally = wait_and_top_up(queue, config, first_round, wanted, timeout_s)
    print(f"{tally.line()} (rejected lines {tally.rejected}, model calls {tally.calls})")
    return 0 if tally.new > 0 else 1


def wait_and_top_up(queue, config: Config, first_round: list[str], wanted: int, timeout_s: float) -> Tally:
    """Drain the first round's jobs, then enqueue more while duplicates or short answers
    leave the run short, up to TOP_UP_FACTOR times the first round's calls."""
    tally = Tally()
    deadline = time.monotonic() + timeout_s
    max_calls = len(first_round) + math.ceil(len(first_round) * TOP_UP_FACTOR)
    round_ids = first_round
    while True:
        new_before = tally.new
        if not drain(queue.connection, round_ids, tally, deadline):
            print(f"[batch] timed out after {timeout_s:.0f}s; jobs left keep running", file=sys.stderr)
            return tally
        missing = wanted - tally.new
        calls_left = max_calls - tally.calls
        if missing <= 0 or calls_left <= 0 or tally.new == new_before:
            return tally
        round_ids = enqueue_round(queue, config, min(missing, calls_left * config.batch_size))
        print(f"[batch] {missing} short; enqueued {len(round_ids)} more job(s)", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    config = load_config_or_exit(web=False)
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("Examples:")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "-n",
        "--num",
        type=int,
        default=config.sentence_num,
        help=f"new sentences to add (default sentence_num = {config.sentence_num})",
    )
    mode.add_argument(
        "--fill-to", type=int, metavar="N", help="add only what the pool lacks of N unused sentences"
    )
    mode.add_argument(
        "--status",
        action="store_true",
        help="show the pool's counts, queued batch jobs and workers; add nothing",
    )
    parser.add_argument("--no-wait", action="store_true", help="only enqueue, do not wait")
    parser.add_argument(
        "--timeout", type=float, default=3600, help="seconds to wait for the workers (default 3600)"
    )
    args = parser.parse_args(argv)
    if args.num < 1:
        fail("-n must be at least 1")
    if args.fill_to is not None and args.fill_to < 1:
        fail("--fill-to must be at least 1")
    if args.status:
        return show_status(config)
    if not config.model_configured:
        fail(
            "no model configured: set OPENAI_API_KEY in .env (read by ./run.sh and batch.py alike) "
            "or in this shell, or api_key / base_url in config.json"
        )
    wanted = args.num if args.fill_to is None else missing_unused(config, args.fill_to)
    if wanted == 0:
        print(f"nothing to add: the pool already holds {args.fill_to} or more unused sentences")
        return 0
    config, unreachable_hint = service_redis(config)
    try:
        return run(
            config,
            wanted,
            wait=not args.no_wait,
            timeout_s=args.timeout,
            unreachable_hint=unreachable_hint,
            count_queued=args.fill_to is not None,
        )
    except RedisError:
        fail(f"lost connection to Redis at {redacted_url(config.redis_url)}")


def exit_quietly_if_no_one_reads(command) -> int:
    """command(), ending with status 141 (as a command killed by SIGPIPE) instead of a traceback
    when whoever reads the output stops early (`batch.py --status | head -1`). Python's own
    recipe: the last flush is made here, and stdout then points at /dev/null so that the
    one at exit cannot fail again."""
    try:
        status = command()
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(exit_quietly_if_no_one_reads(main))
