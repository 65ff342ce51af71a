"""The real deployment shape: gunicorn (several processes) + worker.py + Redis."""

import concurrent.futures
import contextlib
import json
import socket
import subprocess
import sys
import threading

import pytest

from hitokoto.pool import Pool
from tests.conftest import PROJECT_DIR, assert_clean_log, raw_config, service_env, stop_process
from tests.helpers import ACCESS_TOKEN, fill, free_port, http_post, wait_until


def _listening(url: str) -> bool:
    try:
        return http_post(url + "/hitokoto-cached", {}, timeout_s=1)[0] == 401
    except OSError:
        return False


@contextlib.contextmanager
def running_gunicorn(service_dir, directory, **overrides):
    """gunicorn with two processes on a free port; yields its URL; checks its log at the end."""
    (directory / "config.json").write_text(json.dumps(raw_config(service_dir, **overrides)))
    port = free_port()
    env = service_env(service_dir) | {
        "HITOKOTO_CONFIG": str(directory / "config.json"),
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "WEB_CONCURRENCY": "2",
    }
    log_path = directory / "gunicorn.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=PROJECT_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: process.poll() is not None or _listening(url), timeout_s=30, message="gunicorn")
        assert process.poll() is None, log_path.read_text()
        yield url
    finally:
        stop_process(process)
        assert_clean_log(log_path.read_text())


@pytest.fixture
def gunicorn_url(service_dir, workers, tmp_path):
    """Shares the pool file with the session's workers."""
    with running_gunicorn(
        service_dir, tmp_path, database=str(service_dir / "pool.db"), rate="100/min", rate_cached="3/min"
    ) as url:
        yield url


def test_instant_request_through_gunicorn_and_worker(gunicorn_url):
    status, body, _ = http_post(gunicorn_url + "/hitokoto", {"gptauth": ACCESS_TOKEN})
    assert status == 200, body
    assert body["source"] == "instant" and body["hitokoto"]


def test_cached_rate_limit_is_shared_by_all_gunicorn_processes(gunicorn_url, service_dir):
    fill(Pool(service_dir / "pool.db"), 10, prefix="共享限流")
    statuses = [http_post(gunicorn_url + "/hitokoto-cached", {"gptauth": ACCESS_TOKEN})[0] for _ in range(8)]
    assert statuses.count(200) == 3
    assert statuses.count(429) == 5


def test_sentences_reserved_by_gunicorn_workers_go_back_when_they_stop(service_dir, tmp_path):
    """A pool large enough that each web process reserves sentences ahead (hitokoto.reserve):
    what they held unread is back in the no-repeat pool once gunicorn has stopped."""
    database = tmp_path / "large.db"
    pool = Pool(database)
    pool.migrate()
    fill(pool, 6000, prefix="预留")

    def ask(_) -> int:
        return http_post(url + "/hitokoto-cached", {"gptauth": ACCESS_TOKEN})[0]

    with running_gunicorn(service_dir, tmp_path, database=str(database), rate_cached="100000/min") as url:
        with concurrent.futures.ThreadPoolExecutor(4) as executor:
            statuses = list(executor.map(ask, range(400)))
        assert statuses == [200] * 400
    assert pool.counts() == (6000, 6000 - 400)
    assert pool.connect().execute("SELECT COUNT(*) FROM reservations").fetchone()[0] == 0
    assert pool.check_integrity() == []


def test_bad_config_stops_gunicorn_with_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"access_token": ACCESS_TOKEN, "rate": "lots"}))
    env = {
        "HITOKOTO_CONFIG": str(tmp_path / "config.json"),
        "PORT": str(free_port()),
        "PATH": "/usr/bin:/bin",
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
    assert result.stderr.strip().splitlines() == [
        "hitokoto: config key \"rate\": cannot parse rate limit 'lots' "
        '(use forms like "1/min", "3/minute", "5/10min" or "100 per hour")'
    ]


@pytest.mark.parametrize(("pool_size", "clients", "requests"), [(200, 8, 220), (20, 64, 64)])
def test_concurrent_http_claims_never_share_a_sentence(service_dir, tmp_path, pool_size, clients, requests):
    """Many client threads against two gunicorn processes drain a pool: every sentence goes
    out exactly once, then the rest are marked recycled."""
    pool = Pool(tmp_path / "http-pool.db")
    pool.migrate()
    fill(pool, pool_size, prefix="并发")
    with running_gunicorn(service_dir, tmp_path, database=str(pool.path), rate_cached="100000/min") as url:
        with concurrent.futures.ThreadPoolExecutor(clients) as executor:
            bodies = list(
                executor.map(
                    lambda _: http_post(url + "/hitokoto-cached", {"gptauth": ACCESS_TOKEN})[1],
                    range(requests),
                )
            )
    fresh = [body["id"] for body in bodies if body["recycled"] is False]
    assert len(fresh) == pool_size and len(set(fresh)) == pool_size
    assert sum(body["recycled"] for body in bodies) == requests - pool_size
    assert pool.check_integrity() == []


def test_concurrent_requests_of_one_client_are_each_counted(service_dir, tmp_path):
    """Requests arriving together share Redis round trips (hitokoto.ratelimit); each must
    still be counted once: 7 of 40 simultaneous requests get through, in two processes."""
    pool = Pool(tmp_path / "limit-pool.db")
    pool.migrate()
    fill(pool, 50, prefix="并发限流")
    with running_gunicorn(service_dir, tmp_path, database=str(pool.path), rate_cached="7/3min") as url:
        start_together = threading.Barrier(40)

        def request(_):
            start_together.wait(timeout=30)
            return http_post(url + "/hitokoto-cached", {"gptauth": ACCESS_TOKEN})[0]

        with concurrent.futures.ThreadPoolExecutor(40) as executor:
            statuses = list(executor.map(request, range(40)))
    assert statuses.count(200) == 7
    assert statuses.count(429) == 33
    assert pool.counts()[1] == 50 - 7  # refused requests claimed nothing


@pytest.fixture
def plain_gunicorn(service_dir, tmp_path):
    pool = Pool(tmp_path / "pool.db")
    pool.migrate()
    fill(pool, 50)
    with running_gunicorn(service_dir, tmp_path, database=str(pool.path), rate_cached="100000/min") as url:
        yield url


def read_http_answer(sock: socket.socket) -> str:
    """Status line, headers and the whole body (by Content-Length), however it is split."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(
        next(
            line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
        )
    )
    while len(body) < length:
        body += sock.recv(65536)
    return (head + b"\r\n\r\n" + body).decode(errors="replace")


def test_huge_body_gets_413_without_being_read(plain_gunicorn):
    port = int(plain_gunicorn.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            b"POST /hitokoto-cached HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 104857600\r\n\r\n" + b"{" * 65536
        )
        answer = read_http_answer(sock)
    assert answer.startswith("HTTP/1.1 413")
    assert '"payload_too_large"' in answer


def test_slow_clients_do_not_block_others(plain_gunicorn):
    port = int(plain_gunicorn.rsplit(":", 1)[1])
    slow_sockets = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(10)]
    try:
        for sock in slow_sockets:  # each sends half a request line and then stalls
            sock.sendall(b"POST /hitokoto-cached HTT")
        # A blocked server would make this raise a timeout instead of answering.
        status, body, _ = http_post(
            plain_gunicorn + "/hitokoto-cached", {"gptauth": ACCESS_TOKEN}, timeout_s=10
        )
        assert status == 200, body
    finally:
        for sock in slow_sockets:
            sock.close()
