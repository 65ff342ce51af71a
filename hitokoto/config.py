"""Reads config.json, applies environment overrides, validates once at start-up."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any

from limits import parse_many

DEFAULT_PROMPT = (
    "请说一句你独创的，发人深省的话，尽量不要让它落入俗套，它不需要很励志，"
    "可以包含一点负能量。你的输出只应该包括这句话。"
)
DEFAULT_BATCH_PROMPT = (
    "请写出{count}句你独创的，发人深省的话，尽量不要落入俗套，它们不需要很励志，"
    "可以包含一点负能量。每句话单独一行，彼此主题不同；不要编号，不要引号，"
    "不要任何解释或其他内容。"
)
PLACEHOLDER_VALUES = {"", "change-me", "changeme", "your-access-token", "your-api-key"}
CONFIG_PATH_ENV = "HITOKOTO_CONFIG"

# Short units used by the seed ("1/min", "5/10min") mapped to the limits library's words.
_RATE_UNITS = {
    "s": "second",
    "sec": "second",
    "secs": "second",
    "second": "second",
    "seconds": "second",
    "m": "minute",
    "min": "minute",
    "mins": "minute",
    "minute": "minute",
    "minutes": "minute",
    "h": "hour",
    "hr": "hour",
    "hrs": "hour",
    "hour": "hour",
    "hours": "hour",
    "d": "day",
    "day": "day",
    "days": "day",
}
_SHORT_RATE = re.compile(r"^\s*(\d+)\s*(?:/|per)\s*(\d*)\s*([a-z]+)\s*$", re.IGNORECASE)


class ConfigError(Exception):
    """A configuration problem, described in one line that never contains a secret."""


@dataclasses.dataclass(frozen=True)
class Config:
    access_token: str
    database: Path
    redis_url: str = "redis://127.0.0.1:6379/0"
    api_key: str = ""
    base_url: str = ""
    model: str = "gpt-4o-mini"
    port: int = 65530
    rate: str = "1 per 1 minute"
    rate_cached: str = "3 per 1 minute"
    instant_timeout: int = 30
    sentence_num: int = 200
    batch_size: int = 25
    prompt: str = DEFAULT_PROMPT
    batch_prompt: str = DEFAULT_BATCH_PROMPT
    max_length: int = 120
    model_timeout: float = 60.0
    model_max_retries: int = 2
    trusted_proxies: int = 0
    # Whether REDIS_URL or config.json named a Redis (not a key of its own): without one,
    # ./run.sh runs a private Redis (hitokoto.embedded_redis), not the default above.
    redis_url_configured: bool = False

    @property
    def model_configured(self) -> bool:
        """True when the worker has something to call: an API key or a custom endpoint."""
        return bool(self.api_key or self.base_url)

    def __repr__(self) -> str:  # keeps secrets out of logs and tracebacks
        return f"Config(database={str(self.database)!r}, model={self.model!r})"


# key -> (accepted JSON types, check that returns an error text or None)
_FIELDS: dict[str, tuple[tuple[type, ...], Any]] = {
    "api_key": ((str,), None),
    "access_token": ((str,), None),
    "database": ((str,), lambda v: "must not be empty" if not v.strip() else None),
    "redis_url": (
        (str,),
        lambda v: (
            None
            if re.match(r"^(redis|rediss|unix)://", v)
            else "must start with redis://, rediss:// or unix://"
        ),
    ),
    "base_url": (
        (str,),
        lambda v: None if not v or re.match(r"^https?://", v) else "must start with http:// or https://",
    ),
    "model": ((str,), lambda v: "must not be empty" if not v.strip() else None),
    "port": ((int,), lambda v: None if 0 < v < 65536 else "must be between 1 and 65535"),
    "rate": ((str,), None),
    "rate_cached": ((str,), None),
    "instant_timeout": ((int,), lambda v: None if 1 <= v <= 600 else "must be 1..600 seconds"),
    "sentence_num": ((int,), lambda v: None if v >= 1 else "must be at least 1"),
    "batch_size": ((int,), lambda v: None if 1 <= v <= 100 else "must be 1..100"),
    "prompt": ((str,), lambda v: "must not be empty" if not v.strip() else None),
    "batch_prompt": ((str,), lambda v: None if "{count}" in v else "must contain {count}"),
    "max_length": ((int,), lambda v: None if 10 <= v <= 1000 else "must be 10..1000"),
    "model_timeout": ((int, float), lambda v: None if 1 <= v <= 600 else "must be 1..600"),
    "model_max_retries": ((int,), lambda v: None if 0 <= v <= 10 else "must be 0..10"),
    "trusted_proxies": ((int,), lambda v: None if 0 <= v <= 10 else "must be 0..10"),
}

_ENV_OVERRIDES = {
    "OPENAI_API_KEY": "api_key",
    "OPENAI_BASE_URL": "base_url",
    "HITOKOTO_ACCESS_TOKEN": "access_token",
    "REDIS_URL": "redis_url",
    "PORT": "port",
}


def normalize_rate(key: str, value: str) -> str:
    """Turn a seed-style rate ("1/min", "5/10min") or limits syntax into limits syntax.

    Raises ConfigError naming the key when the value does not parse, so a route is never
    silently left unlimited.
    """
    match = _SHORT_RATE.match(value)
    if match and match.group(3).lower() in _RATE_UNITS:
        amount, multiple, unit = match.groups()
        candidate = f"{amount} per {multiple or 1} {_RATE_UNITS[unit.lower()]}"
    else:
        candidate = value
    try:
        parsed = parse_many(candidate)
    except ValueError:
        parsed = []
    if len(parsed) != 1 or parsed[0].amount < 1:
        raise ConfigError(
            f'config key "{key}": cannot parse rate limit {value!r} '
            '(use forms like "1/min", "3/minute", "5/10min" or "100 per hour")'
        )
    return candidate


def _read_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} is unreadable: {exc.strerror}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid JSON: line {exc.lineno}: {exc.msg}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a JSON object")
    return raw


def _apply_env(raw: dict[str, Any], environ: dict[str, str]) -> dict[str, Any]:
    merged = dict(raw)
    for env_name, key in _ENV_OVERRIDES.items():
        value = environ.get(env_name)
        if value is None or value == "":
            continue
        if key == "port":
            if not value.isdigit():
                raise ConfigError(f"environment variable PORT must be a number, got {value!r}")
            merged[key] = int(value)
        else:
            merged[key] = value
    return merged


def _check_types(values: dict[str, Any]) -> None:
    for key, value in values.items():
        if key not in _FIELDS:
            raise ConfigError(f'unknown config key "{key}"')
        types, check = _FIELDS[key]
        if isinstance(value, bool) or not isinstance(value, types):
            wanted = " or ".join("number" if t is float else t.__name__ for t in types)
            raise ConfigError(f'config key "{key}" must be a {wanted.replace("str", "string")}')
        problem = check(value) if check else None
        if problem:
            shown = "" if key in ("api_key", "access_token") else f" (got {value!r})"
            raise ConfigError(f'config key "{key}" {problem}{shown}')


def database_path(name: str, base_dir: Path) -> Path:
    """The seed appends ".db" to a bare name; relative paths are relative to the config file."""
    path = Path(name).expanduser()
    if not path.suffix:
        path = path.with_name(path.name + ".db")
    return path if path.is_absolute() else (base_dir / path)


def build_config(
    raw: dict[str, Any], base_dir: Path, environ: dict[str, str] | None = None, web: bool = True
) -> Config:
    """Validate a config mapping (as read from config.json) and return a frozen Config.

    Only the web app (web=True) needs the access token. Raises ConfigError with one line
    naming the offending key.
    """
    values = _apply_env(raw, dict(os.environ) if environ is None else environ)
    _check_types(values)
    values["redis_url_configured"] = "redis_url" in values
    token_missing = values.get("access_token", "").strip().lower() in PLACEHOLDER_VALUES
    if token_missing and not web:
        values["access_token"] = ""
    elif token_missing:
        raise ConfigError(
            'config key "access_token" is missing or still a placeholder: set it in '
            "config.json or HITOKOTO_ACCESS_TOKEN"
        )
    if values.get("api_key", "").strip().lower() in PLACEHOLDER_VALUES:
        values["api_key"] = ""
    values["rate"] = normalize_rate("rate", values.get("rate", "1/min"))
    values["rate_cached"] = normalize_rate("rate_cached", values.get("rate_cached", "3/min"))
    values["database"] = database_path(values.get("database", "testdebug"), base_dir)
    if "model_timeout" in values:
        values["model_timeout"] = float(values["model_timeout"])
    return Config(**values)


def load_config(path: str | os.PathLike | None = None, web: bool = True) -> Config:
    """Load the config file (HITOKOTO_CONFIG, else ./config.json) and validate it.

    PORT is the web server's port: processes that do not listen (web=False) ignore it, since
    process managers such as honcho hand every process its own, possibly invalid, PORT.
    """
    config_path = _config_path(path)
    environ = _environ_beside(config_path)
    if not web:
        environ.pop("PORT", None)
    return build_config(_read_json(config_path), config_path.parent, environ, web=web)


def read_raw_config(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The config file's own keys, before environment overrides and checks; {} when it
    cannot be read (load_config() reports that with one clear line)."""
    try:
        return _read_json(_config_path(path))
    except ConfigError:
        return {}


def _config_path(path: str | os.PathLike | None) -> Path:
    return Path(path or os.environ.get(CONFIG_PATH_ENV) or "config.json").resolve()


def _environ_beside(config_path: Path) -> dict[str, str]:
    """The environment, over .env beside the config file (where ./run.sh keeps the generated
    token), so batch.py run by hand sees the same settings as the service."""
    return read_env_file(config_path.parent / ".env") | dict(os.environ)


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a .env file (quotes stripped, # comments skipped), as honcho reads it."""
    values = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            key, sep, value = line.strip().partition("=")
            if sep and key and not key.startswith("#"):
                values[key.strip()] = value.strip().strip("'\"")
    return values
