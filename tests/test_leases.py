"""Quota leased ahead per web process for large limits (hitokoto.leases): never lets a client
past its limit, across processes and as the window moves; gives back what it did not spend."""

import multiprocessing
import threading
import time
import uuid

from limits import parse
from limits.storage import RedisStorage
from redis import Redis

from hitokoto.errors import ApiError
from hitokoto.handout import Handout
from hitokoto.leases import LEASE_S
from hitokoto.pool import Pool
from hitokoto.ratelimit import RateLimits
from hitokoto.reserve import ReservedClaims
from tests.helpers import client_for, fill, free_port, new_pool, post


def _allowed(limits: RateLimits, clients: list[str]) -> int:
    return sum(allowed for allowed, _ in limits.hit_many("cached", clients))


def _hammer(redis_url, rate, client, seconds, start_together, results):
    """Hit in batches of 1-4 for `seconds`; report when each allowed hit was answered."""
    limits = RateLimits(redis_url, {"cached": rate})
    start_together.wait(timeout=60)
    allowed_at, stop_at = [], time.time() + seconds
    batch = 1
    while time.time() < stop_at:
        verdicts = limits.hit_many("cached", [client] * batch)
        answered = time.time()
        allowed_at += [answered for allowed, _ in verdicts if allowed]
        batch = batch % 4 + 1
    results.put(allowed_at)


def _hammer_together(redis_url, rate, seconds, processes=4) -> list[float]:
    client = f"10.1.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}-{uuid.uuid4().hex[:6]}"
    context = multiprocessing.get_context("spawn")
    results, start_together = context.Queue(), context.Barrier(processes)
    workers = [
        context.Process(target=_hammer, args=(redis_url, rate, client, seconds, start_together, results))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    allowed_at = sorted(stamp for _ in workers for stamp in results.get(timeout=120))
    for worker in workers:
        worker.join(timeout=30)
    return allowed_at


def test_processes_leasing_one_clients_quota_never_let_it_past_its_limit(redis_url):
    """Four processes hammer one client under 1024/minute (leases of 4 hits): together they
    let through at most 1024, and at least 1024 less what the other three may still hold."""
    allowed_at = _hammer_together(redis_url, "1024/minute", seconds=2)
    assert 1024 - 3 * 4 <= len(allowed_at) <= 1024


def test_leases_never_let_a_client_past_its_limit_as_the_window_moves(redis_url):
    """The same under 512 per 2 seconds for 5 seconds: no 2-second span (less 0.1 s for the
    time between a verdict and its timestamp) holds more than 512 allowed hits, and the
    client is served again in each new window."""
    allowed_at = _hammer_together(redis_url, "512 per 2 seconds", seconds=5)
    busiest = max(
        sum(1 for other in allowed_at if stamp - 1.9 <= other <= stamp)
        for stamp in allowed_at[::16] + allowed_at[-1:]
    )
    assert busiest <= 512
    assert len(allowed_at) > 2 * 512  # not shut out once its first window was full


def test_what_a_lease_did_not_spend_goes_back_once_its_time_is_up(redis_url):
    first, second = (RateLimits(redis_url, {"cached": "1024/minute"}) for _ in range(2))
    client = f"10.2.0.{uuid.uuid4().hex[:6]}"
    assert _allowed(first, [client]) == 1  # a lease of 4: 3 held by `first`
    assert _allowed(second, [client] * 1100) == 1020
    time.sleep(LEASE_S)  # 1024/minute leases for 0.6 s
    assert _allowed(second, [client]) == 0
    _allowed(first, ["10.2.0.other"])  # first's next lease gives back the 3 it held
    assert _allowed(second, [client] * 10) == 3


def test_one_process_serves_a_leased_limit_exactly_and_answers_429_with_its_headers(make_app):
    app = make_app(rate_cached="600/minute")
    fill(app.extensions["hitokoto"].pool, 700)
    client = client_for(app, "10.3.3.3")
    statuses = [post(client, "/hitokoto-cached").status_code for _ in range(600)]
    assert statuses == [200] * 600
    refused = post(client, "/hitokoto-cached")
    assert refused.status_code == 429 and refused.json["error"]["code"] == "rate_limited"
    assert refused.headers["RateLimit-Limit"] == "600" and refused.headers["RateLimit-Remaining"] == "0"
    # The hits of a lease count from its end (0.6 s for a minute's window): up to 61 s to wait.
    assert 1 <= int(refused.headers["RateLimit-Reset"]) == int(refused.headers["Retry-After"]) <= 61
    assert post(client_for(app, "10.3.3.4"), "/hitokoto-cached").status_code == 200  # per client


class _CountingClaims(ReservedClaims):
    served_from_memory = 0

    def take_held(self):
        sentence = super().take_held()
        self.served_from_memory += sentence is not None
        return sentence


def test_threads_served_from_leases_and_held_sentences_get_exactly_the_limit_each_its_own_sentence(
    redis_url, tmp_path
):
    """Most requests are answered from a lease and a reserved sentence without joining a batch;
    those and the batched ones together are counted once each: the client gets its limit,
    not one request more or less, and every answer is a different sentence."""
    pool = new_pool(tmp_path)
    fill(pool, 6000)  # reservations leave 4,096 unused (reserve.SPARE)
    claims = _CountingClaims(Pool(pool.path, one_connection=True))
    limits = RateLimits(redis_url, {"cached": "1024/minute"})
    handout = Handout(Pool(pool.path, one_connection=True), limits, "cached", claims)
    answers, refusals = [], []

    def request_repeatedly():
        for _ in range(160):
            try:
                answers.append(handout.take(False, "10.4.4.4")[0].id)
            except ApiError as error:
                refusals.append(error.status)

    threads = [threading.Thread(target=request_repeatedly) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(answers) == 1024 and len(set(answers)) == 1024
    assert refusals == [429] * (8 * 160 - 1024)
    assert claims.served_from_memory > 100
    handout.give_back()
    assert pool.counts()[1] == 6000 - 1024 and pool.check_integrity() == []


def test_a_leases_hits_are_counted_no_earlier_than_they_are_spent(redis_url):
    """What keeps the window honest as it moves: each leased hit's entry in Redis is stamped no
    earlier than the moment the hit was spent (the lease's end), so it leaves the window no
    sooner than that hit should."""
    limits = RateLimits(redis_url, {"cached": "1024/minute"})
    client = f"10.4.0.{uuid.uuid4().hex[:6]}"
    spent_at = []
    for _ in range(4):  # one lease of 4, spent over 0.3 s of its 0.6 s
        assert _allowed(limits, [client]) == 1
        spent_at.append(time.time())
        time.sleep(0.1)
    key = RedisStorage(redis_url).prefixed_key(parse("1024/minute").key_for("cached", client))
    stamps = [float(stamp) for stamp in Redis.from_url(redis_url).lrange(key, 0, -1)]
    assert len(stamps) == 4 and min(stamps) >= max(spent_at)


def test_a_leased_limit_still_limits_while_redis_is_down(caplog):
    """Each process then counts in its own memory at the same rate, as for any limit."""
    limits = RateLimits(f"redis://127.0.0.1:{free_port()}/0", {"cached": "600/minute"})
    assert _allowed(limits, ["10.5.0.1"] * 601) == 600
    assert "Redis unavailable" in caplog.text
