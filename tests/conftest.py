"""Shared fixtures: a private Redis, the chat-completions stand-in, real RQ workers, apps."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from redis import Redis

from hitokoto import create_app
from hitokoto.config import build_config
from hitokoto.embedded_redis import server_command
from hitokoto.pool import Pool
from hitokoto.queues import connect, instant_queue, worker_count
from tests.fake_model import FakeModelServer
from tests.helpers import ACCESS_TOKEN, API_KEY, client_for, free_port, redis_answers, wait_until

PROJECT_DIR = Path(__file__).resolve().parent.parent


def start_redis_server(data_dir: Path, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """A throw-away redis-server (no snapshots) on a free port, or on `port` to restart one."""
    port = port or free_port()
    command = server_command(shutil.which("redis-server"), port, data_dir, persist=False)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    wait_until(lambda: redis_answers(url), message="redis-server to start")
    return process, url


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A redis-server of our own on a free port; else DB 14 of the machine's Redis."""
    if shutil.which("redis-server"):
        process, url = start_redis_server(tmp_path_factory.mktemp("redis"))
        yield url
        process.terminate()
        process.wait(timeout=10)
    else:
        url = "redis://127.0.0.1:6379/14"
        Redis.from_url(url).flushdb()
        yield url
        Redis.from_url(url).flushdb()


@pytest.fixture(scope="session")
def fake_model():
    server = FakeModelServer().start()
    yield server
    server.shutdown()


@pytest.fixture(autouse=True)
def _reset_fake_model(request):
    if "fake_model" in request.fixturenames:
        request.getfixturevalue("fake_model").reset()
    yield


@pytest.fixture(scope="session")
def service_dir(tmp_path_factory, redis_url, fake_model) -> Path:
    """A config.json shared by the session's workers and the apps that talk to them."""
    directory = tmp_path_factory.mktemp("service")
    raw = {
        "access_token": ACCESS_TOKEN,
        "api_key": API_KEY,
        "base_url": fake_model.base_url,
        "redis_url": redis_url,
        "database": "pool",
        "model_timeout": 5,
        "model_max_retries": 1,
        "instant_timeout": 10,
        "batch_size": 20,
    }
    (directory / "config.json").write_text(json.dumps(raw))
    return directory


def service_env(service_dir: Path) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "REDIS_URL", "HITOKOTO_ACCESS_TOKEN", "PORT")
    }
    env["HITOKOTO_CONFIG"] = str(service_dir / "config.json")
    env["PYTHONPATH"] = str(PROJECT_DIR)
    return env


def start_workers(service_dir: Path, *args: str, log_path: Path, config_path: Path | None = None):
    """`python worker.py` with its output in log_path (a pipe nobody reads would fill up)."""
    env = service_env(service_dir)
    if config_path:
        env["HITOKOTO_CONFIG"] = str(config_path)
    with log_path.open("w") as log:
        return subprocess.Popen(
            [sys.executable, str(PROJECT_DIR / "worker.py"), *args],
            cwd=PROJECT_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def stop_process(process: subprocess.Popen, sig=signal.SIGTERM, timeout_s: float = 20) -> str:
    """Stop a process (SIGTERM by default); returns what it printed if it was piped."""
    if process.poll() is None:
        process.send_signal(sig)
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return output or ""


@pytest.fixture(scope="session")
def workers(service_dir, redis_url):
    """`python worker.py` as a user runs it: one instant-only and one instant+batch process.
    At the end, its whole log must be free of tracebacks and secrets."""
    log_path = service_dir / "worker.log"
    process = start_workers(service_dir, log_path=log_path)
    queue = instant_queue(connect(redis_url))
    wait_until(lambda: worker_count(queue) >= 2, timeout_s=30, message="two RQ workers to register")
    yield process
    stop_process(process)
    assert_clean_log(log_path.read_text())


def assert_clean_log(log: str) -> None:
    assert "Traceback" not in log, log[-3000:]
    assert API_KEY not in log and ACCESS_TOKEN not in log


def raw_config(service_dir: Path, **overrides) -> dict:
    raw = json.loads((service_dir / "config.json").read_text())
    raw.update(overrides)
    return raw


@pytest.fixture
def make_app(service_dir, tmp_path):
    """Build an app on the session's Redis and model; the pool is per test unless shared=True."""

    def factory(shared_pool: bool = False, **overrides):
        raw = raw_config(service_dir, **overrides)
        if not shared_pool and "database" not in overrides:
            raw["database"] = str(tmp_path / "pool.db")
        app = create_app(build_config(raw, service_dir, environ={}))
        app.testing = True
        return app

    return factory


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return client_for(app)


@pytest.fixture
def pool(app) -> Pool:
    return app.extensions["hitokoto"].pool
