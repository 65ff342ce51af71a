"""POST /hitokoto-cached: no-repeat claims, recycling, empty pool."""

import json

from flask import jsonify

from hitokoto.answer import sentence_body
from tests.helpers import client_for, fill, post

# Texts JSON must escape, or may leave as they are, in every way it can (\x1e joins a claim's
# answers: hitokoto.answer).
AWKWARD_TEXTS = [
    '引号"与\\反斜杠',
    "换行\n与\t制表",
    "表情😀与\u2028分隔",
    "控制\x01与\x1e字符",
    "</script>&<'",
]


def test_empty_pool_answers_503_pool_empty_with_a_hint(client):
    response = post(client, "/hitokoto-cached")
    assert response.status_code == 503
    assert response.json["error"]["code"] == "pool_empty"
    assert "batch.py" in response.json["error"]["message"]


def test_empty_pool_answers_spend_no_quota(make_app):
    app = make_app(rate_cached="2/min")
    client = client_for(app)
    for _ in range(4):  # more than the limit: still pool_empty, never 429
        assert post(client, "/hitokoto-cached").json["error"]["code"] == "pool_empty"
    fill(app.extensions["hitokoto"].pool, 3)
    assert [post(client, "/hitokoto-cached").status_code for _ in range(3)] == [200, 200, 429]


def test_success_body_has_hitokoto_fields(client, pool):
    fill(pool, 1)
    response = post(client, "/hitokoto-cached")
    assert response.status_code == 200
    body = response.json
    assert set(body) == {"hitokoto", "result", "id", "uuid", "length", "source", "recycled", "created_at"}
    assert body["hitokoto"] == body["result"] == pool.get(body["id"]).text
    assert body["length"] == len(body["hitokoto"])
    assert body["source"] == "batch" and body["recycled"] is False
    assert body["created_at"].endswith("Z")
    assert response.content_type == "application/json"
    assert "池中句" in response.get_data(as_text=True)  # UTF-8, not \\u escapes


def test_a_claimed_sentence_is_answered_byte_for_byte_as_jsonify_answers_it(make_app):
    """A claimed sentence is answered with the body SQLite made when it was claimed
    (hitokoto.answer): the same bytes and headers jsonify makes of the stored sentence."""
    app = make_app(rate_cached="100/min")
    pool = app.extensions["hitokoto"].pool
    pool.add_batch(AWKWARD_TEXTS, model="fill")
    client = client_for(app)
    served = []
    with app.app_context():
        for _ in AWKWARD_TEXTS:
            response = post(client, "/hitokoto-cached")
            stored = pool.get(response.json["id"])
            expected = jsonify(sentence_body(vars(stored), recycled=False))
            assert response.get_data() == expected.get_data()
            assert response.headers["Content-Type"] == expected.headers["Content-Type"]
            served.append(stored.text)
    assert sorted(served) == sorted(AWKWARD_TEXTS)


def test_claims_and_reservations_carry_the_answer_made_by_sqlite(pool):
    pool.add_batch(AWKWARD_TEXTS, model="fill")
    reservation = pool.claim_ahead("a-holder", 2, 3, spare=0, hold_s=1.0)
    claimed = reservation.now + reservation.held
    assert len(claimed) == len(AWKWARD_TEXTS)
    for sentence in claimed:
        assert json.loads(sentence.answer) == sentence_body(vars(pool.get(sentence.id)), recycled=False)
    assert all(sentence.answer is None for _, sentence in pool.pick_block(16))  # recycle picks: jsonify


def test_no_repeat_until_exhausted_then_recycled(make_app, pool):
    app = make_app(rate_cached="100/min")
    pool = app.extensions["hitokoto"].pool
    fill(pool, 3)
    client = client_for(app)
    seen = [post(client, "/hitokoto-cached").json for _ in range(3)]
    assert len({body["id"] for body in seen}) == 3
    assert not any(body["recycled"] for body in seen)
    after = post(client, "/hitokoto-cached").json
    assert after["recycled"] is True and after["id"] in {body["id"] for body in seen}
    assert pool.counts() == (3, 0)


def test_recycle_true_draws_from_all_and_marks_nothing(make_app):
    app = make_app(rate_cached="100/min")
    pool = app.extensions["hitokoto"].pool
    fill(pool, 2)
    client = client_for(app)
    for _ in range(10):
        response = post(
            client,
            "/hitokoto-cached",
            {"gptauth": app.extensions["hitokoto"].config.access_token, "recycle": True},
        )
        assert response.status_code == 200 and response.json["recycled"] is False
    assert pool.counts() == (2, 2)
