"""Helpers the tests share: polling, addresses, requests, pool filling."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid

from redis import Redis

from hitokoto.launcher import free_port  # noqa: F401 - shared by the tests
from hitokoto.pool import Pool

ACCESS_TOKEN = "test-token-" + "x" * 24
API_KEY = "sk-test-" + "k" * 24


def wait_until(condition, timeout_s: float = 15, interval_s: float = 0.05, message: str = "condition"):
    """Poll condition() until it returns something truthy; fail the test after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {message}")


def assert_stays(condition, for_s: float = 0.2, interval_s: float = 0.01, message: str = "condition") -> None:
    """Poll condition() for for_s seconds and fail as soon as it is false: for what must
    not happen (a request that must not be sent), where there is nothing to wait for."""
    deadline = time.monotonic() + for_s
    while time.monotonic() < deadline:
        assert condition(), f"{message} stopped holding"
        time.sleep(interval_s)
    assert condition(), f"{message} stopped holding"


def no_worker_redis_url(redis_url: str, db: int) -> str:
    """Database `db` of the session's test Redis, where no worker listens (each test that
    needs one takes its own number: 3 to 6 are in use)."""
    return f"{redis_url.rsplit('/', 1)[0]}/{db}"


def redis_answers(url: str) -> bool:
    """True when a Redis server answers PING at url."""
    try:
        return Redis.from_url(url, socket_connect_timeout=0.2).ping()
    except Exception:  # noqa: BLE001 - refused, reset, timed out: all mean "not up"
        return False


def client_for(app, ip: str | None = None):
    """A test client from its own address, so rate limits of other tests do not leak in."""
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = ip or f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.7"
    return client


def post(client, path: str, body=None, **kwargs):
    """POST a JSON body with the right token unless the test says otherwise."""
    payload = {"gptauth": ACCESS_TOKEN} if body is None else body
    return client.post(path, json=payload, **kwargs)


def assert_rate_limited(response, limit: int) -> None:
    """A 429 rate_limited answer with Retry-After and RateLimit-* headers for `limit` per minute."""
    assert response.status_code == 429
    assert response.json["error"]["code"] == "rate_limited"
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert response.headers["RateLimit-Limit"] == str(limit)
    assert response.headers["RateLimit-Remaining"] == "0"
    assert 1 <= int(response.headers["RateLimit-Reset"]) <= 60


def new_pool(directory, pool_class: type[Pool] = Pool) -> Pool:
    """An empty pool file of the current schema in `directory`."""
    pool = pool_class(directory / "pool.db")
    pool.migrate()
    return pool


def fill(pool: Pool, count: int, prefix: str = "池中句") -> tuple[int, int]:
    """Add `count` unique unused sentences; returns the pool's (total, unused) counts."""
    pool.add_batch([f"{prefix}{number}号：答案藏在问题里" for number in range(count)], model="fill")
    return pool.counts()


def http_post(url: str, body: dict, timeout_s: float = 30) -> tuple[int, dict, dict]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Connection": "close"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), dict(error.headers)
