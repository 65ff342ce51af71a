"""POST /hitokoto: a real RQ worker calls the chat-completions stand-in via the openai SDK."""

import pytest

from tests.fake_model import Script
from tests.helpers import ACCESS_TOKEN, assert_rate_limited, client_for, post, wait_until


@pytest.fixture
def shared_app(make_app, workers):
    """An app on the pool file the session's workers write to."""
    return make_app(shared_pool=True, rate="1000/min")


@pytest.fixture
def shared_pool(shared_app):
    return shared_app.extensions["hitokoto"].pool


@pytest.fixture
def instant_client(shared_app):
    return client_for(shared_app)


def test_instant_sentence_is_generated_and_stored_as_used(instant_client, shared_pool, fake_model):
    response = post(instant_client, "/hitokoto")
    assert response.status_code == 200, response.json
    body = response.json
    assert body["source"] == "instant" and body["recycled"] is False
    assert fake_model.calls == 1
    assert "发人深省" in fake_model.prompts[0]  # the seed's prompt by default
    stored = shared_pool.get(body["id"])
    assert stored.text == body["hitokoto"] and stored.used


def test_encycle_true_puts_the_sentence_in_the_no_repeat_pool(instant_client, shared_pool):
    _total, unused_before = shared_pool.counts()
    response = post(instant_client, "/hitokoto", {"gptauth": ACCESS_TOKEN, "encycle": True})
    assert response.status_code == 200
    stored = shared_pool.get(response.json["id"])
    assert not stored.used and shared_pool.handed_out_at(response.json["id"]) is None
    assert shared_pool.counts()[1] == unused_before + 1
    assert shared_pool.check_integrity() == []


def test_model_output_is_cleaned_before_storing(instant_client, shared_pool, fake_model):
    fake_model.script = Script(content="  1. “月亮不说话，潮水替它回答。”  ")
    response = post(instant_client, "/hitokoto")
    assert response.status_code == 200
    assert response.json["hitokoto"] == "月亮不说话，潮水替它回答。"


@pytest.mark.parametrize(
    "script",
    [
        Script(status=500),
        Script(status=503),
        Script(status=401),
        Script(status=429, headers={"Retry-After": "0"}),
        Script(raw_body=b"<html>not json</html>"),
        Script(content=""),
        Script(content="I'm sorry, I can't help."),
        Script(content="抱歉，我无法完成这个请求。"),
    ],
    ids=["500", "503", "401", "429", "junk", "empty", "refusal-en", "refusal-zh"],
)
def test_model_failures_answer_502_and_store_nothing(instant_client, shared_pool, fake_model, script):
    fake_model.script = script
    total_before = shared_pool.counts()[0]
    response = post(instant_client, "/hitokoto")
    assert response.status_code == 502, response.json
    assert response.json["error"]["code"] == "upstream_error"
    text = response.get_data(as_text=True)
    assert "sk-test" not in text and "Traceback" not in text
    assert shared_pool.counts()[0] == total_before


def test_model_429_is_retried_with_backoff_then_succeeds(instant_client, fake_model):
    fake_model.script = Script(status=429, headers={"Retry-After": "0"})
    # After the first attempt the stand-in recovers; the SDK's retry must get the sentence.
    original_record = fake_model.record

    def recover_after_first(prompt):
        script = original_record(prompt)
        fake_model.script = Script()
        return script

    fake_model.record = recover_after_first
    try:
        response = post(instant_client, "/hitokoto")
    finally:
        fake_model.record = original_record
    assert response.status_code == 200
    assert fake_model.calls == 2


def test_slow_model_gets_504_and_the_sentence_still_lands(make_app, workers, fake_model):
    app = make_app(shared_pool=True, rate="1000/min", instant_timeout=1)
    pool = app.extensions["hitokoto"].pool
    fake_model.script = Script(delay_s=2.5)
    total_before = pool.counts()[0]
    response = post(client_for(app), "/hitokoto")
    assert response.status_code == 504
    assert response.json["error"]["code"] == "generation_timeout"
    wait_until(lambda: pool.counts()[0] == total_before + 1, timeout_s=15, message="the late sentence")


def test_second_instant_request_within_the_minute_is_rate_limited(make_app, workers):
    app = make_app(shared_pool=True, rate="1/min")
    client = client_for(app)
    assert post(client, "/hitokoto").status_code == 200
    assert_rate_limited(post(client, "/hitokoto"), limit=1)
    # Another address has its own quota.
    assert post(client_for(app), "/hitokoto").status_code == 200
