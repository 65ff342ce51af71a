"""Checks the client's access token, from the body's gptauth or an Authorization header."""

from __future__ import annotations

import hmac

from flask import request


def _bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def is_authorized(body_token: str | None, access_token: str) -> bool:
    """True when gptauth (or a Bearer token) equals the access token; constant-time compare."""
    expected = access_token.encode("utf-8")
    candidates = [token for token in (body_token, _bearer_token()) if token is not None]
    # compare_digest on bytes: str inputs must be ASCII, and tokens may not be.
    return any(hmac.compare_digest(token.encode("utf-8", "replace"), expected) for token in candidates)
