"""batch.py as a user runs it, with real workers draining the batch queue."""

import json
import subprocess
import sys

import pytest
from redis import Redis
from rq import SimpleWorker

from hitokoto.pool import Pool
from hitokoto.queues import batch_queue
from tests.conftest import PROJECT_DIR, raw_config, service_env
from tests.fake_model import Script
from tests.helpers import free_port, no_worker_redis_url, wait_until


@pytest.fixture
def shared_pool(service_dir, workers):
    return Pool(service_dir / "pool.db")


def run_batch(service_dir, *args, cwd=PROJECT_DIR, env: dict | None = None, timeout_s=120):
    """batch.py with the session's service environment, plus `env`."""
    return subprocess.run(
        [sys.executable, str(PROJECT_DIR / "batch.py"), *args],
        cwd=cwd,
        env=service_env(service_dir) | (env or {}),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def test_batch_adds_n_new_sentences_with_few_model_calls(service_dir, shared_pool, fake_model):
    total_before, unused_before = shared_pool.counts()
    result = run_batch(service_dir, "-n", "45")
    assert result.returncode == 0, result.stderr
    assert "new 45 / duplicate 0 / failed 0" in result.stdout
    assert fake_model.calls == 3  # batch_size 20: 20 + 20 + 5 sentences
    assert "[batch]" in result.stderr  # progress while draining
    assert shared_pool.counts() == (total_before + 45, unused_before + 45)
    assert shared_pool.check_integrity() == []


def test_duplicates_are_stored_once_and_counted(service_dir, shared_pool, fake_model):
    fake_model.script = Script(content="同一句话。\n同一句话！\n另一句独特的话，只出现一次。")
    total_before = shared_pool.counts()[0]
    result = run_batch(service_dir, "-n", "3")
    assert result.returncode == 0, result.stderr
    # Call 1: two new, one duplicate; the top-up call for the missing one repeats itself.
    assert "new 2 / duplicate 2 / failed 0" in result.stdout
    assert shared_pool.counts()[0] == total_before + 2
    # A second run gets only duplicates: nothing new, so it exits non-zero.
    again = run_batch(service_dir, "-n", "3")
    assert again.returncode == 1
    assert "new 0 / duplicate 3" in again.stdout
    assert shared_pool.counts()[0] == total_before + 2


def test_short_answers_are_topped_up(service_dir, shared_pool, fake_model):
    fake_model.script = Script(lines_short_by=5)  # asks for 20, gets 15
    result = run_batch(service_dir, "-n", "30")
    assert result.returncode == 0, result.stderr
    assert "more job(s)" in result.stderr
    new = int(result.stdout.split("new ")[1].split(" ")[0])
    assert new >= 30 - 5


def test_model_failure_is_reported_and_exits_non_zero(service_dir, shared_pool, fake_model):
    fake_model.script = Script(status=500)
    total_before = shared_pool.counts()[0]
    result = run_batch(service_dir, "-n", "10")
    assert result.returncode == 1
    assert "new 0 / duplicate 0 / failed 1" in result.stdout
    assert shared_pool.counts()[0] == total_before


def test_no_wait_only_enqueues_and_workers_fill_the_pool(service_dir, shared_pool, fake_model):
    total_before = shared_pool.counts()[0]
    result = run_batch(service_dir, "-n", "25", "--no-wait")
    assert result.returncode == 0
    assert "enqueued 2 job(s)" in result.stderr
    wait_until(lambda: shared_pool.counts()[0] == total_before + 25, timeout_s=30, message="the batch jobs")


def run_batch_with(service_dir, workdir, raw: dict, *args, env: dict | None = None):
    """batch.py run by hand in workdir, with `raw` as its config.json there."""
    (workdir / "config.json").write_text(json.dumps(raw))
    env = {"HITOKOTO_CONFIG": str(workdir / "config.json")} | (env or {})
    return run_batch(service_dir, *args, cwd=workdir, env=env)


def test_redis_down_gives_one_clear_line_and_exit_2(service_dir, tmp_path):
    raw = raw_config(service_dir)
    raw["redis_url"] = raw["redis_url"].replace("redis://", "redis://x")  # REDIS_URL overrides it
    result = run_batch_with(service_dir, tmp_path, raw, "-n", "5", env={"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "hitokoto: cannot reach Redis at redis://127.0.0.1:1/0; start it or set REDIS_URL"
    ]
    assert "Traceback" not in result.stderr


def run_batch_beside_run_sh(service_dir, workdir, private_redis_url, *args):
    """batch.py as run by hand next to ./run.sh: no Redis configured anywhere, and the URL
    of the private Redis that ./run.sh started in data/redis/url of the working directory."""
    raw = raw_config(service_dir, database=str(service_dir / "pool.db"))
    del raw["redis_url"]
    (workdir / "data" / "redis").mkdir(parents=True)
    (workdir / "data" / "redis" / "url").write_text(private_redis_url + "\n")
    return run_batch_with(service_dir, workdir, raw, *args)


def test_without_a_configured_redis_batch_uses_the_one_run_sh_started(
    service_dir, shared_pool, fake_model, redis_url, tmp_path
):
    # The default Redis URL would be another Redis, where no worker takes these jobs.
    total_before = shared_pool.counts()[0]
    result = run_batch_beside_run_sh(service_dir, tmp_path, redis_url, "-n", "20")
    assert result.returncode == 0, result.stderr
    assert "new 20 / duplicate 0 / failed 0" in result.stdout
    assert "no worker is listening" not in result.stderr
    assert shared_pool.counts()[0] == total_before + 20


def test_a_stopped_run_sh_redis_is_named_with_where_its_url_came_from(service_dir, tmp_path):
    gone = f"redis://127.0.0.1:{free_port()}/0"
    result = run_batch_beside_run_sh(service_dir, tmp_path, gone, "-n", "5")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"hitokoto: cannot reach Redis at {gone}; start it or set REDIS_URL "
        "(the private Redis of ./run.sh, from data/redis/url: is ./run.sh running?)"
    ]


def test_no_model_says_where_batch_py_looks_for_one(service_dir, tmp_path):
    """A key given only to ./run.sh's shell is not in batch.py's: say where it reads one."""
    raw = raw_config(service_dir)
    del raw["api_key"], raw["base_url"]
    result = run_batch_with(service_dir, tmp_path, raw, "-n", "5")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "hitokoto: no model configured: set OPENAI_API_KEY in .env (read by ./run.sh and batch.py "
        "alike) or in this shell, or api_key / base_url in config.json"
    ]


def test_fill_to_adds_only_what_the_pool_lacks(service_dir, shared_pool, fake_model):
    """For cron: a nightly --fill-to tops the pool up, and spends nothing when it is full."""
    total_before, unused_before = shared_pool.counts()
    target = unused_before + 25
    result = run_batch(service_dir, "--fill-to", str(target))
    assert result.returncode == 0, result.stderr
    assert "new 25 / duplicate 0 / failed 0" in result.stdout
    assert fake_model.calls == 2  # batch_size 20: 20 + 5
    assert shared_pool.counts() == (total_before + 25, target)
    again = run_batch(service_dir, "--fill-to", str(target))
    assert again.returncode == 0, again.stderr
    assert f"nothing to add: the pool already holds {target} or more unused sentences" in again.stdout
    assert fake_model.calls == 2
    assert shared_pool.counts() == (total_before + 25, target)


def test_fill_to_counts_the_jobs_already_queued(service_dir, shared_pool, redis_url, tmp_path):
    """Nights whose workers were down must not each queue the whole shortfall again."""
    unused = shared_pool.counts()[1]
    no_worker_redis = no_worker_redis_url(redis_url, 5)  # the jobs stay queued
    raw = raw_config(service_dir, database=str(service_dir / "pool.db"), redis_url=no_worker_redis)

    def fill_to(target: int):
        return run_batch_with(service_dir, tmp_path, raw, "--fill-to", str(target), "--no-wait")

    try:
        first = fill_to(unused + 30)
        assert "enqueued 2 job(s) for 30 sentence(s)" in first.stderr  # batch_size 20: 20 + 10
        again = fill_to(unused + 30)
        assert again.returncode == 0, again.stderr
        assert "nothing to add: the jobs already queued ask for what the pool lacks" in again.stdout
        assert "enqueued" not in again.stderr
        higher = fill_to(unused + 45)
        assert "jobs already queued or running ask for 30 sentence(s)" in higher.stderr
        assert "enqueued 1 job(s) for 15 sentence(s)" in higher.stderr
    finally:
        Redis.from_url(no_worker_redis).flushdb()
    assert shared_pool.counts()[1] == unused  # nothing ran: only queued


def test_status_shows_the_pool_the_batch_queue_and_the_workers(service_dir, shared_pool, redis_url, tmp_path):
    total, unused = shared_pool.counts()
    pool_line = f"pool {service_dir / 'pool.db'}: {total} sentence(s), {unused} unused"
    served = run_batch(service_dir, "--status")
    assert served.returncode == 0, served.stderr
    served_lines = served.stdout.splitlines()
    assert served_lines[0] == pool_line
    assert served_lines[-1] == "workers listening: instant 2, batch 1"  # the session's worker.py

    no_worker_redis = no_worker_redis_url(redis_url, 6)
    raw = raw_config(service_dir, database=str(service_dir / "pool.db"), redis_url=no_worker_redis)
    connection = Redis.from_url(no_worker_redis)
    try:
        queue = batch_queue(connection)
        queue.enqueue("tests.no_such_module.generate")  # fails in the worker: cannot be imported
        SimpleWorker([queue], connection=connection).work(burst=True)
        run_batch_with(service_dir, tmp_path, raw, "--fill-to", str(unused + 30), "--no-wait")
        status = run_batch_with(service_dir, tmp_path, raw, "--status")
    finally:
        connection.flushdb()
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines() == [
        pool_line,
        "batch jobs waiting or running: 2, asking for 30 sentence(s)",
        "batch jobs failed in the last 7 days: 1",
        "workers listening: instant 0, batch 0",
    ]


def test_status_read_by_a_reader_that_stops_early_ends_without_a_traceback(service_dir, shared_pool):
    """`batch.py --status | head -1`: here the reader closes the pipe before batch.py, still
    starting, has written a line."""
    process = subprocess.Popen(
        [sys.executable, str(PROJECT_DIR / "batch.py"), "--status"],
        cwd=PROJECT_DIR,
        env=service_env(service_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(timeout=60) == 141
    assert stderr == ""


def test_fill_to_without_the_pool_file_says_so_and_creates_nothing(service_dir, tmp_path):
    elsewhere = tmp_path / "not-here" / "pool.db"
    result = run_batch_with(
        service_dir, tmp_path, raw_config(service_dir, database=str(elsewhere)), "--fill-to", "50"
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"hitokoto: --fill-to reads the pool, and there is none at {elsewhere}; run batch.py where "
        "the service runs (its worker creates the pool), or use -n"
    ]
    assert not elsewhere.parent.exists()


def test_fill_to_and_n_exclude_each_other(service_dir, tmp_path):
    result = run_batch(service_dir, "-n", "5", "--fill-to", "50")
    assert result.returncode == 2
    assert "not allowed with argument" in result.stderr
