"""Time and peak memory of the in-memory pHash near-dup reference (`cluster_phashes`) at scale.

Synthetic input: N keys with random 64-bit pHashes, ~5% of them planted near variants (1..k flipped
bits of a random base), and one bucket of 100k keys sharing one identical hash. Each max_distance runs
in a fresh process so that its peak RSS is its own. Prints a markdown table.

    .venv/bin/python bench/neardup_scale.py                      # 1M items, k = 4 and 8
    .venv/bin/python bench/neardup_scale.py --items 200000 --max-distance 2 4 6
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np


def make_items(n: int, max_distance: int, seed: int = 0) -> tuple[list[tuple[str, int, int]], int]:
    rng = np.random.default_rng(seed)
    identical = min(100_000, n // 10)
    planted = n // 20
    random_count = n - identical - planted
    hashes = rng.integers(0, 2**64, size=random_count, dtype=np.uint64)
    bases = hashes[rng.integers(0, random_count, size=planted)]
    flips = np.zeros(planted, dtype=np.uint64)
    counts = rng.integers(1, max(1, max_distance) + 1, size=planted)
    for step in range(int(counts.max())):
        bits = rng.integers(0, 64, size=planted).astype(np.uint64)
        flips ^= np.where(counts > step, np.uint64(1) << bits, np.uint64(0))  # a repeated bit cancels: distance <= k
    variants = bases ^ flips
    same = np.full(identical, rng.integers(0, 2**64, dtype=np.uint64), dtype=np.uint64)
    all_hashes = np.concatenate([hashes, variants, same]).tolist()
    pixels = rng.integers(10_000, 4_000_000, size=n).tolist()
    return [(f"k{i:08d}", h, p) for i, (h, p) in enumerate(zip(all_hashes, pixels))], planted


def rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def run_one(n: int, max_distance: int) -> dict:
    from vlmloom.curation.neardup import cluster_phashes

    items, planted = make_items(n, max_distance)
    before = rss_mib()
    start, cpu_start = time.perf_counter(), time.process_time()
    clusters = cluster_phashes(items, max_distance)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "items": n, "max_distance": max_distance, "planted": planted,
        "distinct": len({h for _, h, _ in items}),
        "clustered_keys": len(clusters), "clusters": len(set(clusters.values())),
        "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "rss_before_mib": round(before), "peak_rss_mib": round(peak),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--max-distance", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # internal: run one k, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.items, args.max_distance[0])))
        return
    rows = []
    for k in args.max_distance:
        out = subprocess.run([sys.executable, __file__, "--one", "--items", str(args.items), "--max-distance", str(k)],
                             capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print("| items | k | distinct hashes | planted variants | clustered keys | clusters | wall (s) | CPU (s) "
          "| RSS before (MiB) | peak RSS (MiB) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['items']:,} | {r['max_distance']} | {r['distinct']:,} | {r['planted']:,} | {r['clustered_keys']:,} "
              f"| {r['clusters']:,} | {r['seconds']} | {r['cpu_seconds']} | {r['rss_before_mib']} | {r['peak_rss_mib']} |")


if __name__ == "__main__":
    main()
