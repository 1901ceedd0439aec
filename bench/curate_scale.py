"""Curate at two sizes: does anything one worker holds grow with the corpus?

    .venv/bin/python bench/curate_scale.py --sizes 20000 80000
    .venv/bin/python bench/curate_scale.py --sizes 10000 40000 --workers 2   # 2 processes (multi_processing)

For each size: N tiny synthetic records (32×32 JPEGs of noise, distinct captions, webdataset tars) go through the
same job (read → decode → heuristics → exact dedup → pHash near-dup → MinHash near-dup → write; language id off)
in a child process, on the DirectRunner. The table gives:
- time: wall seconds of the job (pipeline build to finish, no report);
- peak RSS: the child's own peak when the job ends (the kernel's high-water mark, `ru_maxrss`, read before the
  child reads the output back to check it), and the largest peak of any worker process it started (psutil,
  sampled every 0.2 s over the process tree);
- largest side input: every PCollection consumed as a side input gets a measuring branch that sums the pickled
  sizes of its elements (what a runner materialises and ships to each worker that reads it);
- largest combine accumulator: every CombineFn of the job is wrapped so that `extract_output` records the size
  of the final, merged accumulator (its accumulator coder's encoding), per transform;
- bytes shuffled per record: every GroupByKey (CoGroupByKey and Reshuffle expand to one) gets a measuring branch
  on its input that sums the encoded size of each element with the coder the runner uses for that PCollection
  (`coders.registry.get_coder(element_type)`), per bundle; listed per stage (the label's first part) and for the
  largest GroupByKeys, in bytes per input record;
- peak RSS per record: the growth of the peaks between consecutive sizes divided by the growth in records.
All are measured, not computed; the transforms they come from are listed by label. A size that grows ~4× with N
means the step holds per-record data of the whole corpus. `--passthrough` runs, over the same records, only the
read and a step that drops every record: what the DirectRunner and the reader keep by themselves.
`--chunk N` runs the same records through `curate --chunk N` (pipelines/chunked.py: N tars a job, then one
cross-chunk dedup job on metadata and the merge), uninstrumented: time and peak RSS only; `--per-tar` sets the
tar size (the unit a chunk counts), so that chunks of a fixed size compare with one job over the same tars:

    .venv/bin/python bench/curate_scale.py --sizes 5000 20000 --per-tar 1000            # one job
    .venv/bin/python bench/curate_scale.py --sizes 5000 20000 --per-tar 1000 --bare --repeat 3   # medians of 3
    .venv/bin/python bench/curate_scale.py --sizes 5000 20000 --per-tar 1000 --chunk 5  # 5,000 records a chunk
The probes add a measuring branch per GroupByKey (one extra encoding of what it shuffles): times are the probed job's.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

PROBE_ENV = "VLMLOOM_SCALE_PROBE"  # JSONL file the instrumented job appends its measurements to
WORDS = ("red green blue small large round square photo of a the cat dog tree car house boat bird river hill "
         "city street night day old new bright dark").split()


# ------------------------------------------------------------------------------------------------ corpus
def make_corpus(directory: str, n: int, per_tar: int = 5000, seed: int = 0) -> str:
    """N records as webdataset tars: KEY.jpg (32×32 noise) + KEY.txt (a distinct caption). Duplicates grow with N,
    as in a web corpus: every 20th record repeats a recent record's image bytes (exact duplicate) and every 20th
    (offset 10) a brightened copy of one (a pHash near-duplicate), with the same caption."""
    import numpy as np
    from PIL import Image

    rng, nprng = random.Random(seed), np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    recent: list[tuple] = []  # the last originals (pixels, caption): bounded memory
    for start in range(0, n, per_tar):
        with tarfile.open(os.path.join(directory, f"{start // per_tar:05d}.tar"), "w") as tar:
            for i in range(start, min(n, start + per_tar)):
                if recent and i % 20 in (0, 10):
                    array, text = rng.choice(recent)
                    if i % 20 == 10:
                        array = np.clip(array.astype(int) + 6, 0, 255).astype(np.uint8)
                else:
                    array = nprng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                    text = f"record {i} " + " ".join(rng.choice(WORDS) for _ in range(12))
                    recent = (recent + [(array, text)])[-16:]
                buf = io.BytesIO()
                Image.fromarray(array).save(buf, "JPEG", quality=90)
                for name, data in ((f"r{i:08d}.jpg", buf.getvalue()), (f"r{i:08d}.txt", text.encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return os.path.join(directory, "*.tar")


# ------------------------------------------------------------------------------------------- probes (child)
def _record(entry: dict) -> None:
    with open(os.environ[PROBE_ENV], "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")


def _encoded_size(fn, accumulator) -> int:
    import pickle

    try:
        return len(fn.get_accumulator_coder().encode(accumulator))
    except Exception:  # a coder that cannot encode this accumulator: fall back to pickle
        return len(pickle.dumps(accumulator))


def _measured_combine_fn(inner, label: str):
    """`inner` with extract_output recording the merged accumulator's encoded size under `label`."""
    import apache_beam as beam

    class Measured(beam.CombineFn):
        def setup(self, *a, **k):
            inner.setup(*a, **k)

        def create_accumulator(self, *a, **k):
            return inner.create_accumulator(*a, **k)

        def add_input(self, acc, element, *a, **k):
            return inner.add_input(acc, element, *a, **k)

        def add_inputs(self, acc, elements, *a, **k):
            return inner.add_inputs(acc, elements, *a, **k)

        def merge_accumulators(self, accs, *a, **k):
            return inner.merge_accumulators(accs, *a, **k)

        def compact(self, acc, *a, **k):
            return inner.compact(acc, *a, **k)

        def extract_output(self, acc, *a, **k):
            _record({"kind": "accumulator", "label": label, "bytes": _encoded_size(inner, acc), "pid": os.getpid()})
            return inner.extract_output(acc, *a, **k)

        def teardown(self, *a, **k):
            inner.teardown(*a, **k)

        def get_accumulator_coder(self):
            return inner.get_accumulator_coder()

        def default_type_hints(self):
            return inner.default_type_hints()

    return Measured()


def _instrument_combines() -> None:
    """Wrap the CombineFn of every CombinePerKey built from now on (CombineGlobally, ToList, Count, custom
    combines all expand to one), labelled by the CombineFn's class."""
    from apache_beam.transforms import core

    original = core.CombinePerKey.__init__

    def patched(self, fn, *args, **kwargs):
        fn = core.CombineFn.maybe_from_callable(fn)
        original(self, _measured_combine_fn(fn, f"combine {type(fn).__name__}"), *args, **kwargs)

    core.CombinePerKey.__init__ = patched


def _measure_side_inputs(pipeline) -> list[str]:
    """Add, for every PCollection read as a side input, a branch recording the sum of its elements' pickled sizes."""
    import pickle

    import apache_beam as beam
    from apache_beam.pipeline import PipelineVisitor

    found: list[tuple[str, object]] = []

    class Visitor(PipelineVisitor):
        def visit_transform(self, node):
            for side in getattr(node, "side_inputs", ()) or ():
                found.append((f"{node.full_label} <- {type(side).__name__}", side.pvalue))

    pipeline.visit(Visitor())
    for i, (label, pcoll) in enumerate(found):
        (pcoll
         | f"ScaleProbeSize{i}" >> beam.Map(lambda x: (1, len(pickle.dumps(x))))
         | f"ScaleProbeKey{i}" >> beam.Map(lambda p: (0, p))
         | f"ScaleProbeGroup{i}" >> beam.GroupByKey()
         | f"ScaleProbeWrite{i}" >> beam.Map(lambda kv, label=label: _record(
             {"kind": "side_input", "label": label, "elements": sum(c for c, _ in kv[1]),
              "bytes": sum(b for _, b in kv[1])})))
    return [label for label, _ in found]


class _ShuffleSize:
    """A DoFn summing the encoded sizes of its input per bundle, recorded once per bundle (no output)."""

    def __new__(cls, label: str, coder):
        import apache_beam as beam

        class ShuffleSize(beam.DoFn):
            def start_bundle(self):
                self._count, self._bytes = 0, 0

            def process(self, element):
                self._count += 1
                self._bytes += len(coder.encode(element))
                return ()

            def finish_bundle(self):
                if self._count:
                    _record({"kind": "shuffle", "label": label, "elements": self._count, "bytes": self._bytes})

        return ShuffleSize()


def _measure_shuffles(pipeline) -> list[str]:
    """Add, for the input of every GroupByKey, a branch recording its elements' encoded sizes (the runner's coder)."""
    import apache_beam as beam
    from apache_beam import coders
    from apache_beam.pipeline import PipelineVisitor

    found: list[tuple[str, object]] = []

    class Visitor(PipelineVisitor):
        def visit_transform(self, node):
            if isinstance(node.transform, beam.GroupByKey) and node.inputs:
                found.append((node.full_label, node.inputs[0]))

        enter_composite_transform = visit_transform

    pipeline.visit(Visitor())
    for i, (label, pcoll) in enumerate(found):
        if label.startswith("ScaleProbe"):
            continue
        coder = coders.registry.get_coder(pcoll.element_type)
        _ = pcoll | f"ShuffleProbe{i}" >> beam.ParDo(_ShuffleSize(label, coder))
    return [label for label, _ in found]


def _own_peak_rss() -> int:
    """This process's peak RSS so far, in bytes (the kernel's high-water mark: no sampling gap)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def child(tars: str, out: str, workers: int, passthrough: bool = False, chunk: int = 0, disable: str = "",
          bare: bool = False) -> None:
    """Build the job, instrument it (unless `bare`), run it, check every record is accounted for."""
    from vlmloom.pipelines.curate import build_pipeline, curate, load_config, new_pipeline
    from vlmloom.pipelines.report import read_manifest, read_rejections

    config = load_config({"inputs": [{"path": tars, "name": "scale"}], "output": out,
                          "disable": ["language"] + [s for s in disable.split(",") if s],
                          "heuristics": {"min_side": 16}, "chunk": chunk})
    args = [f"--direct_num_workers={workers}"] + (["--direct_running_mode=multi_processing"] if workers > 1 else [])
    if chunk:  # the chunked run as `vlmloom curate --chunk` runs it (several jobs, the merge, the report)
        started = time.perf_counter()
        report = curate(config, args, progress=False)
        _record({"kind": "job", "seconds": time.perf_counter() - started, "peak_rss": _own_peak_rss(),
                 "kept": report["accounting"]["kept"],
                 "rejected": report["accounting"]["rejected"]})
        return
    if not bare:
        _instrument_combines()
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    os.makedirs(out)
    started = time.perf_counter()
    pipeline = new_pipeline(PipelineOptions(args))  # the runner curate itself runs on (no Prism attempt)
    if passthrough:
        from vlmloom.pipelines.sources import ReadInputs

        read = pipeline | "Read" >> ReadInputs(config.inputs)
        _ = (read["kept"] | "Drop" >> beam.Map(lambda sample: 1)
                   | "Count" >> beam.CombineGlobally(sum) | "Record" >> beam.Map(lambda n: _record({"kind": "read", "n": n})))
    else:
        build_pipeline(pipeline, config, out)
        if not bare:
            _measure_side_inputs(pipeline)
    if not bare:  # the probes add a consumer per GroupByKey input: the runner then holds that input once more
        _measure_shuffles(pipeline)
    pipeline.run().wait_until_finish()
    seconds, peak_rss = time.perf_counter() - started, _own_peak_rss()  # before the check below reads the output
    if passthrough:
        read_count = [json.loads(line) for line in open(os.environ[PROBE_ENV], encoding="utf-8")]
        kept, rejected = next(e["n"] for e in read_count if e["kind"] == "read"), 0
    else:
        kept, rejected = len(read_manifest(out)), len(read_rejections(out))
    _record({"kind": "job", "seconds": seconds, "peak_rss": peak_rss, "kept": kept, "rejected": rejected})


# ------------------------------------------------------------------------------------------ parent
def run_size(n: int, work: str, workers: int, passthrough: bool = False, chunk: int = 0, per_tar: int = 5000,
             disable: tuple[str, ...] = (), bare: bool = False) -> dict:
    import psutil

    corpus = os.path.join(work, f"corpus{n}")
    tars = os.path.join(corpus, "*.tar") if os.path.isdir(corpus) else make_corpus(corpus, n, per_tar=per_tar)
    probe, out = os.path.join(work, f"probe{n}.jsonl"), os.path.join(work, f"out{n}")
    shutil.rmtree(out, ignore_errors=True)  # a repeat's run starts clean
    if os.path.exists(probe):
        os.remove(probe)
    env = {**os.environ, PROBE_ENV: probe}
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", tars,
                             out, str(workers), str(int(passthrough)), str(chunk),
                             ",".join(disable), str(int(bare))], env=env)
    peaks: dict[int, int] = {}
    root = psutil.Process(proc.pid)
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            try:
                for p in [root] + root.children(recursive=True):
                    try:
                        peaks[p.pid] = max(peaks.get(p.pid, 0), p.memory_info().rss)
                    except psutil.Error:
                        pass
            except psutil.Error:
                pass
            stop.wait(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    code = proc.wait()
    stop.set()
    thread.join()
    if code:
        raise SystemExit(f"size {n}: the job failed (exit {code})")
    entries = [json.loads(line) for line in open(probe, encoding="utf-8")]
    job = next(e for e in entries if e["kind"] == "job")
    if job["kept"] + job["rejected"] != n:
        raise SystemExit(f"size {n}: kept {job['kept']} + rejected {job['rejected']} != {n}")
    largest: dict[str, dict] = {}
    for kind in ("side_input", "accumulator"):
        per_label: dict[str, int] = {}
        for e in entries:
            if e["kind"] == kind:
                per_label[e["label"]] = max(per_label.get(e["label"], 0), e["bytes"])
        largest[kind] = per_label
    shuffled: dict[str, int] = {}
    for e in entries:
        if e["kind"] == "shuffle":
            shuffled[e["label"]] = shuffled.get(e["label"], 0) + e["bytes"]
    largest["shuffle"] = shuffled
    # The job process's peak is its own high-water mark taken when the job ended: the check that follows (reading the
    # whole manifest back) is not the job's, and sampling every 0.2 s can miss a short peak. Workers are sampled.
    return {"n": n, "seconds": job["seconds"], "kept": job["kept"], "main_rss": job["peak_rss"],
            "worker_rss": max([v for pid, v in peaks.items() if pid != proc.pid] or [0]), **largest}


def _median_row(repeats: list[dict]) -> dict:
    """One size's runs → one row: the median of time and of each peak (the run-to-run spread of peak RSS on one
    machine is tens of MB: one run is not a measurement of a few KB per record); probes from the first run."""
    row = dict(repeats[0])
    for field in ("seconds", "main_rss", "worker_rss"):
        row[field] = statistics.median(r[field] for r in repeats)
    row["main_rss_runs"] = [r["main_rss"] for r in repeats]
    return row


def _top(per_label: dict[str, int]) -> tuple[int, str]:
    if not per_label:
        return 0, "none"
    label = max(per_label, key=per_label.get)
    return per_label[label], label


def _print_shuffles(rows: list[dict], top: int = 12) -> None:
    """Bytes shuffled per input record: per stage (first label part), then the largest GroupByKeys."""
    if not any(r["shuffle"] for r in rows):
        return
    sizes = " | ".join(f"B/record at {r['n']:,}" for r in rows)
    for title, part in (("stage", lambda label: label.split("/")[0]), ("GroupByKey", lambda label: label)):
        totals: list[dict[str, int]] = []
        for r in rows:
            per: dict[str, int] = {}
            for label, size in r["shuffle"].items():
                per[part(label)] = per.get(part(label), 0) + size
            totals.append(per)
        names = sorted({n for t in totals for n in t}, key=lambda n: -totals[-1].get(n, 0))
        print(f"\nbytes shuffled per record, by {title} (encoded, the runner's coders):\n")
        print(f"| {title} | {sizes} |\n|---|" + "---|" * len(rows))
        for name in names[:top] if title == "GroupByKey" else names:
            print(f"| {name} | " + " | ".join(f"{t.get(name, 0) / r['n']:,.0f}" for t, r in zip(totals, rows)) + " |")
        if title == "stage":
            print("| all | " + " | ".join(f"{sum(t.values()) / r['n']:,.0f}" for t, r in zip(totals, rows)) + " |")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), bool(int(sys.argv[5])), int(sys.argv[6]), sys.argv[7],
              bool(int(sys.argv[8])))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[20000, 80000])
    parser.add_argument("--workers", type=int, default=1, help="DirectRunner workers (2 = multi_processing)")
    parser.add_argument("--passthrough", action="store_true", help="only read the records and drop them")
    parser.add_argument("--chunk", type=int, default=0, help="curate --chunk N (tars per job; time and peak RSS only)")
    parser.add_argument("--per-tar", type=int, default=5000, help="records per input tar (the unit --chunk counts)")
    parser.add_argument("--disable", nargs="*", default=[], help="stages to skip besides language (near_dup_text ...)")
    parser.add_argument("--bare", action="store_true",
                        help="no probes: the job's graph as curate builds it (time and peak RSS only)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per size, the sizes interleaved; the tables give medians (peak RSS: min-max too)")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="vlmloom-scale-")
    try:
        runs = [[run_size(n, work, args.workers, args.passthrough, args.chunk, args.per_tar, tuple(args.disable),
                          args.bare) for n in args.sizes] for _ in range(args.repeat)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = [_median_row([rep[i] for rep in runs]) for i in range(len(args.sizes))]
    mb = 2**20
    print(f"\nDirectRunner, {args.workers} worker(s){', pass-through' if args.passthrough else ''}"
          f"{f', chunks of {args.chunk} tars' if args.chunk else ''}, {args.per_tar:,} records a tar"
          f"{f', disabled: {args.disable}' if args.disable else ''}{', no probes' if args.bare else ''}, "
          f"{args.repeat} run(s) a size{' (medians)' if args.repeat > 1 else ''}, CPU cores: {os.cpu_count()}\n")
    print("| records | kept | time s | peak RSS job MB | peak RSS worker MB | largest side input KB | "
          "largest combine accumulator KB |\n|---|---|---|---|---|---|---|")
    for r in rows:
        side, acc = _top(r["side_input"])[0], _top(r["accumulator"])[0]
        spread = (f" ({min(r['main_rss_runs']) / mb:,.0f}–{max(r['main_rss_runs']) / mb:,.0f})"
                  if args.repeat > 1 else "")
        print(f"| {r['n']:,} | {r['kept']:,} | {r['seconds']:.1f} | {r['main_rss'] / mb:,.0f}{spread} | "
              f"{r['worker_rss'] / mb:,.0f} | {side / 1024:,.1f} | {acc / 1024:,.1f} |")
    for i, (previous, r) in enumerate(zip(rows, rows[1:])):
        grown = r["n"] - previous["n"]
        per_run = [(rep[i + 1]["main_rss"] - rep[i]["main_rss"]) / grown / 1024 for rep in runs]
        print(f"\npeak RSS per record, {previous['n']:,} → {r['n']:,}: job "
              f"{(r['main_rss'] - previous['main_rss']) / grown / 1024:,.1f} KB, worker "
              f"{(r['worker_rss'] - previous['worker_rss']) / grown / 1024:,.1f} KB"
              + (f" (from the medians; each run's pair: {', '.join(f'{v:,.1f}' for v in per_run)} KB)"
                 if args.repeat > 1 else ""))
    _print_shuffles(rows)
    labels = sorted({label for r in rows for kind in ("side_input", "accumulator") for label in r[kind]})
    print("\nper transform (KB at each size):\n")
    for label in labels:
        sizes = [max(r["side_input"].get(label, 0), r["accumulator"].get(label, 0)) / 1024 for r in rows]
        print(f"- {label}: " + " → ".join(f"{s:,.1f}" for s in sizes))


if __name__ == "__main__":
    main()
