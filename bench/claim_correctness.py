"""Claim correctness at scale: 8 concurrent HTTP clients drain a 10,000-sentence pool through
gunicorn. Prints whether every sentence was handed out exactly once before the first
`"recycled": true`.

    python bench/claim_correctness.py [--pool 10000] [--clients 8]
"""

from __future__ import annotations

import argparse
import collections
import threading
import time

from stack import ACCESS_TOKEN, Stack, build_pool, post


def drain(url: str, handed_out: list, recycled_seen: threading.Event, lock: threading.Lock) -> None:
    """Claim until this client sees "recycled": true; records (id, recycled) in order."""
    while not recycled_seen.is_set():
        status, body = post(url + "/hitokoto-cached", {"gptauth": ACCESS_TOKEN})
        if status != 200:
            raise SystemExit(f"bench: unexpected answer {status} {body}")
        with lock:
            handed_out.append((body["id"], body["recycled"]))
        if body["recycled"]:
            recycled_seen.set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    with Stack() as stack:
        build_pool(stack.directory / "pool.db", args.pool, unused_every=1).close()
        url, _ = stack.gunicorn("wsgi:app")
        handed_out, lock, recycled_seen = [], threading.Lock(), threading.Event()
        started = time.monotonic()
        clients = [
            threading.Thread(target=drain, args=(url, handed_out, recycled_seen, lock))
            for _ in range(args.clients)
        ]
        for client in clients:
            client.start()
        for client in clients:
            client.join()
        elapsed = time.monotonic() - started
    first_recycled = next(index for index, (_, recycled) in enumerate(handed_out) if recycled)
    fresh_ids = [sentence_id for sentence_id, recycled in handed_out if not recycled]
    repeats = sum(count - 1 for count in collections.Counter(fresh_ids).values() if count > 1)
    fresh_before_first_recycled = len({sentence_id for sentence_id, _ in handed_out[:first_recycled]})
    print(f"{len(handed_out):,} answers to {args.clients} clients in {elapsed:.1f}s")
    print(f"fresh (recycled=false) answers: {len(fresh_ids):,}; distinct: {len(set(fresh_ids)):,}")
    print(f"sentences handed out twice while unused ones were left: {repeats}")
    print(f"distinct sentences handed out before the first recycled=true: {fresh_before_first_recycled:,}")
    exact = len(fresh_ids) == len(set(fresh_ids)) == args.pool == fresh_before_first_recycled
    print(f"every sentence exactly once before the first recycled: {'yes' if exact else 'NO'}")


if __name__ == "__main__":
    main()
