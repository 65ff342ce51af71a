"""The private redis-server that ./run.sh starts (`python -m hitokoto.embedded_redis`):
queued jobs outlive a restart, a snapshot that cannot be written does not stop the queue, and
on a stop it serves its clients until they have left (within a grace), so it stops last."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from redis import Redis
from rq import Queue

from hitokoto.embedded_redis import DATA_DIR_ENV, PORT_ENV, find_redis_server
from hitokoto.queues import BATCH_JOB, BATCH_QUEUE
from tests.conftest import PROJECT_DIR
from tests.helpers import assert_stays, free_port, redis_answers, wait_until

pytestmark = pytest.mark.skipif(find_redis_server() is None, reason="no redis-server to embed")


class EmbeddedRedis:
    """`python -m hitokoto.embedded_redis` on a free port, as Procfile.dev runs it."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = None

    def start(self) -> Redis:
        env = {**os.environ, PORT_ENV: str(self.port), DATA_DIR_ENV: str(self.data_dir)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "hitokoto.embedded_redis"],
            cwd=PROJECT_DIR,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: redis_answers(self.url), message="the embedded redis-server to start")
        return Redis.from_url(self.url)

    def stop(self) -> None:
        """SIGTERM, as the process manager sends on Ctrl-C."""
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture
def embedded(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis")
    yield server
    if server.process is not None and server.process.poll() is None:
        server.process.kill()
        server.process.wait(timeout=10)


def enqueue_batch_job(connection: Redis) -> None:
    Queue(BATCH_QUEUE, connection=connection).enqueue(BATCH_JOB, 5)


def queued_batch_jobs(connection: Redis) -> int:
    return Queue(BATCH_QUEUE, connection=connection).count


def test_queued_jobs_outlive_a_restart(embedded):
    enqueue_batch_job(embedded.start())
    embedded.stop()
    assert queued_batch_jobs(embedded.start()) == 1


def test_a_snapshot_that_cannot_be_written_does_not_stop_the_queue(embedded):
    """A full disk or an unwritable data directory fails Redis's snapshot. By default Redis
    then refuses every write (MISCONF): no instant request and no batch could be queued."""
    connection = embedded.start()
    enqueue_batch_job(connection)
    (embedded.data_dir / "hitokoto.rdb").mkdir()  # the snapshot's rename onto it fails
    connection.bgsave()
    wait_until(lambda: connection.info("persistence")["rdb_bgsave_in_progress"] == 0, message="the snapshot")
    assert connection.info("persistence")["rdb_last_bgsave_status"] == "err"
    enqueue_batch_job(connection)
    assert queued_batch_jobs(connection) == 2
    # Without its snapshot redis-server refuses to exit on SIGTERM; a stop still ends it.
    connection.close()
    embedded.process.send_signal(signal.SIGTERM)
    embedded.process.wait(timeout=10)
    assert not redis_answers(embedded.url)


def test_a_stopped_redis_serves_its_clients_until_they_leave(embedded):
    """On Ctrl-C honcho signals every process at once; the workers still write to Redis on
    their way out (deregistering, the job they were finishing), so Redis must stop last."""
    connection = embedded.start()
    embedded.process.send_signal(signal.SIGTERM)
    assert_stays(lambda: connection.ping(), for_s=1, message="Redis serving a client still connected")
    connection.set("written-while-stopping", "yes")
    connection.close()
    assert embedded.process.wait(timeout=10) == 0
    assert not redis_answers(embedded.url)
    assert embedded.start().get("written-while-stopping") == b"yes"  # in the snapshot it wrote


def test_a_client_that_stays_does_not_keep_a_stopped_redis_up(embedded):
    connection = embedded.start()
    connection.ping()
    embedded.process.send_signal(signal.SIGTERM)
    assert embedded.process.wait(timeout=10) == 0
    assert not redis_answers(embedded.url)


def test_redis_server_stops_when_its_parent_is_killed(embedded):
    """honcho kills what is left after 5 s; redis-server runs in a process group of its own,
    so it must not outlive the process honcho kills."""
    embedded.start()
    embedded.process.kill()
    embedded.process.wait(timeout=10)
    wait_until(lambda: not redis_answers(embedded.url), message="redis-server to stop with its parent")
