"""Every error in SPEC §3 is JSON with its status and code; bad input changes nothing."""

import pytest

from tests.helpers import ACCESS_TOKEN, client_for, fill, post

PATHS = ["/hitokoto", "/hitokoto-cached"]


def assert_error(response, status: int, code: str):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.content_type == "application/json"
    assert response.json["error"]["code"] == code
    assert response.json["error"]["message"]
    assert "Traceback" not in response.get_data(as_text=True)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
def test_other_methods_get_405_with_allow_post(client, path, method):
    response = client.open(path, method=method)
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    if method != "HEAD":
        assert response.json["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2]",
        b'"text"',
        b"null",
        b"\xff\xfe\x00",
        b"[" * 2000 + b"]" * 2000,
        b'{"gptauth": 5}',
        b'{"gptauth": "%s", "extra": 1}' % ACCESS_TOKEN.encode(),
    ],
)
def test_malformed_or_wrongly_shaped_bodies_get_400(client, path, body):
    assert_error(client.post(path, data=body, content_type="application/json"), 400, "bad_request")


@pytest.mark.parametrize(("path", "flag"), [("/hitokoto", "encycle"), ("/hitokoto-cached", "recycle")])
@pytest.mark.parametrize("value", ["yes", 1, 0, None, [], {}])
def test_flag_of_wrong_type_gets_400_naming_it(client, path, flag, value):
    response = post(client, path, {"gptauth": ACCESS_TOKEN, flag: value})
    assert_error(response, 400, "bad_request")
    assert flag in response.json["error"]["message"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "body",
    [{}, {"gptauth": "wrong"}, {"gptauth": ""}, {"gptauth": "令牌" * 500}, {"gptauth": ACCESS_TOKEN + "x"}],
)
def test_missing_or_wrong_token_gets_401(client, path, body):
    assert_error(post(client, path, body), 401, "unauthorized")


def test_bearer_header_is_accepted_instead_of_gptauth(client, pool):
    fill(pool, 1)
    response = post(client, "/hitokoto-cached", {}, headers={"Authorization": f"Bearer {ACCESS_TOKEN}"})
    assert response.status_code == 200


@pytest.mark.parametrize(("body_token", "header_token"), [("wrong", ACCESS_TOKEN), (ACCESS_TOKEN, "wrong")])
def test_either_token_right_is_enough(client, pool, body_token, header_token):
    fill(pool, 2)
    headers = {"Authorization": f"Bearer {header_token}"}
    response = post(client, "/hitokoto-cached", {"gptauth": body_token}, headers=headers)
    assert response.status_code == 200


def test_both_tokens_wrong_gets_401(client, pool):
    fill(pool, 1)
    headers = {"Authorization": "Bearer wrong"}
    response = post(client, "/hitokoto-cached", {"gptauth": "wrong"}, headers=headers)
    assert_error(response, 401, "unauthorized")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
def test_non_json_content_type_gets_415(client, path, content_type):
    kwargs = {"content_type": content_type} if content_type else {}
    response = client.post(path, data=b'{"gptauth": "%s"}' % ACCESS_TOKEN.encode(), **kwargs)
    assert_error(response, 415, "unsupported_media_type")


@pytest.mark.parametrize("path", PATHS)
def test_body_over_4_kib_gets_413(client, path):
    body = {"gptauth": ACCESS_TOKEN + "x" * 5000}
    assert_error(post(client, path, body), 413, "payload_too_large")


def test_unknown_path_is_json_404(client):
    assert_error(client.post("/nope", json={}), 404, "not_found")


def test_rejected_requests_claim_nothing(client, pool):
    fill(pool, 2)
    post(client, "/hitokoto-cached", {"gptauth": "wrong"})
    post(client, "/hitokoto-cached", {"gptauth": ACCESS_TOKEN, "recycle": "no"})
    client.post("/hitokoto-cached", data=b"{", content_type="application/json")
    assert pool.counts() == (2, 2)


def test_no_model_configured_gets_503_model_not_configured(make_app):
    app = make_app(api_key="", base_url="")
    response = post(client_for(app), "/hitokoto")
    assert_error(response, 503, "model_not_configured")
    assert "OPENAI_API_KEY" in response.json["error"]["message"]
