"""Cached HTTP throughput: requests/s of POST /hitokoto-cached (auth + limiter + no-repeat
claim) vs a bare Flask JSON endpoint, same gunicorn.conf.py, same wrk settings, rounds
alternating in one run. Needs wrk (apt-get install wrk).

    python bench/http_throughput.py [--seconds 10] [--rounds 3] [--connections 32]
"""

from __future__ import annotations

import argparse
import shutil

from stack import ACCESS_TOKEN, Stack, build_pool, median, post, run_wrk, wrk_post_script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--pool", type=int, default=2_000_000, help="sentences (half unused)")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("bench: needs wrk (apt-get install wrk)")
    with Stack() as stack:
        build_pool(stack.directory / "pool.db", args.pool).close()
        ours_url, _ = stack.gunicorn("wsgi:app")
        bare_url, _ = stack.gunicorn("bench.bare_app:app")
        status, body = post(ours_url + "/hitokoto-cached", {"gptauth": ACCESS_TOKEN})
        assert status == 200 and body["recycled"] is False, body
        script = wrk_post_script()
        results = {"bare": [], "ours": []}
        for _ in range(args.rounds):
            for label, url in (("bare", bare_url + "/bare"), ("ours", ours_url + "/hitokoto-cached")):
                run = run_wrk(url, script, args.seconds, args.connections)
                if run.failed:
                    raise SystemExit(f"bench: {run.failed} non-2xx responses from {label}")
                results[label].append(run.requests_per_s)
                print(f"round: {label:<5} {run.requests_per_s:>9.0f} req/s", flush=True)
        bare, ours = median(results["bare"]), median(results["ours"])
        ratio = ours / bare
        print(f"bare Flask JSON endpoint:   {bare:>9.0f} req/s (median of {args.rounds})")
        print(f"POST /hitokoto-cached:      {ours:>9.0f} req/s (median of {args.rounds})")
        print(
            f"ratio ours/bare:            {ratio:>9.2f}   goal ≥ 0.80: {'ok' if ratio >= 0.8 else 'MISSED'}"
        )


if __name__ == "__main__":
    main()
