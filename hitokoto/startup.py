"""Start-up helpers shared by wsgi.py, worker.py and batch.py: fail fast with one line."""

from __future__ import annotations

import sys
from urllib.parse import urlsplit, urlunsplit

from flask import Flask

from hitokoto.config import Config, ConfigError, load_config
from hitokoto.pool import PoolError


def fail(message: str, status: int = 2) -> None:
    """Print one line to stderr and exit; used for every start-up failure."""
    print(f"hitokoto: {message}", file=sys.stderr, flush=True)
    raise SystemExit(status)


def fail_redis_unreachable(redis_url: str, hint: str = "") -> None:
    """The one line for a Redis that does not answer at start-up (its password hidden)."""
    fail(f"cannot reach Redis at {redacted_url(redis_url)}; start it or set REDIS_URL{hint}")


def load_config_or_exit(web: bool = True) -> Config:
    try:
        return load_config(web=web)
    except ConfigError as exc:
        fail(str(exc))


def create_app_or_exit() -> Flask:
    from hitokoto import create_app

    try:
        return create_app(load_config_or_exit())
    except (ConfigError, PoolError) as exc:
        fail(str(exc))


def redacted_url(url: str) -> str:
    """A URL safe to print: any password is replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
