"""HitokotoGPT: a self-hosted hitokoto API whose sentences are written by a language model."""

from __future__ import annotations

import logging

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from hitokoto.api import cached_bp, instant_bp
from hitokoto.config import Config, load_config
from hitokoto.errors import register_error_handlers
from hitokoto.handout import Handout
from hitokoto.pool import Pool
from hitokoto.queues import WorkerPresence, connect, instant_queue
from hitokoto.ratelimit import RateLimits
from hitokoto.services import Services

MAX_BODY_BYTES = 4096
# Extra seconds the Redis socket waits beyond instant_timeout, so RQ's blocking read ends first.
REDIS_WAIT_SLACK_S = 5


def create_app(config: Config | None = None) -> Flask:
    """Build the web app. Without a config, loads config.json (or HITOKOTO_CONFIG).

    Raises ConfigError or PoolError when start-up cannot succeed.
    """
    config = config or load_config()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.ensure_ascii = False
    if config.trusted_proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=config.trusted_proxies)

    pool = Pool(config.database)
    pool.migrate()
    pool.close()  # gunicorn preloads the app: no SQLite connection may cross the fork
    queue = instant_queue(
        connect(config.redis_url, socket_timeout_s=config.instant_timeout + REDIS_WAIT_SLACK_S)
    )
    limits = RateLimits(config.redis_url, {"instant": config.rate, "cached": config.rate_cached})
    # One connection per web process, opened on first use (after the fork).
    handout = Handout(Pool(config.database, one_connection=True), limits, "cached")
    app.extensions["hitokoto"] = Services(config, pool, handout, queue, WorkerPresence(queue), limits)

    register_error_handlers(app)
    app.register_blueprint(instant_bp)
    app.register_blueprint(cached_bp)
    return app
