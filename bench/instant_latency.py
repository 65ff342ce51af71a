"""Instant path figures, measured side by side in one run against the chat-completions
stand-in answering after --delay seconds (default 0.2):

1. overhead: p50 of POST /hitokoto (gunicorn -> RQ -> worker -> SDK -> SQLite -> back) vs a
   direct openai SDK call to the same server (goal ≤ 1.03);
2. under batch load: p50 of POST /hitokoto while `batch.py -n 1000` drains vs idle, both
   sent back to back (goal ≤ 1.1);
3. batch cost: model calls per 1,000 new unique sentences (goal ≤ 50).

    python bench/instant_latency.py [--requests 40] [--delay 0.2]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time

import openai
from stack import ACCESS_TOKEN, PROJECT_DIR, Stack, median, post


def time_ms(function) -> float:
    started = time.perf_counter()
    function()
    return (time.perf_counter() - started) * 1000


def instant_call(url: str) -> None:
    status, body = post(url + "/hitokoto", {"gptauth": ACCESS_TOKEN})
    if status != 200:
        raise SystemExit(f"bench: instant request failed: {status} {body}")


def print_p50(label: str, samples_ms: list[float], how: str = "") -> None:
    details = ", ".join([f"n={len(samples_ms)}"] + ([how] if how else []))
    print(f"{label + ' p50:':32} {median(samples_ms):8.1f} ms  ({details})")


def goal_verdict(reached: bool) -> str:
    return "ok" if reached else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=40, help="samples per figure")
    parser.add_argument("--delay", type=float, default=0.2, help="model answer delay, seconds")
    parser.add_argument("--batch", type=int, default=1000, help="sentences batch.py adds")
    args = parser.parse_args()
    with Stack(model_delay_s=args.delay) as stack:
        url, _ = stack.gunicorn("wsgi:app")
        stack.workers()
        client = openai.OpenAI(api_key="sk-bench", base_url=stack.base_url, max_retries=0)

        def direct_call():
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])

        for _ in range(3):  # warm both paths (connections, imports)
            direct_call()
            instant_call(url)
        direct, instant_idle = [], []
        for _ in range(args.requests):  # interleaved, so machine noise hits both alike
            direct.append(time_ms(direct_call))
            instant_idle.append(time_ms(lambda: instant_call(url)))
        # The baseline for the batch-load figure, sent the way the requests under load are:
        # back to back. After a direct call, the web process, Redis and the worker have sat
        # idle for 200 ms and an instant request takes ~0.8 ms longer (bench/FINDINGS.md).
        instant_back_to_back = [time_ms(lambda: instant_call(url)) for _ in range(args.requests)]

        batch = subprocess.Popen(
            [sys.executable, str(PROJECT_DIR / "batch.py"), "-n", str(args.batch)],
            cwd=PROJECT_DIR,
            env=stack.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        instant_busy = []
        while batch.poll() is None and len(instant_busy) < args.requests:
            instant_busy.append(time_ms(lambda: instant_call(url)))
        summary = batch.communicate()[0].strip()

    p50_direct, p50_idle, p50_busy = median(direct), median(instant_idle), median(instant_busy)
    p50_back_to_back = median(instant_back_to_back)
    print_p50("direct SDK call", direct)
    print_p50("POST /hitokoto, idle", instant_idle, "each after a direct call")
    print_p50("POST /hitokoto, idle", instant_back_to_back, "back to back")
    print_p50("POST /hitokoto, batch load", instant_busy, "back to back while batch drained")
    overhead = p50_idle / p50_direct
    under_load = p50_busy / p50_back_to_back
    print(f"overhead ratio instant/direct:  {overhead:8.3f}   goal ≤ 1.03: {goal_verdict(overhead <= 1.03)}")
    print(
        f"ratio under batch load/idle:    {under_load:8.3f}   goal ≤ 1.1: {goal_verdict(under_load <= 1.10)}"
    )
    print(f"batch.py: {summary}")
    match = re.search(r"new (\d+) .*model calls (\d+)", summary)
    if match and int(match.group(1)):
        calls_per_1000 = int(match.group(2)) * 1000 / int(match.group(1))
        verdict = "ok" if calls_per_1000 <= 50 else "MISSED"
        print(f"model calls per 1,000 new sentences: {calls_per_1000:.1f}   goal ≤ 50: {verdict}")


if __name__ == "__main__":
    main()
