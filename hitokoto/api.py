"""The two endpoint families: POST /hitokoto (instant) and POST /hitokoto-cached (pool)."""

from __future__ import annotations

import json
import logging

from flask import Blueprint, current_app, jsonify, request
from redis.exceptions import RedisError

from hitokoto.answer import sentence_body
from hitokoto.auth import is_authorized
from hitokoto.errors import ApiError
from hitokoto.pool import PoolError
from hitokoto.queues import enqueue_instant, wait_for_outcome
from hitokoto.services import Services, services

log = logging.getLogger("hitokoto")

instant_bp = Blueprint("instant", __name__)
cached_bp = Blueprint("cached", __name__)


def _parse_request(flag_name: str, access_token: str) -> bool:
    """Validate content type, JSON shape, field types and the token; return the flag.

    Raises ApiError (415, 400, 401). Oversized bodies raise 413 from Werkzeug.
    """
    if request.mimetype != "application/json":
        raise ApiError(415, "Send the body as JSON with Content-Type: application/json.")
    try:
        body = json.loads(request.get_data(cache=True))
    except (ValueError, RecursionError):
        raise ApiError(400, "The body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The body must be a JSON object.")
    unknown = body.keys() - {"gptauth", flag_name}
    if unknown:
        raise ApiError(400, f"Unknown field(s): {', '.join(sorted(unknown))}. Allowed: gptauth, {flag_name}.")
    token = body.get("gptauth")
    if token is not None and not isinstance(token, str):
        raise ApiError(400, '"gptauth" must be a string.')
    flag = body.get(flag_name, False)
    if not isinstance(flag, bool):
        raise ApiError(400, f'"{flag_name}" must be true or false.')
    if not is_authorized(token, access_token):
        raise ApiError(401, "Missing or wrong access token (send it as gptauth).")
    return flag


def _client_address() -> str:
    return request.remote_addr or "unknown"


def admit_request(context: Services, flag_name: str, limit_name: str) -> bool:
    """Validate the request, then spend the client's quota; return the flag.

    Requests refused here (415, 400, 401) spend no quota: only the limit check follows them.
    """
    flag = _parse_request(flag_name, context.config.access_token)
    context.limits.spend(limit_name, _client_address())
    return flag


_STATUS_BY_JOB_ERROR = {"upstream_error": 502, "unavailable": 503}


@instant_bp.route("/hitokoto", methods=["POST"], provide_automatic_options=False)
def instant():
    context = services()
    keep_unused = admit_request(context, "encycle", "instant")
    if not context.config.model_configured:
        raise ApiError(
            503,
            "No model is configured. Set OPENAI_API_KEY (or api_key in config.json), or point "
            "base_url at any OpenAI-compatible server.",
            code="model_not_configured",
        )
    try:
        if not context.workers.any_listening():
            raise ApiError(503, "No generation worker is running; start one with `python worker.py`.")
        job = enqueue_instant(context.instant_queue, context.config, keep_unused, context.workers)
        outcome = wait_for_outcome(job, context.config.instant_timeout)
    except RedisError as exc:
        log.error("instant request: Redis unavailable: %s", type(exc).__name__)
        raise ApiError(503, "The job queue is unavailable; try again shortly.") from None
    if outcome is None:
        log.warning("instant job %s not done within %ss", job.id, context.config.instant_timeout)
        raise ApiError(504, "Generation is taking too long; the sentence will still be added to the pool.")
    if "error" in outcome:
        code = outcome["error"]["code"]
        raise ApiError(_STATUS_BY_JOB_ERROR.get(code, 502), outcome["error"]["message"], code=code)
    return jsonify(sentence_body(outcome["sentence"], recycled=False))


@cached_bp.route("/hitokoto-cached", methods=["POST"], provide_automatic_options=False)
def cached():
    context = services()  # looked up once: each lookup goes through Flask's context proxy
    recycle = _parse_request("recycle", context.config.access_token)  # 415, 400, 401: no quota spent
    try:
        sentence, recycled = context.handout.take(recycle, _client_address())  # 429 when over
    except PoolError as exc:
        log.error("cached request: %s", exc)
        raise ApiError(503, "The sentence pool is unavailable; try again shortly.") from None
    if sentence is None:
        raise ApiError(503, "The pool is empty; fill it with `python batch.py -n 200`.", code="pool_empty")
    if sentence.answer is not None and not recycled:  # made by SQLite when it was claimed
        return current_app.response_class(f"{sentence.answer}\n", mimetype=current_app.json.mimetype)
    # vars(): a flat dataclass's fields as a dict; dataclasses.asdict deep-copies (~15 µs)
    return jsonify(sentence_body(vars(sentence), recycled=recycled))
