"""Work per request: the user-space instructions one request costs the gunicorn web workers,
for POST /hitokoto-cached, for a bare Flask JSON endpoint, and for the endpoint with its
rate limit, its claim or both made free (bench/free_steps_app.py).

valgrind's callgrind counts instructions, not seconds, so these figures move far less with a
busy machine than the requests/s of http_throughput.py. They still moved with its speed: the
same code counted 1.31 M and 1.42 M per request on two days (bench/FINDINGS.md,
twenty-seventh session), most likely because each web process reserves sentences and leases
quota by the last second's traffic (a lease also ends after 0.6 s), and under valgrind a slower
machine serves fewer requests per second, so each refill and lease serves fewer requests.
Compare rows of one run, not runs of two days.
What they leave out is as telling: time in the kernel (system calls) and what contention
costs (cache misses, threads waiting for the GIL or a lock), which is the rest of
http_throughput.py's figure.

Each row starts gunicorn (gunicorn.conf.py: 4 workers × 32 threads here) under callgrind
twice. Both runs serve the same warm-up, then --requests and 3 × --requests requests from
--clients keep-alive clients; the difference of the workers' totals over the difference of
requests leaves start-up and warm-up out. The counts still move 2–4 % between runs (bare
Flask 1.07–1.11 million on 2026-11-30), since valgrind's thread scheduling decides how many
requests share a batch. Needs valgrind (apt-get install valgrind); about 20 minutes.

    python bench/instructions.py [--requests 400] [--clients 16] [--rows free limit claim gil ours]
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import tempfile
import threading
from pathlib import Path
from urllib.parse import urlsplit

from http_throughput import FREE_STEP_ROWS, free_steps_app
from stack import ACCESS_TOKEN, Stack, build_pool, children_of

# Short names for --rows. The free-step rows are http_throughput.py's own (labels and stand-ins),
# so both benches price the same endpoints.
FREE_ROW_NAMES = {
    "free": "ours, limit + claim free",
    "limit": "ours, claim free",
    "claim": "ours, limit free",
    "gil": "ours, limit free, claim = GIL only",
}
ROWS = {  # name: (label, gunicorn app, path)
    "bare": ("bare", "bench.bare_app:app", "/bare"),
    **{
        name: (label, free_steps_app(FREE_STEP_ROWS[label]), "/hitokoto-cached")
        for name, label in FREE_ROW_NAMES.items()
    },
    "ours": ("POST /hitokoto-cached", "wsgi:app", "/hitokoto-cached"),
}
WARMUP_PER_CLIENT = 50
STOP_TIMEOUT_S = 180  # workers under valgrind write their counts as they exit


def serve(url: str, requests_per_client: int, clients: int) -> None:
    """requests_per_client POSTs on each of `clients` keep-alive connections, concurrently."""
    address = urlsplit(url)
    body = json.dumps({"gptauth": ACCESS_TOKEN})
    failures = []

    def client() -> None:
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=300)
        for _ in range(requests_per_client):
            connection.request("POST", address.path, body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                failures.append(response.status)
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise SystemExit(f"bench: {len(failures)} answers were not 200 (first: {failures[0]}) from {url}")


def worker_instructions(stack: Stack, app: str, path: str, requests_per_client: int, clients: int) -> int:
    """Instructions the web workers ran in all, serving the warm-up and then the requests."""
    counts_dir = Path(tempfile.mkdtemp(prefix="callgrind-", dir=stack.directory))
    wrapper = ("valgrind", "--tool=callgrind", f"--callgrind-out-file={counts_dir}/%p")
    url, master = stack.gunicorn(app, wrapper=wrapper, timeout_s=300)
    serve(url + path, WARMUP_PER_CLIENT, clients)
    workers = children_of(master.pid)
    serve(url + path, requests_per_client, clients)
    if sorted(children_of(master.pid)) != sorted(workers):
        raise SystemExit(f"bench: a web worker of {app} was replaced during the run")
    master.terminate()
    master.wait(timeout=STOP_TIMEOUT_S)
    return sum(_total(counts_dir / str(pid)) for pid in workers)


def _total(counts_file: Path) -> int:
    for line in counts_file.read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise SystemExit(f"bench: no instruction total in {counts_file}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="requests in the shorter run")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--pool", type=int, default=2_000_000, help="sentences (half unused)")
    parser.add_argument(
        "--rows", nargs="+", choices=list(ROWS), default=list(ROWS), help="rows to count (bare always is)"
    )
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        raise SystemExit("bench: needs valgrind (apt-get install valgrind)")
    per_client = max(1, args.requests // args.clients)
    extra_requests = 2 * per_client * args.clients
    per_request = {}
    with Stack() as stack:
        build_pool(stack.directory / "pool.db", args.pool).close()
        for name in ["bare", *(row for row in ROWS if row in args.rows and row != "bare")]:
            label, app, path = ROWS[name]
            short = worker_instructions(stack, app, path, per_client, args.clients)
            long = worker_instructions(stack, app, path, 3 * per_client, args.clients)
            per_request[name] = (long - short) / extra_requests
            print(f"row: {label:<36} {per_request[name]:>12,.0f} instructions/request", flush=True)
    bare = per_request["bare"]
    print(f"user-space instructions per request in the web workers ({args.clients} clients, callgrind)")
    print(f"{'endpoint':<38}{'instructions':>14}{'bare/this':>11}")
    for name, count in per_request.items():
        print(f"{ROWS[name][0]:<38}{count:>14,.0f}{bare / count:>11.2f}")
    if "ours" in per_request:
        needed = bare / 0.8
        print(
            f"0.80 of bare Flask's work would allow {needed:,.0f} instructions per request: "
            f"{per_request['ours'] - needed:,.0f} fewer than the endpoint runs now"
        )
    print("(instructions only: kernel time and contention come on top; http_throughput.py measures all)")


if __name__ == "__main__":
    main()
