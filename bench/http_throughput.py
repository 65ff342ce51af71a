"""Cached HTTP throughput: requests/s of POST /hitokoto-cached (auth + limiter + no-repeat
claim) vs a bare Flask JSON endpoint, same gunicorn.conf.py, same wrk settings, rounds
alternating in one run.

Also, to show what each step costs: bare + one Redis round trip and bare + one pool claim
per request (the two steps if every request paid its own; the endpoint shares them between
concurrent requests: hitokoto/combine.py), and the endpoint itself with its rate limit,
its claim, or both replaced by free stand-ins (bench/free_steps_app.py); one more keeps only
the GIL releases of the claim, without SQLite.
Needs wrk (apt-get install wrk).

    python bench/http_throughput.py [--seconds 10] [--rounds 3] [--connections 32]
"""

from __future__ import annotations

import argparse
import shutil

from stack import ACCESS_TOKEN, Stack, build_pool, median, post, run_wrk, wrk_post_script

# The endpoint with steps made free (bench/free_steps_app.py): what it would reach if they cost nothing.
FREE_STEP_ROWS = {
    "ours, limit + claim free": "'limit', 'claim'",
    "ours, claim free": "'claim'",
    "ours, limit free": "'limit'",
    "ours, limit free, claim = GIL only": "'limit', 'sqlite'",
}


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
        bare_url, _ = stack.gunicorn("bench.bare_app:app")
        endpoints = {
            "bare": bare_url + "/bare",
            "bare + 1 Redis trip/request": bare_url + "/bare-redis",
            "bare + 1 pool claim/request": bare_url + "/bare-claim",
        }
        for label, free_steps in FREE_STEP_ROWS.items():
            url, _ = stack.gunicorn(f"bench.free_steps_app:with_free({free_steps})")
            endpoints[label] = url + "/hitokoto-cached"
        endpoints["ours"] = stack.gunicorn("wsgi:app")[0] + "/hitokoto-cached"
        for url in endpoints.values():
            status, body = post(url, {"gptauth": ACCESS_TOKEN})
            assert status == 200 and body.get("recycled") is not True, (url, body)
        script = wrk_post_script()
        results = {label: [] for label in endpoints}
        for _ in range(args.rounds):  # alternating, so machine noise hits every endpoint alike
            for label, url in endpoints.items():
                run = run_wrk(url, script, args.seconds, args.connections)
                if run.failed:
                    raise SystemExit(f"bench: {run.failed} non-2xx responses from {label}")
                results[label].append(run.requests_per_s)
                print(f"round: {label:<36} {run.requests_per_s:>7.0f} req/s", flush=True)
        bare = median(results["bare"])
        print(f"{'endpoint (median of ' + str(args.rounds) + ' rounds)':<38}{'req/s':>8}{'vs bare':>9}")
        for label, rates in results.items():
            name = "POST /hitokoto-cached" if label == "ours" else label
            print(f"{name:<38}{median(rates):>8.0f}{median(rates) / bare:>9.2f}")
        ratio = median(results["ours"]) / bare
        print(f"ratio ours/bare: {ratio:.2f}   goal ≥ 0.80: {'ok' if ratio >= 0.8 else 'MISSED'}")
        print("(bare + 1 …/request: one Redis round trip or one pool claim paid by every request; the")
        print(" endpoint shares both between the requests of a process that arrive together. ours, …")
        print(" free: the endpoint with those steps replaced by stand-ins that cost nothing; claim = GIL")
        print(" only: a stand-in that releases the GIL as often as the claim does and does nothing else)")


if __name__ == "__main__":
    main()
