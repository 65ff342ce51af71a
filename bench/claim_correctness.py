"""Claim correctness at scale: 8 concurrent HTTP clients drain a 10,000-sentence pool through
gunicorn. Prints whether every sentence was handed out exactly once before the first
`"recycled": true`.

Order is judged by what a client can know: a fresh answer to a request sent after some
client had already received `"recycled": true` would be a violation. Answers to requests
in flight at that moment are not: the last claim can commit before a concurrent request
finds the pool empty and still reach its client later.

    python bench/claim_correctness.py [--pool 10000] [--clients 8]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import threading
import time

from stack import ACCESS_TOKEN, Stack, build_pool, post


@dataclasses.dataclass(frozen=True)
class Answer:
    sentence_id: int
    recycled: bool
    sent_at: float
    received_at: float


def drain(url: str, answers: list, recycled_seen: threading.Event, lock: threading.Lock) -> None:
    """Claim until some client has seen "recycled": true."""
    while not recycled_seen.is_set():
        sent_at = time.monotonic()
        status, body = post(url + "/hitokoto-cached", {"gptauth": ACCESS_TOKEN})
        if status != 200:
            raise SystemExit(f"bench: unexpected answer {status} {body}")
        with lock:
            answers.append(Answer(body["id"], body["recycled"], sent_at, time.monotonic()))
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
        answers, lock, recycled_seen = [], threading.Lock(), threading.Event()
        started = time.monotonic()
        clients = [
            threading.Thread(target=drain, args=(url, answers, recycled_seen, lock))
            for _ in range(args.clients)
        ]
        for client in clients:
            client.start()
        for client in clients:
            client.join()
        elapsed = time.monotonic() - started
    first_recycled_at = min(answer.received_at for answer in answers if answer.recycled)
    fresh_ids = [answer.sentence_id for answer in answers if not answer.recycled]
    repeats = sum(count - 1 for count in collections.Counter(fresh_ids).values() if count > 1)
    fresh_after_recycled = sum(
        1 for answer in answers if not answer.recycled and answer.sent_at > first_recycled_at
    )
    print(f"{len(answers):,} answers to {args.clients} clients in {elapsed:.1f}s")
    print(f"fresh (recycled=false) answers: {len(fresh_ids):,}; distinct: {len(set(fresh_ids)):,}")
    print(f"sentences handed out twice: {repeats}")
    print(f"fresh answers to requests sent after a recycled=true had arrived: {fresh_after_recycled}")
    exact = len(fresh_ids) == len(set(fresh_ids)) == args.pool and fresh_after_recycled == 0
    print(f"every sentence exactly once before the first recycled: {'yes' if exact else 'NO'}")


if __name__ == "__main__":
    main()
