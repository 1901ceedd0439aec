"""Curation throughput: the Beam pipeline vs a bare loop doing the same per-sample work.

    .venv/bin/python bench/curate_throughput.py --n 3000

Per-sample work = read from tar + decode/validate (EXIF, RGB, size/aspect/bomb guards) + sha256 + pHash
(`curation.decode.decode_sample`). The pipeline runs read → decode → write (other stages disabled) on the
DirectRunner with 1 worker (in-process) and 2 workers (multi_processing). Ratio = pipeline / bare loop;
per worker = ratio / workers. Then near-duplicate clustering of 1M synthetic pHashes (incl. a bucket of
100k identical ones) with `curation.neardup.cluster_phashes`: time and peak RSS.
"""
from __future__ import annotations

import argparse
import glob
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time


def bare_loop(tars: list[str]) -> int:
    from vlmloom.curation import readers
    from vlmloom.curation.decode import DecodeConfig, decode_sample
    from vlmloom.schemas.records import Sample

    config, n = DecodeConfig(), 0
    for path in tars:
        with open(path, "rb") as fh:
            for item in readers.iter_tar_records(fh, path):
                if isinstance(item, tuple):
                    continue
                sample = readers.record_to_sample(item, "bench")
                if isinstance(sample, Sample):
                    decode_sample(sample, config)
                    n += 1
    return n


def run_pipeline(tars_glob: str, out: str, workers: int) -> float:
    from vlmloom.pipelines.curate import curate, load_config

    config = load_config({"inputs": [{"path": tars_glob, "name": "bench"}], "output": out, "overwrite": True,
                          "disable": ["heuristics", "language", "exact_dedup", "near_dup_image", "near_dup_text"]})
    args = [f"--direct_num_workers={workers}"]
    if workers > 1:
        args.append("--direct_running_mode=multi_processing")
    t = time.perf_counter()
    curate(config, args)
    return time.perf_counter() - t


def neardup_scale(n: int) -> None:
    """The clustering table comes from bench/neardup_scale.py (each k in its own process for a clean peak RSS)."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "neardup_scale.py")
    subprocess.run([sys.executable, script, "--items", str(n), "--max-distance", "6"], check=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=3000, help="demo corpus size (clean samples)")
    parser.add_argument("--hashes", type=int, default=1_000_000)
    parser.add_argument("--corpus", default="", help="reuse an existing demo corpus folder")
    args = parser.parse_args()
    from vlmloom.demo.corpus import DemoCorpusConfig, build_demo_corpus

    work = tempfile.mkdtemp(prefix="vlmloom-bench-")
    try:
        corpus = args.corpus or os.path.join(work, "corpus")
        if not args.corpus:
            build_demo_corpus(corpus, DemoCorpusConfig(num_samples=args.n))
        tars = sorted(glob.glob(os.path.join(corpus, "tars", "*.tar")))
        bare_loop(tars[:1])  # warm imports and caches
        t = time.perf_counter()
        n = bare_loop(tars)
        bare = n / (time.perf_counter() - t)
        print(f"\n{n} decodable samples in {len(tars)} tars, CPU cores: {os.cpu_count()}\n")
        print("| run | samples/s | ratio to bare loop | ratio per worker |\n|---|---|---|---|")
        print(f"| bare single-process loop | {bare:,.0f} | 1.00 | 1.00 |")
        for workers in (1, 2):
            dt = run_pipeline(os.path.join(corpus, "tars", "*.tar"), os.path.join(work, f"out{workers}"), workers)
            rate = n / dt
            print(f"| Beam DirectRunner, {workers} worker(s) | {rate:,.0f} | {rate / bare:.2f} | {rate / bare / workers:.2f} |")
        neardup_scale(args.hashes)
        print(f"\nbench process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
