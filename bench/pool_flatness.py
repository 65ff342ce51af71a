"""Claim cost flatness: p50/p99 of a no-repeat claim and of a recycle pick, 10 thousand vs
10 million sentences, measured side by side in one run (rounds alternate between pools).
For reference, the same for SQLite's own lookup of one random row by primary key: the floor
under a recycle pick, whose answer is that row.

    python bench/pool_flatness.py                 # builds the 10M pool once in bench/.cache (~2 GB)
    python bench/pool_flatness.py --large 1000000 # a quicker run
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

from stack import Pool, build_pool, percentile, pool_size

CACHE_DIR = Path(__file__).resolve().parent / ".cache"


def ensure_pool(total: int, claims_needed: int) -> Path:
    """The cached pool of `total` sentences, rebuilt when missing or too drained to measure."""
    path = CACHE_DIR / f"pool-{total}.db"
    if pool_size(path) != total or Pool(path).counts()[1] < claims_needed + total // 4:
        for leftover in CACHE_DIR.glob(f"pool-{total}.db*"):
            leftover.unlink()
        started = time.perf_counter()
        build_pool(path, total).close()
        print(f"built {total:,}-sentence pool in {time.perf_counter() - started:.1f}s")
    return path


def warm(path: Path) -> None:
    """Read the file once so both pools are measured from the page cache, not the disk."""
    with path.open("rb") as handle:
        while handle.read(1 << 24):
            pass


def time_calls(function, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter_ns()
        function()
        samples.append((time.perf_counter_ns() - started) / 1000)
    return samples


def primary_key_lookup(pool: Pool, total: int):
    """SQLite's own lookup of one random row by primary key, nothing else: the floor under a
    recycle pick, which needs that row, timed on the same connection and file."""
    conn = pool.connect()

    def lookup() -> None:
        conn.execute("SELECT text FROM sentence_rows WHERE id = ?", (random.randint(1, total),)).fetchone()

    return lookup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5000, help="picks (and a tenth as many claims)")
    args = parser.parse_args()
    CACHE_DIR.mkdir(exist_ok=True)
    pools = {}
    for label, total in (("small", args.small), ("large", args.large)):
        path = ensure_pool(total, claims_needed=args.rounds * args.per_round + args.warmup // 10)
        warm(path)  # claims are destructive, but a run takes only rounds * per_round of total/2 unused
        pools[label] = Pool(path)
        pools[label].migrate()  # a pool cached by an older version is brought forward
    for pool in pools.values():  # steady state: SQLite's own cache holds the upper tree levels
        time_calls(pool.pick_any, args.warmup)
        time_calls(pool.claim_unused, args.warmup // 10)
    lookups = {label: primary_key_lookup(pool, pool.counts()[0]) for label, pool in pools.items()}
    samples = {(label, kind): [] for label in pools for kind in ("claim", "recycle", "lookup")}
    for _ in range(args.rounds):
        for label, pool in pools.items():
            samples[(label, "claim")] += time_calls(pool.claim_unused, args.per_round)
            samples[(label, "recycle")] += time_calls(pool.pick_any, args.per_round)
            samples[(label, "lookup")] += time_calls(lookups[label], args.per_round)
    print(f"{'operation':<10}{'pool':>14}{'p50 µs':>10}{'p99 µs':>10}")
    for kind in ("claim", "recycle", "lookup"):
        for label, total in (("small", args.small), ("large", args.large)):
            data = samples[(label, kind)]
            print(f"{kind:<10}{total:>14,}{percentile(data, 0.5):>10.1f}{percentile(data, 0.99):>10.1f}")
        p50_ratio = percentile(samples[("large", kind)], 0.5) / percentile(samples[("small", kind)], 0.5)
        p99_ratio = percentile(samples[("large", kind)], 0.99) / percentile(samples[("small", kind)], 0.99)
        verdict = "ok" if p50_ratio <= 1.2 else "MISSED"
        goal = f"goal p50 ≤ 1.2: {verdict}" if kind != "lookup" else "no goal: SQLite's floor"
        print(f"{kind:<10}{'large/small':>14}{p50_ratio:>10.2f}{p99_ratio:>10.2f}   {goal}")
    print(
        "(lookup: one random row by primary key and nothing else, the least a recycle pick\n"
        " does; its large/small ratio is what reaching one row of the 10 M file costs in SQLite)"
    )
    for label, pool in pools.items():
        total, unused = pool.counts()
        print(f"{label} pool after the run: {total:,} sentences, {unused:,} unused")


if __name__ == "__main__":
    main()
