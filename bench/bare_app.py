"""The baseline for bench/http_throughput.py: a bare Flask JSON endpoint, no auth, no
limiter, no database; served by the same gunicorn.conf.py as the real app.

Two more endpoints price the two steps of POST /hitokoto-cached when each request pays its
own: /bare-redis adds one Redis round trip (a PING, the least a shared rate limit costs) and
/bare-claim adds one no-repeat claim from the product's pool. Nothing else differs."""

import functools

from flask import Flask, jsonify, request
from redis import Redis

from hitokoto.config import load_config
from hitokoto.pool import Pool

app = Flask(__name__)
app.json.ensure_ascii = False


def _answer(text: str, body) -> dict:
    return {"hitokoto": text, "recycled": False, "echo": bool(body)}


@app.post("/bare")
def bare():
    return jsonify(_answer("风停了，旗子才想起自己是旗子。", request.get_json()))


@functools.cache
def _redis() -> Redis:
    return Redis.from_url(load_config().redis_url)


@functools.cache
def _pool() -> Pool:
    return Pool(load_config().database)


@app.post("/bare-redis")
def bare_redis():
    body = request.get_json()
    _redis().ping()
    return jsonify(_answer("风停了，旗子才想起自己是旗子。", body))


@app.post("/bare-claim")
def bare_claim():
    body = request.get_json()
    return jsonify(_answer(_pool().claim_unused().text, body))
