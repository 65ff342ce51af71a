"""What a running web app holds: its config, pool, the hand-out of pool sentences, queue and
rate limits (built once in create_app)."""

from __future__ import annotations

import dataclasses

from flask import Flask, current_app
from rq import Queue

from hitokoto.config import Config
from hitokoto.handout import Handout
from hitokoto.pool import Pool
from hitokoto.queues import WorkerPresence
from hitokoto.ratelimit import RateLimits


@dataclasses.dataclass(frozen=True)
class Services:
    config: Config
    pool: Pool
    handout: Handout
    instant_queue: Queue
    workers: WorkerPresence
    limits: RateLimits


def services(app: Flask | None = None) -> Services:
    return (app or current_app).extensions["hitokoto"]
