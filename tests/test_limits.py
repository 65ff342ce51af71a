"""Per-IP, per-endpoint rate limits that really limit."""

import random

import pytest
from limits import parse
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from tests.helpers import ACCESS_TOKEN, assert_rate_limited, client_for, fill, post


@pytest.fixture
def limited_app(make_app):
    app = make_app(rate_cached="3/min")
    fill(app.extensions["hitokoto"].pool, 10)
    return app


def test_fourth_cached_request_in_a_minute_gets_429(limited_app):
    client = client_for(limited_app)
    assert [post(client, "/hitokoto-cached").status_code for _ in range(3)] == [200, 200, 200]
    assert_rate_limited(post(client, "/hitokoto-cached"), limit=3)
    assert limited_app.extensions["hitokoto"].pool.counts()[1] == 7  # the refused request claimed nothing


def test_limits_are_per_client_ip(limited_app):
    first, second = client_for(limited_app, "10.0.0.1"), client_for(limited_app, "10.0.0.2")
    for _ in range(3):
        assert post(first, "/hitokoto-cached").status_code == 200
    assert post(first, "/hitokoto-cached").status_code == 429
    assert post(second, "/hitokoto-cached").status_code == 200


def test_limits_are_per_endpoint(limited_app):
    client = client_for(limited_app)
    for _ in range(4):
        post(client, "/hitokoto-cached")
    assert post(client, "/hitokoto-cached").status_code == 429
    # The instant endpoint keeps its own quota (it answers 200 with a worker, 503 without).
    assert post(client, "/hitokoto").status_code in (200, 503)


def test_rejected_requests_do_not_spend_quota(limited_app):
    client = client_for(limited_app)
    for _ in range(5):
        assert post(client, "/hitokoto-cached", {"gptauth": "wrong"}).status_code == 401
    assert post(client, "/hitokoto-cached").status_code == 200


def test_spoofed_forwarded_for_is_ignored_by_default(limited_app):
    client = client_for(limited_app, "10.9.9.9")
    statuses = [
        post(client, "/hitokoto-cached", headers={"X-Forwarded-For": f"1.2.3.{n}"}).status_code
        for n in range(4)
    ]
    assert statuses == [200, 200, 200, 429]


def test_forwarded_for_is_believed_with_trusted_proxies(make_app):
    app = make_app(rate_cached="1/min", trusted_proxies=1)
    fill(app.extensions["hitokoto"].pool, 5)
    proxy = client_for(app, "10.8.8.8")
    assert post(proxy, "/hitokoto-cached", headers={"X-Forwarded-For": "1.1.1.1"}).status_code == 200
    assert post(proxy, "/hitokoto-cached", headers={"X-Forwarded-For": "1.1.1.1"}).status_code == 429
    assert post(proxy, "/hitokoto-cached", headers={"X-Forwarded-For": "2.2.2.2"}).status_code == 200


def test_bearer_only_requests_are_counted(limited_app):
    client = client_for(limited_app)
    headers = {"Authorization": f"Bearer {ACCESS_TOKEN}"}
    statuses = [post(client, "/hitokoto-cached", {}, headers=headers).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]


def test_limits_are_shared_by_every_web_process(make_app):
    # Two app instances on one Redis stand for two gunicorn workers.
    first, second = (make_app(rate_cached="3/min", shared_pool=True) for _ in range(2))
    fill(first.extensions["hitokoto"].pool, 10)
    for _ in range(3):
        assert post(client_for(first, "10.7.7.7"), "/hitokoto-cached").status_code == 200
    assert post(client_for(second, "10.7.7.7"), "/hitokoto-cached").status_code == 429


def test_a_batch_of_hits_is_judged_as_the_same_hits_one_by_one(make_app):
    # The cached endpoint counts the requests that arrive together in one batch.
    limits = make_app(rate_cached="3/min").extensions["hitokoto"].limits
    clients = ["10.8.8.1"] * 5 + ["10.8.8.2"] * 2 + ["10.8.8.1"]
    verdicts = [allowed for allowed, _ in limits.hit_many("cached", clients)]
    assert verdicts == [True, True, True, False, False, True, True, False]
    assert [allowed for allowed, _ in limits.hit_many("cached", ["10.8.8.2"] * 2)] == [True, False]


def test_batched_hits_agree_with_the_limits_library_hit_by_hit(make_app):
    services = make_app(rate_cached="4/min").extensions["hitokoto"]
    limits = services.limits
    # The library's own limiter on the same Redis, counting under another name.
    reference = MovingWindowRateLimiter(RedisStorage(services.config.redis_url))
    item = parse("4/minute")
    chooser = random.Random(7)
    for _ in range(12):
        batch = [f"10.9.9.{chooser.randrange(5)}" for _ in range(chooser.randrange(1, 9))]
        ours = [allowed for allowed, _ in limits.hit_many("cached", batch)]
        theirs = [reference.hit(item, "reference", client) for client in batch]
        assert ours == theirs, batch
