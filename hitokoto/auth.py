"""Checks the client's access token, from the body's gptauth or an Authorization header."""

from __future__ import annotations

import hmac

from flask import request


def _bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def is_authorized(body_token: str | None, access_token: str) -> bool:
    """True when gptauth, or else a Bearer token, equals the access token; constant-time
    compare. The header is read only when the body's token does not match."""
    expected = access_token.encode("utf-8")
    if body_token is not None and _matches(body_token, expected):
        return True
    header_token = _bearer_token()
    return header_token is not None and _matches(header_token, expected)


def _matches(token: str, expected: bytes) -> bool:
    # compare_digest on bytes: str inputs must be ASCII, and tokens may not be.
    return hmac.compare_digest(token.encode("utf-8", "replace"), expected)
