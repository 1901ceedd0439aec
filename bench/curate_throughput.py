"""Curation throughput: the Beam pipeline vs a bare loop doing the same per-sample work.

    .venv/bin/python bench/curate_throughput.py --n 3000
    .venv/bin/python bench/curate_throughput.py --n 12000 --corpus /tmp/c12k --repeat 2 --hashes 1000
    .venv/bin/python bench/curate_throughput.py --corpus /tmp/c12k --profile     # where the pipeline's time goes
    .venv/bin/python bench/curate_throughput.py --corpus /tmp/c12k --paired 4    # 1 worker vs bare, side by side

Per-sample work = read from tar + decode/validate (EXIF, RGB, size/aspect/bomb guards) + sha256 + pHash
(`curation.decode.decode_sample`); the second baseline also writes the kept samples with the pipeline's own
bucket writer (`write_curated_dir`), so it does all the work the pipeline does, in one plain loop. The third
runs that loop in 2 independent processes over half the tars each, at once (warmed up, started together): what
this machine itself gives 2 processes, with no runner, no shuffle and no start-up, the ceiling for 2 workers.
The pipeline runs read → decode → write (other stages disabled) on the DirectRunner with 1 worker (in-process)
and 2 workers (multi_processing). Every row runs in a fresh process
(rows interleaved over --repeat rounds, best kept), so no row inherits another's heap or caches. The pipeline's
time is the whole `curate` call (start-up, report and report.html included). Ratio = pipeline / bare loop;
per worker = ratio / workers. Also printed: every run's CPU seconds (its worker processes included) and the
hypervisor's steal meanwhile, and the ratios within each round with their median (a shared VM drifts by more
than the overheads measured here, so a row's best can come from a faster minute than its baseline's).
`--paired R` instead runs the bare loop + write and the 1-worker pipeline at the same time, each pinned to a core
of its own (swapped every round), so that each ratio compares the same minutes of the machine. Then
near-duplicate clustering of 1M synthetic pHashes (incl. a bucket of 100k identical ones) with
`curation.neardup.cluster_phashes`: time and peak RSS.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time


def bare_loop(tars: list[str], write_to: str = "") -> int:
    """Read + decode/validate + hash every sample; with `write_to`, also write the kept ones as a curated
    directory (the same bucket writer as the pipeline, schemas.curated.write_curated_dir), one process."""
    from vlmloom.curation import readers
    from vlmloom.curation.decode import DecodeConfig, decode_sample
    from vlmloom.schemas.curated import write_curated_dir
    from vlmloom.schemas.records import Sample

    config, n, kept = DecodeConfig(), 0, []
    for path in tars:
        with open(path, "rb") as fh:
            for item in readers.iter_tar_records(fh, path):
                if isinstance(item, tuple):
                    continue
                sample = readers.record_to_sample(item, "bench")
                if isinstance(sample, Sample):
                    if decode_sample(sample, config).keep and write_to:
                        kept.append(sample)
                    n += 1
    if write_to:
        shutil.rmtree(write_to, ignore_errors=True)
        try:
            write_curated_dir(write_to, kept, per_shard=1000, buckets=16)
        except TypeError:  # format version 1 (before buckets): measuring the old code for a before/after table
            write_curated_dir(write_to, kept, per_shard=1000)
    return n


def profile_pipeline(tars_glob: str, out: str, top: int = 60) -> None:
    """cProfile the in-process pipeline; print the functions with the most own time (where the time goes)."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    run_pipeline(tars_glob, out, 1)
    profiler.disable()
    profiler.dump_stats(os.environ.get("PSTATS_OUT", os.path.join(os.path.dirname(out), "curate.pstats")))
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats("vlmloom|curate|report|thumbnails|sink|run_pipeline", top)


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


def _cpu_seconds() -> float:
    """User + system CPU of this process and of its children that have exited (the pipeline's worker processes)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _steal_seconds() -> float:
    """CPU time the hypervisor gave to other guests, all cores (/proc/stat; 0 where there is none)."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _ready_then_wait() -> None:
    """A child started together with others (`_run_together`): say it is warmed up, wait for the go line."""
    print("ready", flush=True)
    sys.stdin.readline()


def _run_together(corpus: str, work: str, measures: list[str]) -> tuple[float, float, list[dict]]:
    """Start a child of this script per `--measure` value, wait until every one is warmed up, start them at once;
    → (seconds until the last one finished, steal seconds meanwhile, each child's last output line as JSON)."""
    import json

    children = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--corpus", corpus, "--measure", m,
                                  "--work", work], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                for m in measures]
    for child in children:
        line = child.stdout.readline().strip()
        while line != "ready":  # (a library may print on stdout while it loads)
            if not line and child.poll() is not None:
                raise RuntimeError("a child exited before it was ready")
            line = child.stdout.readline().strip()
    steal, t = _steal_seconds(), time.perf_counter()
    for child in children:
        child.stdin.write("go\n")
        child.stdin.flush()
    done = [json.loads(child.communicate()[0].strip().splitlines()[-1]) for child in children]
    return time.perf_counter() - t, _steal_seconds() - steal, done


def _bare_part(corpus: str, work: str, part: int, parts: int) -> None:
    """Child of `bare_write_split`: warm up, say ready, wait for the go line on stdin, then the bare loop + write
    over every `parts`-th tar from `part`; prints its CPU seconds."""
    import json

    tars = sorted(glob.glob(os.path.join(corpus, "tars", "*.tar")))
    bare_loop(tars[:1])
    _ready_then_wait()
    cpu = _cpu_seconds()
    n = bare_loop(tars[part::parts], os.path.join(work, f"bare_written_{part}_of_{parts}"))
    print(json.dumps({"cpu": _cpu_seconds() - cpu, "samples": n}), flush=True)


def bare_write_split(corpus: str, work: str, parts: int) -> dict:
    """The machine's own scaling, no Beam: `parts` independent processes run the bare loop + write over their
    share of the tars at once (warmed up first, started together); seconds until the last one finishes."""
    seconds, steal, done = _run_together(corpus, work, [f"bare_part:{k}:{parts}" for k in range(parts)])
    return {"seconds": seconds, "cpu": sum(d["cpu"] for d in done), "steal": steal,
            "samples": sum(d["samples"] for d in done)}


def measure(kind: str, corpus: str, work: str, workers: int = 1, before_clock=None) -> dict:
    """One measurement in this process: `bare`, `bare_write`, `bare_write_split` (over `workers` processes) or
    `pipeline` (with `workers`): seconds, CPU seconds (this process and its worker processes, from the start of
    the timed part), steal seconds, samples. `before_clock()`: called once warmed up, just before the clock starts."""
    if kind == "bare_write_split":
        return bare_write_split(corpus, work, workers)
    tars = sorted(glob.glob(os.path.join(corpus, "tars", "*.tar")))
    # Every row warms up the same way before its clock starts: the per-sample work's lazy imports (imagehash's
    # scipy, PIL's plugins: ~0.6 s, which the pipeline's time counted and the bare loop's did not) and the first
    # tar's pages. The pipeline's own start-up stays inside its time: the curate call, graph, workers and report.
    bare_loop(tars[:1])
    if kind == "pipeline":
        import vlmloom.pipelines.curate  # noqa: F401
    if before_clock is not None:
        before_clock()
    cpu, steal, t = _cpu_seconds(), _steal_seconds(), time.perf_counter()
    if kind == "pipeline":
        run_pipeline(os.path.join(corpus, "tars", "*.tar"), os.path.join(work, f"out{workers}"), workers)
        n = None
    else:
        n = bare_loop(tars, os.path.join(work, "bare_written") if kind == "bare_write" else "")
    return {"seconds": time.perf_counter() - t, "cpu": _cpu_seconds() - cpu, "steal": _steal_seconds() - steal,
            "samples": n}


def _paired_child(kind: str, corpus: str, work: str, cpu: int) -> None:
    """Child of `paired_rounds`: on core `cpu` alone (its threads too), warm up, say ready, wait for the go line on
    stdin, then one measurement of `kind` with 1 worker; prints it as JSON."""
    import json

    os.sched_setaffinity(0, {cpu})  # before any thread starts: every thread of this process inherits it
    print(json.dumps(measure(kind, corpus, work, 1, before_clock=_ready_then_wait)), flush=True)


def paired_rounds(corpus: str, work: str, rounds: int) -> list[dict]:
    """The bare loop + write and the 1-worker pipeline at the same time, each pinned to a core of its own (the cores
    swapped every round), both warmed up and started together: the two run through the same minutes of this VM,
    whose speed drifts by more than the overhead measured. Rows run one after the other compare different minutes.
    Each round: {"bare_write": ..., "pipeline": ..., "cores": (bare's, pipeline's)}."""
    out, (first, second) = [], sorted(os.sched_getaffinity(0))[:2]
    for index in range(rounds):
        cores = (first, second) if index % 2 == 0 else (second, first)
        _, _, (bare, pipeline) = _run_together(corpus, work, [f"paired:bare_write:{cores[0]}",
                                                              f"paired:pipeline:{cores[1]}"])
        out.append({"bare_write": bare, "pipeline": pipeline, "cores": cores})
    return out


def _print_paired(runs: list[dict], samples: int) -> None:
    import statistics

    print("\nPaired: bare loop + write and the pipeline (1 worker) at once, each on a core of its own\n\n"
          "| round | cores (bare, pipeline) | bare loop + write s | pipeline s | pipeline CPU ms/sample "
          "| ratio (bare / pipeline) |\n|---|---|---|---|---|---|")
    ratios = []
    for index, run in enumerate(runs, start=1):
        bare, pipe = run["bare_write"], run["pipeline"]
        ratios.append(bare["seconds"] / pipe["seconds"])
        print(f"| {index} | {run['cores'][0]}, {run['cores'][1]} | {bare['seconds']:.1f} | {pipe['seconds']:.1f} "
              f"| {pipe['cpu'] / samples * 1000:.2f} | {ratios[-1]:.3f} |")
    print(f"| median | | | | | {statistics.median(ratios):.3f} |")


def _in_subprocess(kind: str, corpus: str, work: str, workers: int = 1) -> dict:
    """Each row runs in a fresh process, so no row inherits another's heap, caches or worker pool."""
    import json

    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--corpus", corpus, "--measure", kind,
                          "--workers", str(workers), "--work", work], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _paired_rounds(runs: list[tuple[str, int, dict]], per_round: int) -> None:
    """Ratios within each round (its rows ran back to back, so on this machine's same phase; a shared VM's speed
    drifts by more than the effects measured here), and their median: less at the mercy of one lucky row than
    best-of per row. The last two columns: what two plain processes reach on this machine (per worker, against
    one), and the 2-worker pipeline against those two processes (its time / theirs, inverted)."""
    import statistics

    columns: dict[str, list[float]] = {"1 worker": [], "2 workers, per worker": [],
                                       "2 bare processes, per process": [], "2 workers vs 2 bare processes": []}
    print("\nPer round, against that round's bare loop + write\n\n| round | " + " | ".join(columns) + " |\n|"
          + "---|" * (len(columns) + 1))
    for start in range(0, len(runs), per_round):
        got = {(kind, workers): r["seconds"] for kind, workers, r in runs[start:start + per_round]}
        base, split = got[("bare_write", 1)], got[("bare_write_split", 2)]
        for name, value in zip(columns, (base / got[("pipeline", 1)], base / got[("pipeline", 2)] / 2,
                                         base / split / 2, split / got[("pipeline", 2)])):
            columns[name].append(value)
        print(f"| {start // per_round + 1} | " + " | ".join(f"{v[-1]:.2f}" for v in columns.values()) + " |")
    print("| median | " + " | ".join(f"{statistics.median(v):.2f}" for v in columns.values()) + " |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=3000, help="demo corpus size (clean samples)")
    parser.add_argument("--hashes", type=int, default=1_000_000)
    parser.add_argument("--corpus", default="", help="reuse an existing demo corpus folder")
    parser.add_argument("--profile", action="store_true", help="only cProfile the in-process pipeline")
    parser.add_argument("--repeat", type=int, default=1,
                        help="measure each row this many times (interleaved), keep the best")
    parser.add_argument("--paired", type=int, default=0, metavar="R",
                        help="only R paired rounds: bare loop + write and the 1-worker pipeline at once, one core each")
    parser.add_argument("--measure", default="", help=argparse.SUPPRESS)  # internal: one row, in this process
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--work", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure.startswith("bare_part:"):
        _, part, parts = args.measure.split(":")
        _bare_part(args.corpus, args.work, int(part), int(parts))
        return
    if args.measure.startswith("paired:"):
        _, kind, cpu = args.measure.split(":")
        _paired_child(kind, args.corpus, args.work, int(cpu))
        return
    if args.measure:
        import json

        print(json.dumps(measure(args.measure, args.corpus, args.work, args.workers)))
        return
    from vlmloom.demo.corpus import DemoCorpusConfig, build_demo_corpus

    work = tempfile.mkdtemp(prefix="vlmloom-bench-")
    try:
        corpus = args.corpus or os.path.join(work, "corpus")
        if not args.corpus:
            build_demo_corpus(corpus, DemoCorpusConfig(num_samples=args.n))
        tars = sorted(glob.glob(os.path.join(corpus, "tars", "*.tar")))
        if args.profile:
            profile_pipeline(os.path.join(corpus, "tars", "*.tar"), os.path.join(work, "profiled"))
            return
        if args.paired:
            if len(os.sched_getaffinity(0)) < 2:
                raise SystemExit("--paired needs 2 cores (one for each run)")
            runs = paired_rounds(corpus, work, args.paired)
            samples = next(r["bare_write"]["samples"] for r in runs)
            print(f"\n{samples} decodable samples in {len(tars)} tars")
            _print_paired(runs, samples)
            return
        rows = [("bare", 1), ("bare_write", 1), ("bare_write_split", 2), ("pipeline", 1), ("pipeline", 2)]
        best: dict[tuple[str, int], float] = {}
        runs: list[tuple[str, int, dict]] = []
        n = 0
        for _ in range(args.repeat):
            for kind, workers in rows:
                got = _in_subprocess(kind, corpus, work, workers)
                n = got["samples"] or n
                runs.append((kind, workers, got))
                best[(kind, workers)] = min(best.get((kind, workers), float("inf")), got["seconds"])
        bare, bare_written = n / best[("bare", 1)], n / best[("bare_write", 1)]
        print(f"\n{n} decodable samples in {len(tars)} tars, CPU cores: {os.cpu_count()}, "
              f"best of {args.repeat} (rows interleaved, each in a fresh process)\n")
        print("| run | seconds | samples/s | ratio to bare loop (no write) | per worker | ratio to bare loop + write "
              "| per worker |\n|---|---|---|---|---|---|---|")
        print(f"| bare loop, no write | {best[('bare', 1)]:.1f} | {bare:,.0f} | 1.00 | 1.00 | | |")
        print(f"| bare loop + write (write_curated_dir) | {best[('bare_write', 1)]:.1f} | {bare_written:,.0f} "
              f"| {bare_written / bare:.2f} | | 1.00 | 1.00 |")
        rate = n / best[("bare_write_split", 2)]
        print(f"| 2 processes of bare loop + write, half the tars each (no Beam) | {best[('bare_write_split', 2)]:.1f} "
              f"| {rate:,.0f} | {rate / bare:.2f} | {rate / bare / 2:.2f} | {rate / bare_written:.2f} "
              f"| {rate / bare_written / 2:.2f} |")
        for workers in (1, 2):
            rate = n / best[("pipeline", workers)]
            print(f"| Beam DirectRunner, {workers} worker(s) | {best[('pipeline', workers)]:.1f} | {rate:,.0f} "
                  f"| {rate / bare:.2f} | {rate / bare / workers:.2f} "
                  f"| {rate / bare_written:.2f} | {rate / bare_written / workers:.2f} |")
        print("\nEvery run (CPU: the process and its worker processes; steal: CPU time the hypervisor gave to other "
              "guests meanwhile, all cores)\n\n| run | workers | seconds | CPU s | CPU s per sample (ms) | steal s |"
              "\n|---|---|---|---|---|---|")
        for kind, workers, got in runs:
            print(f"| {kind} | {workers} | {got['seconds']:.1f} | {got['cpu']:.1f} | {got['cpu'] / n * 1000:.2f} "
                  f"| {got['steal']:.1f} |")
        _paired_rounds(runs, len(rows))
        neardup_scale(args.hashes)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
