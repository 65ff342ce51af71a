"""The real deployment shape: gunicorn (several processes) + worker.py + Redis."""

import concurrent.futures
import json
import subprocess
import sys

import pytest

from hitokoto.pool import Pool
from tests.conftest import PROJECT_DIR, raw_config, service_env, stop_process
from tests.helpers import ACCESS_TOKEN, fill, free_port, http_post, wait_until


def _listening(url: str) -> bool:
    try:
        return http_post(url + "/hitokoto-cached", {}, timeout_s=1)[0] == 401
    except OSError:
        return False


@pytest.fixture
def gunicorn_url(service_dir, workers, tmp_path):
    """gunicorn with two processes on a free port, pool shared with the session's workers."""
    config = raw_config(
        service_dir, database=str(service_dir / "pool.db"), rate="100/min", rate_cached="3/min"
    )
    (tmp_path / "config.json").write_text(json.dumps(config))
    port = free_port()
    env = service_env(service_dir) | {
        "HITOKOTO_CONFIG": str(tmp_path / "config.json"),
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "WEB_CONCURRENCY": "2",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
        cwd=PROJECT_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: process.poll() is not None or _listening(url), timeout_s=30, message="gunicorn")
        assert process.poll() is None, process.stdout.read()
        yield url
    finally:
        log = stop_process(process)
        assert "Traceback" not in log and ACCESS_TOKEN not in log


def test_instant_request_through_gunicorn_and_worker(gunicorn_url):
    status, body, _ = http_post(gunicorn_url + "/hitokoto", {"gptauth": ACCESS_TOKEN})
    assert status == 200, body
    assert body["source"] == "instant" and body["hitokoto"]


def test_cached_rate_limit_is_shared_by_all_gunicorn_processes(gunicorn_url, service_dir):
    fill(Pool(service_dir / "pool.db"), 10, prefix="共享限流")
    statuses = [http_post(gunicorn_url + "/hitokoto-cached", {"gptauth": ACCESS_TOKEN})[0] for _ in range(8)]
    assert statuses.count(200) == 3
    assert statuses.count(429) == 5


def test_bad_config_stops_gunicorn_with_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"access_token": ACCESS_TOKEN, "rate": "lots"}))
    env = {
        "HITOKOTO_CONFIG": str(tmp_path / "config.json"),
        "PORT": str(free_port()),
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(PROJECT_DIR),
    }
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
        cwd=PROJECT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "hitokoto: config key \"rate\": cannot parse rate limit 'lots'" in result.stderr
    assert "Traceback" not in result.stderr


def test_concurrent_http_claims_never_share_a_sentence(service_dir, workers, tmp_path):
    """Eight client threads against two gunicorn processes drain a 200-sentence pool."""
    database = tmp_path / "http-pool.db"
    pool = Pool(database)
    pool.migrate()
    fill(pool, 200, prefix="并发")
    config = raw_config(service_dir, database=str(database), rate_cached="100000/min")
    (tmp_path / "config.json").write_text(json.dumps(config))
    port = free_port()
    env = service_env(service_dir) | {
        "HITOKOTO_CONFIG": str(tmp_path / "config.json"),
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "WEB_CONCURRENCY": "2",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
        cwd=PROJECT_DIR,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _listening(url), timeout_s=30, message="gunicorn")

        def claim(_):
            return http_post(url + "/hitokoto-cached", {"gptauth": ACCESS_TOKEN})[1]

        with concurrent.futures.ThreadPoolExecutor(8) as executor:
            bodies = list(executor.map(claim, range(220)))
    finally:
        stop_process(process)
    fresh = [body["id"] for body in bodies if body["recycled"] is False]
    assert len(fresh) == 200 and len(set(fresh)) == 200
    assert sum(body["recycled"] for body in bodies) == 20
    assert pool.check_integrity() == []
