"""Per-client-IP rate limits (Flask-Limiter, Redis storage shared by every web process)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from flask import Blueprint, Flask
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from hitokoto.config import Config

# Redis for limits must fail fast: a request should not hang because Redis is down.
_STORAGE_OPTIONS = {"socket_connect_timeout": 1, "socket_timeout": 2}


def init_limiter(app: Flask, config: Config) -> Limiter:
    """Attach a limiter to app. Limits apply per client IP and per endpoint.

    When Redis is unreachable, limits fall back to in-process memory (each web process
    counts on its own) instead of switching off; the stricter cached rate is used then.
    """
    limiter = Limiter(
        key_func=get_remote_address,
        app=app,
        storage_uri=config.redis_url,
        storage_options=_STORAGE_OPTIONS,
        strategy="moving-window",
        headers_enabled=False,
        swallow_errors=True,
        in_memory_fallback=[config.rate_cached],
        in_memory_fallback_enabled=True,
    )
    app.after_request(lambda response: _add_rate_limit_headers(limiter, response))
    return limiter


def limit_blueprint(
    limiter: Limiter, blueprint: Blueprint, rate: str, exempt_when: Callable[[], bool]
) -> None:
    """Apply `rate` to every route of the blueprint; requests for which exempt_when() is
    true (malformed or unauthorised) are answered without spending the client's quota."""
    limiter.limit(rate, exempt_when=exempt_when)(blueprint)


def _add_rate_limit_headers(limiter: Limiter, response):
    """On a 429: Retry-After and RateLimit-* headers (IETF draft: Reset in seconds).

    Only on 429, because reading the window costs a second Redis round trip per request
    (bench/http_throughput.py: about 100 µs of a request's budget)."""
    if response.status_code != 429:
        return response
    try:
        current = limiter.current_limit
        if current is None:
            return response
        reset_in_s = max(0, math.ceil(current.window[0] - time.time()))
        response.headers["RateLimit-Limit"] = str(current.limit.amount)
        response.headers["RateLimit-Remaining"] = str(max(0, current.remaining))
        response.headers["RateLimit-Reset"] = str(reset_in_s)
        response.headers["Retry-After"] = str(max(1, reset_in_s))
    except Exception:  # noqa: BLE001 - headers are advisory; storage may be down
        response.headers.setdefault("Retry-After", "60")
    return response
