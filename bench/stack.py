"""Starts what a benchmark measures, all on this machine: a private redis-server, the
chat-completions stand-in, gunicorn and worker.py, and pools built in bulk."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

from hitokoto.embedded_redis import server_command  # noqa: E402
from hitokoto.launcher import free_port  # noqa: E402
from hitokoto.pool import Pool, exponential_clock  # noqa: E402

ACCESS_TOKEN = "bench-token-0123456789abcdef"


def wrk_post_script(token: str = ACCESS_TOKEN) -> str:
    """A wrk Lua script that POSTs {"gptauth": token} as JSON; returns its path."""
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    script.write(
        'wrk.method = "POST"\n'
        f'wrk.body = \'{{"gptauth": "{token}"}}\'\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    script.close()
    return script.name


@dataclasses.dataclass(frozen=True)
class WrkRun:
    requests: int
    requests_per_s: float
    failed: int  # non-2xx answers


def run_wrk(url: str, script: str, seconds: int, connections: int, threads: int = 2) -> WrkRun:
    """One wrk run against url with the given Lua script."""
    output = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "-s", script, url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    failed = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkRun(
        requests=int(re.search(r"(\d+) requests in", output).group(1)),
        requests_per_s=float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        failed=int(failed.group(1)) if failed else 0,
    )


def wait_for(condition, timeout_s: float = 60, what: str = "a condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if condition():
                return
        time.sleep(0.05)
    raise SystemExit(f"bench: timed out waiting for {what}")


def post(url: str, body: dict, timeout_s: float = 60) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def children_of(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@dataclasses.dataclass(frozen=True)
class ProcessCounters:
    """What some processes have used so far: CPU seconds (all threads, exited ones too), the
    part of it spent in the kernel, and voluntary context switches (each time a thread
    blocked: on I/O, a lock or the GIL)."""

    cpu_s: float
    system_cpu_s: float
    voluntary_switches: int

    def __sub__(self, earlier: ProcessCounters) -> ProcessCounters:
        return ProcessCounters(
            self.cpu_s - earlier.cpu_s,
            self.system_cpu_s - earlier.system_cpu_s,
            self.voluntary_switches - earlier.voluntary_switches,
        )


def process_counters(pids: list[int]) -> ProcessCounters:
    user_s, system_s, switches = 0.0, 0.0, 0
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        user_s += int(stat[11]) / os.sysconf("SC_CLK_TCK")  # utime
        system_s += int(stat[12]) / os.sysconf("SC_CLK_TCK")  # stime
        for task in Path(f"/proc/{pid}/task").iterdir():  # switches are counted per thread
            with contextlib.suppress(OSError):
                status = (task / "status").read_text()
                switches += int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.M).group(1))
    return ProcessCounters(user_s + system_s, system_s, switches)


def build_pool(path: Path, total: int, unused_every: int = 2, claims_per_second: int = 10) -> Pool:
    """A pool of `total` sentences built in bulk; every `unused_every`-th one unused (so used
    and unused rows interleave). The used ones were claimed, `claims_per_second` a second, so
    claim_log is as long as a service that busy would have made it (what a recycle pick of a
    used sentence reads its hand-out time from)."""
    pool = Pool(path)
    pool.migrate()
    pool.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    conn.create_function("exponential_clock", 0, exponential_clock)
    conn.execute("BEGIN")
    # Claimed clocks lie in (0, 1) in id order, below the floor (1.0, 0); unused ones above it.
    conn.execute(
        """
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :total)
        INSERT INTO sentence_rows (id, uuid, text, norm_key, source, model, created_at, clock)
        SELECT i, lower(hex(randomblob(16))), '基准句' || i, 'k' || i, 'batch', 'bench',
               '2026-01-01T00:00:00Z',
               CASE WHEN i % :every = 0 THEN 1.0 + exponential_clock() ELSE i / (:total + 1.0) END
          FROM n
        """,
        {"total": total, "every": unused_every},
    )
    conn.execute(
        """
        INSERT INTO claim_log (clock_floor, floor_id, claimed_at)
        SELECT clock, id, strftime('%Y-%m-%dT%H:%M:%SZ', 1767225600 + row / :per_second, 'unixepoch')
          FROM (SELECT clock, id, row_number() OVER (ORDER BY clock, id) AS row
                  FROM sentence_rows WHERE clock < 1.0)
         WHERE row % :per_second = 0
        """,
        {"per_second": claims_per_second},
    )
    conn.execute(
        "UPDATE pool_state SET clock_floor = 1.0, floor_id = 0,"
        " unused_count = (SELECT COUNT(*) FROM sentence_rows WHERE (clock, id) > (1.0, 0))"
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    return Pool(path)


def pool_size(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        return Pool(path).counts()[0]
    except Exception:  # noqa: BLE001 - a half-built file is rebuilt
        return 0


class Stack(contextlib.ExitStack):
    """Processes for one benchmark run; everything is stopped when the `with` block ends."""

    def __init__(self, model_delay_s: float = 0.0, **config):
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="hitokoto-bench-"))
        self.callback(shutil.rmtree, self.directory, True)
        self.redis_url = self._start_redis()
        self.model_port = free_port()
        self._spawn(
            [
                sys.executable,
                str(PROJECT_DIR / "tests" / "fake_model.py"),
                "--port",
                str(self.model_port),
                "--delay",
                str(model_delay_s),
            ],
            "model",
        )
        self.base_url = f"http://127.0.0.1:{self.model_port}/v1"
        wait_for(
            lambda: socket.create_connection(("127.0.0.1", self.model_port), timeout=1), what="the model"
        )
        self.config = {
            "access_token": ACCESS_TOKEN,
            "api_key": "sk-bench",
            "base_url": self.base_url,
            "redis_url": self.redis_url,
            "database": str(self.directory / "pool.db"),
            "rate": "1000000/min",
            "rate_cached": "1000000/min",
            **config,
        }
        self.config_path = self.directory / "config.json"
        self.config_path.write_text(json.dumps(self.config))
        self.env = {**os.environ, "HITOKOTO_CONFIG": str(self.config_path), "PYTHONPATH": str(PROJECT_DIR)}
        for name in ("REDIS_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL", "HITOKOTO_ACCESS_TOKEN", "PORT"):
            self.env.pop(name, None)

    def _spawn(self, command: list[str], name: str, env: dict | None = None) -> subprocess.Popen:
        log = (self.directory / f"{name}.log").open("w")
        process = subprocess.Popen(
            command, cwd=PROJECT_DIR, env=env or os.environ, stdout=log, stderr=subprocess.STDOUT
        )
        self.callback(_stop, process)
        return process

    def _start_redis(self) -> str:
        port = free_port()
        self.redis_process = self._spawn(
            server_command("redis-server", port, self.directory, persist=False), "redis"
        )
        wait_for(lambda: socket.create_connection(("127.0.0.1", port), timeout=1), what="redis-server")
        return f"redis://127.0.0.1:{port}/0"

    def gunicorn(
        self, app: str = "wsgi:app", wrapper: tuple[str, ...] = (), timeout_s: float = 60
    ) -> tuple[str, subprocess.Popen]:
        """gunicorn with the project's gunicorn.conf.py (access log off), run under `wrapper`
        (e.g. valgrind) when given; returns (url, process)."""
        port = free_port()
        env = {**self.env, "PORT": str(port), "HOST": "127.0.0.1", "GUNICORN_ACCESS_LOG": "off"}
        command = [*wrapper, sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", app]
        process = self._spawn(command, f"gunicorn-{app.split(':')[0]}-{port}", env)
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: socket.create_connection(("127.0.0.1", port), timeout=1), timeout_s, "gunicorn")
        wait_for(lambda: len(children_of(process.pid)) >= 1, timeout_s, "gunicorn workers")
        return url, process

    def workers(self, *args: str) -> subprocess.Popen:
        process = self._spawn([sys.executable, str(PROJECT_DIR / "worker.py"), *args], "worker", self.env)
        wait_for(
            lambda: "Listening on instant" in (self.directory / "worker.log").read_text(), what="workers"
        )
        return process


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
