"""Surviving the model, Redis, workers and the pool misbehaving (issue #5)."""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import openai
import pytest

from hitokoto import ratelimit
from hitokoto.config import build_config, load_config
from hitokoto.generate import GenerationError, generate_many, generate_one
from hitokoto.pool import Pool
from hitokoto.queues import (
    INSTANT_JOB,
    JOB_FAILED,
    connect,
    enqueue_job,
    instant_queue,
    wait_for_outcome,
    worker_count,
)
from tests.conftest import (
    PROJECT_DIR,
    assert_clean_log,
    raw_config,
    service_env,
    start_redis_server,
    start_workers,
    stop_process,
)
from tests.fake_model import Script
from tests.helpers import (
    ACCESS_TOKEN,
    assert_stays,
    client_for,
    fill,
    free_port,
    no_worker_redis_url,
    post,
    wait_until,
)

# -- model faults, through the real SDK ------------------------------------------------


def sdk_client(base_url: str, timeout_s: float = 2, retries: int = 1) -> openai.OpenAI:
    return openai.OpenAI(api_key="sk-test", base_url=base_url, timeout=timeout_s, max_retries=retries)


@pytest.fixture
def model_config(service_dir):
    return build_config(raw_config(service_dir), service_dir, environ={})


def test_429_without_retry_after_backs_off_a_bounded_number_of_times(fake_model, model_config):
    fake_model.script = Script(status=429)
    with pytest.raises(GenerationError, match="rate limiting"):
        generate_one(sdk_client(fake_model.base_url, retries=2), model_config)
    assert fake_model.calls == 3  # the first try and exactly two retries, then give up


def test_connection_refused_is_an_upstream_error(model_config):
    with pytest.raises(GenerationError, match="could not be reached"):
        generate_one(sdk_client(f"http://127.0.0.1:{free_port()}/v1", retries=0), model_config)


def test_a_hanging_model_times_out(fake_model, model_config):
    fake_model.script = Script(delay_s=3)
    with pytest.raises(GenerationError, match="did not answer in time"):
        generate_one(sdk_client(fake_model.base_url, timeout_s=0.5, retries=0), model_config)


def test_batch_answer_keeps_good_lines_and_drops_junk(fake_model, model_config):
    fake_model.script = Script(
        content="1. 好的一句话在这里。\n2. 抱歉，我无法继续。\n\n3. “另一句好话。”\n4. x"
    )
    sentences, rejected = generate_many(sdk_client(fake_model.base_url), model_config, count=4)
    assert sentences == ["好的一句话在这里。", "另一句好话。"]
    assert rejected == 2


# -- Redis down for the web process -----------------------------------------------------


@pytest.fixture
def app_without_redis(make_app):
    app = make_app(redis_url=f"redis://127.0.0.1:{free_port()}/0", rate_cached="3/min")
    fill(app.extensions["hitokoto"].pool, 10)
    return app


def test_redis_down_instant_answers_503_json(app_without_redis):
    response = post(client_for(app_without_redis), "/hitokoto")
    assert response.status_code == 503
    assert response.json["error"]["code"] == "unavailable"


def test_redis_down_cached_still_serves_and_still_limits(app_without_redis):
    client = client_for(app_without_redis)
    statuses = [post(client, "/hitokoto-cached").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]  # in-memory fallback: limits stay on


def test_no_worker_answers_503_at_once(make_app, redis_url):
    no_worker_url = no_worker_redis_url(redis_url, 3)
    app = make_app(redis_url=no_worker_url)
    response = post(client_for(app), "/hitokoto")
    assert response.status_code == 503
    assert "worker" in response.json["error"]["message"]
    # Nothing was queued: a worker started later does not spend tokens on a refused request.
    assert instant_queue(connect(no_worker_url)).count == 0


# -- a private stack whose Redis and workers the tests may break ------------------------


class Stack:
    """Its own redis-server, worker.py and config, with a pool file of its own."""

    def __init__(self, directory: Path, service_dir: Path, make_app):
        self.directory = directory
        self.service_dir = service_dir
        self.redis_process, self.redis_url = start_redis_server(directory)
        self.redis_port = int(self.redis_url.rsplit(":", 1)[1].split("/")[0])
        config = raw_config(service_dir, redis_url=self.redis_url, database=str(directory / "pool.db"))
        self.config_path = directory / "config.json"
        self.config_path.write_text(json.dumps(config))
        self.log_path = directory / "worker.log"
        self.workers = None
        self.app = make_app(redis_url=self.redis_url, database=str(directory / "pool.db"), rate="1000/min")
        self.pool = Pool(directory / "pool.db")

    def start_workers(self, *args: str, count: int = 2):
        self.workers = start_workers(
            self.service_dir, *args, log_path=self.log_path, config_path=self.config_path
        )
        queue = instant_queue(connect(self.redis_url))
        wait_until(lambda: worker_count(queue) >= count, timeout_s=30, message="workers to register")

    def worker_children(self) -> list[int]:
        children = Path(f"/proc/{self.workers.pid}/task/{self.workers.pid}/children").read_text().split()
        return [int(pid) for pid in children]

    def stop_redis(self):
        self.redis_process.terminate()
        self.redis_process.wait(timeout=10)

    def restart_redis(self):
        self.redis_process, _ = start_redis_server(self.directory, port=self.redis_port)

    def close(self):
        if self.workers:
            stop_process(self.workers)
        if self.redis_process.poll() is None:
            self.redis_process.terminate()
            self.redis_process.wait(timeout=10)


@pytest.fixture
def stack(tmp_path, service_dir, make_app, fake_model):
    if not shutil.which("redis-server"):
        pytest.skip("needs a redis-server binary to stop and restart")
    private = Stack(tmp_path, service_dir, make_app)
    yield private
    private.close()


def test_redis_restart_is_survived_without_restarting_the_service(stack):
    stack.start_workers()
    client = client_for(stack.app)
    assert post(client, "/hitokoto").status_code == 200
    stack.stop_redis()
    assert post(client, "/hitokoto").status_code == 503
    stack.restart_redis()
    # Workers re-register on their own; the web app reconnects on the next request.
    wait_until(lambda: post(client, "/hitokoto").status_code == 200, timeout_s=60, message="recovery")
    assert_clean_log_except_redis(stack.log_path.read_text())


def assert_clean_log_except_redis(log: str) -> None:
    """After a Redis outage RQ may log its own connection tracebacks; secrets never appear."""
    assert ACCESS_TOKEN not in log and "sk-test-" not in log


def test_redis_down_while_batch_runs_exits_2_with_one_line(stack, fake_model):
    stack.start_workers()
    fake_model.script = Script(delay_s=1.5)
    env = service_env(stack.service_dir) | {"HITOKOTO_CONFIG": str(stack.config_path)}
    batch = subprocess.Popen(
        [sys.executable, str(PROJECT_DIR / "batch.py"), "-n", "100"],
        cwd=PROJECT_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(lambda: fake_model.calls >= 1, message="the first batch call")
    stack.stop_redis()
    _, stderr = batch.communicate(timeout=60)
    assert batch.returncode == 2
    assert stderr.strip().splitlines()[-1].startswith("hitokoto: lost connection to Redis")
    assert "Traceback" not in stderr


def test_worker_killed_mid_job_is_retried_not_lost(stack, fake_model):
    stack.start_workers("--workers", "0", "--instant-workers", "1", count=1)
    fake_model.script = Script(delay_s=30)
    total_before = stack.pool.counts()[0]
    (child,) = stack.worker_children()

    def kill_when_busy():  # while the request below waits on the job
        wait_until(lambda: fake_model.calls >= 1, message="the job to reach the model")
        fake_model.script = Script()  # the retry gets a quick answer
        os.kill(child, signal.SIGKILL)

    killer = threading.Thread(target=kill_when_busy)
    killer.start()
    response = post(client_for(stack.app), "/hitokoto", {"gptauth": ACCESS_TOKEN, "encycle": True})
    killer.join()
    # The supervisor restarts the worker and RQ re-runs the job within the request's wait.
    assert response.status_code == 200, response.json
    assert stack.pool.counts()[0] == total_before + 1
    assert stack.pool.get(response.json["id"]).used is False  # encycle: true, stored unused
    assert stack.pool.check_integrity() == []
    log = stop_process(stack.workers) or stack.log_path.read_text()
    stack.workers = None
    assert "died during job" in log


def test_sigterm_lets_the_current_job_finish(stack, fake_model):
    stack.start_workers("--workers", "0", "--instant-workers", "1", count=1)
    fake_model.script = Script(delay_s=2)
    job = instant_queue(connect(stack.redis_url)).enqueue(INSTANT_JOB, True)
    wait_until(lambda: fake_model.calls >= 1, message="the job to start")
    stack.workers.send_signal(signal.SIGTERM)
    stack.workers.wait(timeout=30)
    assert stack.workers.returncode == 0
    assert job.latest_result().type.name == "SUCCESSFUL"
    assert stack.pool.counts()[0] == 1
    stack.workers = None
    assert_clean_log(stack.log_path.read_text())


def test_sigterm_while_a_worker_restarts_stops_everything(stack):
    """A stop that comes while the supervisor waits to restart a crashed worker process must
    stop the one it then starts too: it used to start it unsignalled, wait for it forever, and
    leave it running once killed itself (found as an orphan worker after a test run)."""
    stack.start_workers("--workers", "0", "--instant-workers", "1", count=1)
    (child,) = stack.worker_children()
    os.kill(child, signal.SIGKILL)
    wait_until(lambda: "restarting" in stack.log_path.read_text(), message="the supervisor to see the crash")
    stack.workers.send_signal(signal.SIGTERM)  # within its RESTART_DELAY_S
    stack.workers.wait(timeout=30)
    assert stack.workers.returncode == 0
    stack.workers = None
    assert_stays(lambda: not processes_with_config(stack.config_path), for_s=3, message="no worker left")


def test_a_stop_after_redis_has_gone_ends_with_one_line(stack):
    """A worker stopped after its Redis has gone (./run.sh's private Redis used to stop first
    on Ctrl-C) cannot deregister: it says so in one line, not RQ's traceback."""
    stack.start_workers("--workers", "0", "--instant-workers", "1", count=1)
    stack.stop_redis()
    stack.workers.send_signal(signal.SIGTERM)
    stack.workers.wait(timeout=30)
    assert stack.workers.returncode == 0
    stack.workers = None
    log = stack.log_path.read_text()
    assert "Traceback" not in log
    assert "ended: Redis unavailable (ConnectionError)" in log


def processes_with_config(config_path: Path) -> list[int]:
    """Live processes started with HITOKOTO_CONFIG=config_path (a test's own workers)."""
    wanted = f"HITOKOTO_CONFIG={config_path}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and wanted in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


# -- pool faults ------------------------------------------------------------------------


def test_locked_pool_answers_503_after_the_busy_timeout(app):
    pool = app.extensions["hitokoto"].pool
    fill(pool, 3)
    other_writer = sqlite3.connect(pool.path, isolation_level=None)
    other_writer.execute("BEGIN IMMEDIATE")
    try:
        response = post(client_for(app), "/hitokoto-cached")
    finally:
        other_writer.execute("ROLLBACK")
        other_writer.close()
    assert response.status_code == 503
    assert response.json["error"]["code"] == "unavailable"
    assert pool.counts() == (3, 3)


def start_up(program: str, directory: Path, database: str) -> subprocess.CompletedProcess:
    """Start worker.py or gunicorn on a config naming `database`; they should refuse."""
    (directory / "config.json").write_text(json.dumps({"access_token": ACCESS_TOKEN, "database": database}))
    command = [sys.executable, str(PROJECT_DIR / "worker.py")]
    if program == "gunicorn":
        command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
    env = {
        "HITOKOTO_CONFIG": str(directory / "config.json"),
        "PATH": "/usr/bin:/bin",
        "PORT": str(free_port()),
    }
    return subprocess.run(command, cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("program", ["worker.py", "gunicorn"])
def test_corrupt_pool_file_stops_start_up_with_one_line(tmp_path, program):
    (tmp_path / "pool.db").write_bytes(b"garbage" * 1000)
    result = start_up(program, tmp_path, "pool.db")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"hitokoto: cannot open sentence pool {tmp_path / 'pool.db'}: file is not a database"
    ]


@pytest.mark.parametrize("program", ["worker.py", "gunicorn"])
def test_unwritable_pool_path_stops_start_up_with_one_line(tmp_path, program):
    (tmp_path / "not-a-directory").write_text("")
    result = start_up(program, tmp_path, "not-a-directory/pool.db")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"hitokoto: cannot create sentence pool {tmp_path / 'not-a-directory' / 'pool.db'}: "
        f"{tmp_path / 'not-a-directory'} is not a directory"
    ]


def test_limits_count_in_redis_again_once_it_returns(stack, make_app, monkeypatch):
    monkeypatch.setattr(ratelimit, "REDIS_RETRY_INTERVAL_S", 0.2)
    first = make_app(redis_url=stack.redis_url, rate_cached="2/min", shared_pool=True)
    second = make_app(redis_url=stack.redis_url, rate_cached="2/min", shared_pool=True)
    fill(first.extensions["hitokoto"].pool, 10)
    stack.stop_redis()
    assert post(client_for(first, "10.6.6.6"), "/hitokoto-cached").status_code == 200  # counted in memory
    stack.restart_redis()  # empty: what was counted while it was down is not in it
    time.sleep(0.3)
    for _ in range(2):
        assert post(client_for(first, "10.6.6.6"), "/hitokoto-cached").status_code == 200
    # Shared again: the other process sees the two hits counted in Redis.
    assert post(client_for(second, "10.6.6.6"), "/hitokoto-cached").status_code == 429


def test_a_job_that_fails_in_the_worker_is_reported_not_waited_out(stack):
    stack.start_workers()
    config = load_config(stack.config_path, web=False)
    queue = instant_queue(connect(stack.redis_url))
    job = enqueue_job(queue, config, "builtins.int", "not a number")  # raises in the worker, twice
    # Without RQ's failure record, the wait would end at the timeout with None (a 504).
    assert wait_for_outcome(job, timeout_s=60) == JOB_FAILED
