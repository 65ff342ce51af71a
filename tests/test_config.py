"""config.json: seed keys and defaults, env overrides, one-line fail-fast errors."""

import json
import subprocess
import sys

import pytest

from hitokoto.config import ConfigError, build_config, load_config, normalize_rate
from tests.conftest import PROJECT_DIR
from tests.helpers import free_port

TOKEN = "a-real-token-1234567890"


def config_of(tmp_path, environ=None, **raw):
    raw.setdefault("access_token", TOKEN)
    return build_config(raw, tmp_path, environ=environ or {})


def test_seed_defaults(tmp_path):
    config = config_of(tmp_path)
    assert config.port == 65530
    assert config.database == tmp_path / "testdebug.db"
    assert config.rate == "1 per 1 minute" and config.rate_cached == "3 per 1 minute"
    assert config.trusted_proxies == 0 and not config.model_configured


@pytest.mark.parametrize(
    ("rate", "expected"),
    [
        ("1/min", "1 per 1 minute"),
        ("3/min", "3 per 1 minute"),
        ("10/s", "10 per 1 second"),
        ("100/hour", "100 per 1 hour"),
        ("5/10min", "5 per 10 minute"),
        ("1 per minute", "1 per 1 minute"),
        ("3/minute", "3 per 1 minute"),
        ("2 per day", "2 per 1 day"),
    ],
)
def test_rate_strings_in_seed_and_limits_syntax_parse(rate, expected):
    assert normalize_rate("rate", rate) == expected


@pytest.mark.parametrize("rate", ["", "fast", "1/fortnight", "0/min", "1/min;2/hour", "-1/s"])
def test_bad_rate_stops_start_up_naming_key_and_value(tmp_path, rate):
    with pytest.raises(ConfigError, match=r'"rate_cached".*' + repr(rate)[1:-1][:3]):
        config_of(tmp_path, rate_cached=rate)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"access_token": ""}, '"access_token" is missing'),
        ({"access_token": "change-me"}, "placeholder"),
        ({"port": "80"}, '"port" must be a int'),
        ({"port": 0}, '"port" must be between'),
        ({"instant_timeout": True}, '"instant_timeout" must be a int'),
        ({"rat": "1/min"}, 'unknown config key "rat"'),
        ({"redis_url": "localhost"}, '"redis_url" must start with'),
    ],
)
def test_bad_values_name_the_key(tmp_path, raw, message):
    raw = {"access_token": TOKEN, **raw}
    with pytest.raises(ConfigError, match=message):
        build_config(raw, tmp_path, environ={})


def test_environment_overrides_the_file(tmp_path):
    environ = {
        "OPENAI_API_KEY": "sk-env",
        "HITOKOTO_ACCESS_TOKEN": "env-token-123456",
        "PORT": "8080",
        "REDIS_URL": "redis://example:6379/2",
    }
    config = config_of(tmp_path, environ=environ, api_key="sk-file", port=1)
    assert (config.api_key, config.access_token, config.port) == ("sk-env", "env-token-123456", 8080)
    assert config.redis_url == "redis://example:6379/2" and config.model_configured


def test_secrets_never_appear_in_repr_or_errors(tmp_path):
    config = config_of(tmp_path, api_key="sk-secret-value")
    assert "sk-secret-value" not in repr(config) and TOKEN not in repr(config)
    with pytest.raises(ConfigError) as error:
        config_of(tmp_path, api_key=12345678)
    assert "12345678" not in str(error.value)


def test_database_suffix_and_relative_path(tmp_path):
    assert config_of(tmp_path, database="pool").database == tmp_path / "pool.db"
    assert config_of(tmp_path, database="data/x.sqlite").database == tmp_path / "data" / "x.sqlite"


@pytest.mark.parametrize(("content", "message"), [("{", "not valid JSON"), ("[]", "JSON object")])
def test_unreadable_config_file(tmp_path, content, message):
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.json")


def run_worker_with(tmp_path, raw_config: dict, *args: str) -> subprocess.CompletedProcess:
    """`python worker.py ARGS` with only this config.json, run to its end."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw_config))
    return subprocess.run(
        [sys.executable, str(PROJECT_DIR / "worker.py"), *args],
        capture_output=True,
        text=True,
        env={"HITOKOTO_CONFIG": str(path), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )


def test_worker_start_up_fails_with_one_line_and_no_secret(tmp_path):
    result = run_worker_with(tmp_path, {"access_token": TOKEN, "api_key": "sk-never-show", "rate": "often"})
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        'hitokoto: config key "rate": cannot parse rate limit '
        '\'often\' (use forms like "1/min", "3/minute", "5/10min" '
        'or "100 per hour")'
    ]
    assert "sk-never-show" not in result.stderr + result.stdout


def test_worker_without_redis_says_it_waits_then_fails_with_one_line(tmp_path):
    password, port = "redis-pass-never-show", free_port()  # nothing listens there
    raw_config = {"access_token": TOKEN, "redis_url": f"redis://:{password}@127.0.0.1:{port}/0"}
    result = run_worker_with(tmp_path, raw_config, "--redis-wait", "1")
    shown_url = f"redis://:***@127.0.0.1:{port}/0"
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2
    assert f"waiting up to 1 s for Redis at {shown_url}" in lines[0]
    assert lines[1] == f"hitokoto: cannot reach Redis at {shown_url}; start it or set REDIS_URL"
    assert password not in result.stderr + result.stdout


def test_a_worker_with_nothing_to_run_says_so_before_waiting_for_redis(tmp_path):
    raw_config = {"access_token": TOKEN, "redis_url": f"redis://127.0.0.1:{free_port()}/0"}  # nothing there
    result = run_worker_with(
        tmp_path, raw_config, "--workers", "0", "--instant-workers", "0", "--redis-wait", "30"
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "hitokoto: nothing to run: --workers and --instant-workers are both 0"
    ]


def test_only_the_web_app_needs_the_access_token(tmp_path):
    config = build_config({"access_token": "change-me"}, tmp_path, environ={}, web=False)
    assert config.access_token == ""
    with pytest.raises(ConfigError, match="access_token"):
        build_config({"access_token": "change-me"}, tmp_path, environ={}, web=True)


def test_a_redis_counts_as_configured_only_when_named(tmp_path):
    """Without one named, ./run.sh runs a private Redis and batch.py looks for it."""
    url = "redis://10.0.0.5:6379/0"

    def configured(raw: dict, environ: dict) -> bool:
        return build_config({"access_token": TOKEN} | raw, tmp_path, environ=environ).redis_url_configured

    assert not configured({}, {})
    assert not configured({}, {"REDIS_URL": ""})
    assert configured({"redis_url": url}, {})
    assert configured({}, {"REDIS_URL": url})
    with pytest.raises(ConfigError, match='unknown config key "redis_url_configured"'):
        configured({"redis_url_configured": True}, {})


def test_dot_env_beside_the_config_fills_in_what_the_environment_does_not(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps({"access_token": "change-me", "port": 1}))
    (tmp_path / ".env").write_text(
        "# made by run.sh\nHITOKOTO_ACCESS_TOKEN='from-dot-env-0123456789'\nPORT=2\n"
    )
    monkeypatch.delenv("HITOKOTO_ACCESS_TOKEN", raising=False)
    monkeypatch.setenv("PORT", "3")
    config = load_config(tmp_path / "config.json")
    assert config.access_token == "from-dot-env-0123456789"
    assert config.port == 3  # the real environment wins over .env
