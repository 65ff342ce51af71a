"""Every error response is built here: one JSON shape, no HTML, no stack trace."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

log = logging.getLogger("hitokoto")

_CODE_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    500: "internal_error",
    502: "upstream_error",
    503: "unavailable",
    504: "generation_timeout",
}
_DEFAULT_MESSAGES = {
    400: "The request could not be understood.",
    404: "There is nothing here. The endpoints are POST /hitokoto and POST /hitokoto-cached.",
    405: "Only POST is allowed here.",
    413: "The request body is too large.",
    415: "Send the body as JSON with Content-Type: application/json.",
    500: "Something went wrong on our side.",
}


class ApiError(Exception):
    """An expected failure that becomes a JSON error response."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code or _CODE_BY_STATUS.get(status, "error")
        self.headers = headers or {}


def error_response(status: int, message: str, code: str | None = None, headers: dict | None = None):
    """The one JSON error body: {"error": {"code": ..., "message": ...}}."""
    body = {"error": {"code": code or _CODE_BY_STATUS.get(status, "error"), "message": message}}
    response = jsonify(body)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _handle_api_error(error: ApiError):
    return error_response(error.status, error.message, error.code, error.headers)


def _handle_http_exception(error: HTTPException):
    status = error.code or 500
    headers = {}
    if status == 405:
        headers["Allow"] = "POST"
    return error_response(status, _DEFAULT_MESSAGES.get(status, error.name + "."), headers=headers)


def _handle_unexpected(error: Exception):
    log.error("unexpected error: %s: %s", type(error).__name__, error)
    return error_response(500, _DEFAULT_MESSAGES[500])


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(ApiError, _handle_api_error)
    app.register_error_handler(HTTPException, _handle_http_exception)
    app.register_error_handler(Exception, _handle_unexpected)
