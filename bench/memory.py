"""Memory: RSS of one gunicorn web worker and one RQ worker process after a warm-up and
after --requests requests each (cached for the web worker, instant for both), driven by wrk.
Goal: flat (no growth after warm-up). Needs wrk (apt-get install wrk).

    python bench/memory.py [--requests 10000]
"""

from __future__ import annotations

import argparse
import shutil

from stack import Stack, build_pool, children_of, rss_kib, run_wrk, wrk_post_script


def wrk_until(url: str, script: str, wanted: int, connections: int, step_s: int) -> int:
    """Run wrk in steps until at least `wanted` requests were answered; returns the count."""
    done = 0
    while done < wanted:
        run = run_wrk(url, script, step_s, connections, threads=1)
        if run.failed:
            raise SystemExit(f"bench: {run.failed} failed requests")
        done += run.requests
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--warmup", type=int, default=1_000)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("bench: needs wrk (apt-get install wrk)")
    with Stack() as stack:
        build_pool(stack.directory / "pool.db", 200_000).close()
        stack.env["WEB_CONCURRENCY"] = "1"  # one web worker receives every request
        url, web_master = stack.gunicorn("wsgi:app")
        workers = stack.workers("--instant-workers", "1", "--workers", "0")
        (web_pid,) = children_of(web_master.pid)
        (rq_pid,) = children_of(workers.pid)
        script = wrk_post_script()

        def load(count: int) -> None:
            wrk_until(url + "/hitokoto-cached", script, count, connections=16, step_s=2)
            wrk_until(url + "/hitokoto", script, count, connections=4, step_s=5)

        load(args.warmup)
        warm = {"web worker": rss_kib(web_pid), "RQ worker": rss_kib(rq_pid)}
        load(args.requests // 2)
        middle = {"web worker": rss_kib(web_pid), "RQ worker": rss_kib(rq_pid)}
        load(args.requests - args.requests // 2)
        end = {"web worker": rss_kib(web_pid), "RQ worker": rss_kib(rq_pid)}
    print(f"{'process':<12}{'after warm-up':>15}{'midway':>12}{'after run':>12}{'growth':>10}")
    for name in warm:
        growth = (end[name] - warm[name]) / warm[name] * 100
        print(
            f"{name:<12}{warm[name]:>12} KiB{middle[name]:>8} KiB{end[name]:>8} KiB{growth:>9.1f}%"
            f"   goal flat (≤ 5%): {'ok' if growth <= 5 else 'MISSED'}"
        )
    print(f"each process served ≥ {args.requests:,} requests after a {args.warmup:,}-request warm-up")


if __name__ == "__main__":
    main()
