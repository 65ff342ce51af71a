"""Cached HTTP throughput: requests/s of POST /hitokoto-cached (auth + limiter + no-repeat
claim) vs a bare Flask JSON endpoint, same gunicorn.conf.py, same wrk settings, rounds
alternating in one run. Needs wrk (apt-get install wrk).

    python bench/http_throughput.py [--seconds 10] [--rounds 3] [--connections 32]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile

from stack import ACCESS_TOKEN, Stack, build_pool, median, post

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{"gptauth": "%s"}'
wrk.headers["Content-Type"] = "application/json"
"""


def run_wrk(url: str, seconds: int, connections: int, script: str) -> tuple[float, int]:
    """Returns (requests/s, non-2xx responses)."""
    output = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", script, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return rps, int(bad.group(1)) if bad else 0


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
        script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
        script.write(WRK_SCRIPT % ACCESS_TOKEN)
        script.close()
        results = {"bare": [], "ours": []}
        for _ in range(args.rounds):
            for label, url in (("bare", bare_url + "/bare"), ("ours", ours_url + "/hitokoto-cached")):
                rps, bad = run_wrk(url, args.seconds, args.connections, script.name)
                if bad:
                    raise SystemExit(f"bench: {bad} non-2xx responses from {label}")
                results[label].append(rps)
                print(f"round: {label:<5} {rps:>9.0f} req/s", flush=True)
        bare, ours = median(results["bare"]), median(results["ours"])
        ratio = ours / bare
        print(f"bare Flask JSON endpoint:   {bare:>9.0f} req/s (median of {args.rounds})")
        print(f"POST /hitokoto-cached:      {ours:>9.0f} req/s (median of {args.rounds})")
        print(
            f"ratio ours/bare:            {ratio:>9.2f}   goal ≥ 0.80: {'ok' if ratio >= 0.8 else 'MISSED'}"
        )


if __name__ == "__main__":
    main()
