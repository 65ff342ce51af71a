"""Generated hostile requests (hypothesis): never a 500, always the JSON error shape."""

import json

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.helpers import ACCESS_TOKEN, client_for, fill, no_worker_redis_url

EXPECTED_STATUSES = {200, 400, 401, 404, 405, 413, 415, 429, 503}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=10,
)
field_names = st.sampled_from(["gptauth", "encycle", "recycle", "extra", ""]) | st.text(max_size=12)
tokens = st.sampled_from([ACCESS_TOKEN] * 6 + [ACCESS_TOKEN.upper(), "", "令牌" * 300]) | st.text(max_size=64)
flags = st.booleans() | json_values
plausible_bodies = st.fixed_dictionaries(
    {"gptauth": tokens}, optional={"encycle": flags, "recycle": flags, "extra": json_values}
).map(lambda body: json.dumps(body).encode())
json_bodies = st.dictionaries(field_names, tokens | json_values, max_size=4).map(
    lambda body: json.dumps(body).encode()
) | json_values.map(lambda value: json.dumps(value).encode())
bodies = plausible_bodies | plausible_bodies | json_bodies | st.binary(max_size=300) | st.just(b"{" * 5000)
requests = st.fixed_dictionaries(
    {
        "method": st.sampled_from(["POST"] * 6 + ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
        "path": st.sampled_from(
            ["/hitokoto"] * 4 + ["/hitokoto-cached"] * 4 + ["/hitokoto-cached/", "/", "/x"]
        ),
        "content_type": st.sampled_from(
            ["application/json"] * 4 + ["application/json; charset=utf-8", "text/plain", None]
        ),
        "body": bodies,
        "authorization": st.none()
        | st.just(f"Bearer {ACCESS_TOKEN}")
        | st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=30),  # valid header text
        "forwarded_for": st.none() | st.text(alphabet="0123456789.,: abcdef", max_size=40),
    }
)


@pytest.fixture(scope="module")
def fuzz_app(service_dir, redis_url, tmp_path_factory):
    from hitokoto import create_app
    from hitokoto.config import build_config
    from tests.conftest import raw_config

    raw = raw_config(
        service_dir,
        database=str(tmp_path_factory.mktemp("fuzz") / "pool.db"),
        redis_url=no_worker_redis_url(redis_url, 4),  # /hitokoto answers 503 at once
        rate="100000/min",
        rate_cached="100000/min",
    )
    app = create_app(build_config(raw, service_dir, environ={}))
    fill(app.extensions["hitokoto"].pool, 50)
    return app


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(request=requests)
def test_generated_requests_never_cause_a_server_error(fuzz_app, request):
    client = client_for(fuzz_app)
    headers = {}
    if request["authorization"] is not None:
        headers["Authorization"] = request["authorization"]
    if request["forwarded_for"] is not None:
        headers["X-Forwarded-For"] = request["forwarded_for"]
    response = client.open(
        request["path"],
        method=request["method"],
        data=request["body"],
        content_type=request["content_type"],
        headers=headers,
    )
    event(f"status {response.status_code}")  # shown by --hypothesis-show-statistics
    assert response.status_code in EXPECTED_STATUSES, response.get_data(as_text=True)
    if request["method"] == "HEAD":
        return
    body = response.get_json()
    if response.status_code == 200:
        assert body["hitokoto"] == body["result"] and isinstance(body["id"], int)
    else:
        assert set(body) == {"error"} and body["error"]["code"] and body["error"]["message"]
    assert "Traceback" not in response.get_data(as_text=True)
