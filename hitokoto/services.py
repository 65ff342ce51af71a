"""What a running web app holds: its config, pool and queue (built once in create_app)."""

from __future__ import annotations

import dataclasses

from flask import Flask, current_app
from rq import Queue

from hitokoto.config import Config
from hitokoto.pool import Pool
from hitokoto.queues import WorkerPresence


@dataclasses.dataclass(frozen=True)
class Services:
    config: Config
    pool: Pool
    instant_queue: Queue
    workers: WorkerPresence


def services(app: Flask | None = None) -> Services:
    return (app or current_app).extensions["hitokoto"]
