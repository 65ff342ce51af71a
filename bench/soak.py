"""Soak: --minutes (default 10) of mixed traffic against gunicorn + worker.py + Redis + the
chat-completions stand-in, at a bounded rate. Reports, at the end, every unexpected answer
(a status the request kind should not get, a non-JSON body, a stack trace, a refused
connection) and the memory of the web and RQ worker processes after warm-up and at the end.

    python bench/soak.py [--minutes 10] [--rate 80]
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import threading
import time
import urllib.error
import urllib.request

from stack import ACCESS_TOKEN, Stack, build_pool, children_of, rss_kib

# kind -> (method, path, body bytes, content type, statuses that are correct for it)
REQUEST_KINDS = {
    "cached": ("POST", "/hitokoto-cached", json.dumps({"gptauth": ACCESS_TOKEN}), "application/json", {200}),
    "recycle": (
        "POST",
        "/hitokoto-cached",
        json.dumps({"gptauth": ACCESS_TOKEN, "recycle": True}),
        "application/json",
        {200},
    ),
    "instant": (
        "POST",
        "/hitokoto",
        json.dumps({"gptauth": ACCESS_TOKEN, "encycle": True}),
        "application/json",
        {200},
    ),
    "bad_json": ("POST", "/hitokoto-cached", "{not json", "application/json", {400}),
    "bad_token": ("POST", "/hitokoto", json.dumps({"gptauth": "nope"}), "application/json", {401}),
    "wrong_type": ("POST", "/hitokoto-cached", "gptauth=x", "text/plain", {415}),
    "get": ("GET", "/hitokoto", "", "application/json", {405}),
}
WEIGHTS = {
    "cached": 50,
    "recycle": 15,
    "instant": 10,
    "bad_json": 10,
    "bad_token": 5,
    "wrong_type": 5,
    "get": 5,
}


def send(url: str, kind: str) -> str | None:
    """Send one request of this kind; returns a description of what was wrong, or None."""
    method, path, body, content_type, expected = REQUEST_KINDS[kind]
    request = urllib.request.Request(
        url + path,
        data=body.encode() if method == "POST" else None,
        method=method,
        headers={"Content-Type": content_type},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, payload = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, payload = error.code, error.read()
    except OSError as error:
        return f"{kind}: connection error {type(error).__name__}"
    if status not in expected:
        return f"{kind}: status {status}"
    text = payload.decode(errors="replace")
    if "Traceback" in text or ACCESS_TOKEN in text:
        return f"{kind}: leaked a trace or the token"
    try:
        json.loads(text)
    except ValueError:
        return f"{kind}: body is not JSON"
    return None


def client_loop(
    url: str, deadline: float, interval_s: float, tally: collections.Counter, problems: list
) -> None:
    kinds, weights = list(WEIGHTS), list(WEIGHTS.values())
    while time.monotonic() < deadline:
        started = time.monotonic()
        kind = random.choices(kinds, weights)[0]
        problem = send(url, kind)
        tally[kind] += 1
        if problem:
            problems.append(problem)
        time.sleep(max(0.0, interval_s - (time.monotonic() - started)))


def memory_of(web_master, workers) -> dict[str, int]:
    pids = {f"web {pid}": pid for pid in children_of(web_master.pid)}
    pids |= {f"rq {pid}": pid for pid in children_of(workers.pid)}
    return {name: rss_kib(pid) for name, pid in pids.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate", type=float, default=80, help="requests per second, all clients together")
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    with Stack(model_delay_s=0.05, rate="100000/min", rate_cached="100000/min") as stack:
        build_pool(stack.directory / "pool.db", 200_000).close()
        url, web_master = stack.gunicorn("wsgi:app")
        workers = stack.workers()
        tally, problems = collections.Counter(), []
        warm_deadline = time.monotonic() + 20
        run_clients(url, warm_deadline, args, collections.Counter(), problems)
        memory_start = memory_of(web_master, workers)
        deadline = time.monotonic() + args.minutes * 60
        run_clients(url, deadline, args, tally, problems)
        memory_end = memory_of(web_master, workers)
        worker_log = (stack.directory / "worker.log").read_text()
    total = sum(tally.values())
    print(
        f"requests: {total:,} in {args.minutes:g} min ({total / (args.minutes * 60):.0f}/s) — "
        + ", ".join(f"{kind} {count:,}" for kind, count in tally.most_common())
    )
    print(f"unexpected answers: {len(problems)}")
    for problem, count in collections.Counter(problems).most_common(10):
        print(f"  {count:>6} × {problem}")
    print(
        f"worker log: {worker_log.count('Traceback')} tracebacks, token leaked: {ACCESS_TOKEN in worker_log}"
    )
    print(f"{'process':<12}{'after warm-up':>15}{'at the end':>14}{'growth':>9}")
    for name in memory_start:
        start, end = memory_start[name], memory_end.get(name, 0)
        print(f"{name:<12}{start:>11} KiB{end:>10} KiB{(end - start) / start * 100:>8.1f}%")


def run_clients(url: str, deadline: float, args, tally: collections.Counter, problems: list) -> None:
    interval_s = args.clients / args.rate
    threads = [
        threading.Thread(target=client_loop, args=(url, deadline, interval_s, tally, problems))
        for _ in range(args.clients)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    main()
