"""Claim cost flatness: p50/p99 of a no-repeat claim and of a recycle pick, 10 thousand vs
10 million sentences, measured side by side in one run (rounds alternate between pools).
A recycle pick is what a web process does for a `recycle` request (hitokoto.picks): most
picks are dealt from blocks read ahead, and one in about BLOCK_SIZE reads a block, so its
mean is printed too. For reference, the same for that block read alone, and for SQLite's
own lookup of one random row by primary key: the floor under a pick that reads its one row.

    python bench/pool_flatness.py                 # builds the 10M pool once in bench/.cache (~2 GB)
    python bench/pool_flatness.py --large 1000000 # a quicker run
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path
from statistics import fmean

from stack import Pool, build_pool, percentile, pool_size

from hitokoto.picks import BLOCK_SIZE, RecyclePicks  # stack put the project on sys.path

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


def goal_verdict(p50_ratio: float) -> str:
    return f"goal p50 ≤ 1.2: {'ok' if p50_ratio <= 1.2 else 'MISSED'}"


GOALS = {  # what each timed operation's p50 ratio is held to, in the order they are printed
    "claim": goal_verdict,
    "recycle": goal_verdict,
    "block": lambda _: "no goal: a recycle pick's read ahead",
    "lookup": lambda _: "no goal: SQLite's floor under one row",
}
KINDS = tuple(GOALS)


def row_figures(data: list[float]) -> str:
    return f"{percentile(data, 0.5):>10.1f}{percentile(data, 0.99):>10.1f}{fmean(data):>10.1f}"


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
    recycle_picks = {label: RecyclePicks(pool) for label, pool in pools.items()}
    for label, pool in pools.items():  # steady state: SQLite's own cache holds the upper tree levels
        time_calls(recycle_picks[label].pick, args.warmup)
        time_calls(pool.claim_unused, args.warmup // 10)
    lookups = {label: primary_key_lookup(pool, pool.counts()[0]) for label, pool in pools.items()}
    samples = {(label, kind): [] for label in pools for kind in KINDS}
    for _ in range(args.rounds):
        for label, pool in pools.items():
            samples[(label, "claim")] += time_calls(pool.claim_unused, args.per_round)
            samples[(label, "recycle")] += time_calls(recycle_picks[label].pick, args.per_round * BLOCK_SIZE)
            samples[(label, "block")] += time_calls(lambda p=pool: p.pick_block(BLOCK_SIZE), args.per_round)
            samples[(label, "lookup")] += time_calls(lookups[label], args.per_round)
    print(f"{'operation':<10}{'pool':>14}{'p50 µs':>10}{'p99 µs':>10}{'mean µs':>10}")
    for kind in KINDS:
        small, large = samples[("small", kind)], samples[("large", kind)]
        print(f"{kind:<10}{args.small:>14,}{row_figures(small)}")
        print(f"{kind:<10}{args.large:>14,}{row_figures(large)}")
        p50_ratio = percentile(large, 0.5) / percentile(small, 0.5)
        p99_ratio = percentile(large, 0.99) / percentile(small, 0.99)
        mean_ratio = fmean(large) / fmean(small)
        ratios = f"{p50_ratio:>10.2f}{p99_ratio:>10.2f}{mean_ratio:>10.2f}"
        print(f"{kind:<10}{'large/small':>14}{ratios}   {GOALS[kind](p50_ratio)}")
    print(
        f"(recycle: what a `recycle` request costs, dealt from blocks of {BLOCK_SIZE} read ahead;\n"
        " block: one such read alone; lookup: one random row by primary key and nothing else, the\n"
        " least a pick that reads its one row does: its large/small ratio is what reaching a row of\n"
        " the 10 M file costs in SQLite)"
    )
    for label, pool in pools.items():
        total, unused = pool.counts()
        print(f"{label} pool after the run: {total:,} sentences, {unused:,} unused")


if __name__ == "__main__":
    main()
