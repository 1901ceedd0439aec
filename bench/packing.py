"""Packing benchmark: fill efficiency, sequences vs ⌈Σlen/L⌉, planning speed and peak RSS per packer and
window, and the whole packing step side by side with TRL's `pack_dataset(..., strategy="bfd")`.

    .venv/bin/python bench/packing.py                      # 1M synthetic lengths, L = 8192 and 32768 (CPU, ~minutes)
    .venv/bin/python bench/packing.py --n 200000 --trl-n 50000
    .venv/bin/python bench/packing.py --curated demo_out/curated   # (a) real lengths of a curated corpus

Data: (a) the lengths the sequence builder gives a curated corpus (`--curated DIR`; without it, a synthetic
curated corpus from vlmloom.demo.records is rendered with the demo tokenizer); (b) synthetic lengths: log-normal
text (median 300 tokens, sigma 1) plus one image of 64–2304 tokens on 60% of samples, clipped to L.
Every measurement runs in a fresh subprocess so peak RSS (ru_maxrss) is its own.
TRL is called as its SFT trainer calls it: `pack_dataset(ds.select_columns(["input_ids", "labels"]), L, "bfd",
map_kwargs={})`, i.e. a batched `datasets.map` that packs each 1,000-row batch on its own.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def synthetic_lengths(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    text = np.maximum(1, np.rint(rng.lognormal(math.log(300), 1.0, n))).astype(np.int64)
    image = (rng.random(n) < 0.6) * rng.integers(64, 2305, n)
    return text + image


def curated_lengths(curated: str | None, workdir: str) -> tuple[np.ndarray, str]:
    from vlmloom.packing.builder import SequenceBuilder
    from vlmloom.packing.curated import iter_curated_samples
    from vlmloom.demo.records import synthetic_samples
    from vlmloom.schemas.curated import write_curated_dir
    from vlmloom.packing.pack import sample_texts
    from vlmloom.packing.tokenizer import train_tokenizer
    from vlmloom.schemas.records import Rejection

    label = curated
    if not curated:
        curated = write_curated_dir(os.path.join(workdir, "curated"),
                                    synthetic_samples(2000, seed=0, max_words=400, image_side=(16, 900)))
        label = "fixture corpus (2,000 samples, vlmloom.demo.records)"
    tok = train_tokenizer((t for s in iter_curated_samples(curated) for t in sample_texts(s)),
                          os.path.join(workdir, "tok"), vocab_size=4096)
    builder = SequenceBuilder(tok)
    out = [len(b) for b in map(builder.build, iter_curated_samples(curated)) if not isinstance(b, Rejection)]
    return np.asarray(out, np.int64), label


def peak_rss_mb() -> float:
    """VmHWM of this process (ru_maxrss would carry the parent's peak across fork+exec on Linux)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- one measurement per subprocess --------------------------------------------------------------
def run_plan(lengths_file: str, L: int, packer: str, window: int) -> dict:
    from vlmloom.packing.packers import plan_bins

    lengths = np.minimum(np.load(lengths_file), L)
    start = time.perf_counter()
    bins = 0
    for _ in plan_bins(iter(lengths.tolist()), L, packer=packer, window=window, carry=64):
        bins += 1
    seconds = time.perf_counter() - start
    return {"sequences": bins, "lower_bound": int(math.ceil(lengths.sum() / L)),
            "fill": float(lengths.sum() / (bins * L)), "samples_per_s": lengths.size / seconds,
            "seconds": seconds, "peak_rss_mb": peak_rss_mb()}


def token_table(lengths: np.ndarray):
    """input_ids/labels as Arrow list<int32> columns (what a tokenized SFT dataset holds)."""
    import pyarrow as pa

    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = np.arange(offsets[-1], dtype=np.int32)
    np.remainder(values, 4093, out=values)
    ids = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(values))
    return pa.table({"input_ids": ids, "labels": ids})


def arrow_file(lengths_file: str, L: int) -> str:
    """The token table as an Arrow stream file, the way `datasets` caches a tokenized dataset."""
    import pyarrow as pa

    path = f"{lengths_file}.{L}.arrow"
    if not os.path.exists(path):
        table = token_table(np.minimum(np.load(lengths_file), L))
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=1000)
    return path


def read_arrow(path: str):
    import pyarrow as pa

    return pa.ipc.open_stream(pa.memory_map(path)).read_all()


def run_trl(lengths_file: str, L: int) -> dict:
    import datasets
    from trl.data_utils import pack_dataset

    datasets.disable_progress_bars()
    lengths = np.minimum(np.load(lengths_file), L)
    ds = datasets.Dataset.from_file(arrow_file(lengths_file, L))  # memory-mapped, as in SFTTrainer
    rss_before = peak_rss_mb()
    start = time.perf_counter()
    packed = pack_dataset(ds.select_columns(["input_ids", "labels"]), L, "bfd", map_kwargs={})
    seq_lengths = packed.data.column("seq_lengths")
    seconds = time.perf_counter() - start
    n_seq = len(packed)
    return {"sequences": n_seq, "lower_bound": int(math.ceil(lengths.sum() / L)),
            "fill": float(lengths.sum() / (n_seq * L)), "samples_per_s": lengths.size / seconds, "seconds": seconds,
            "peak_rss_mb": peak_rss_mb(), "input_rss_mb": rss_before, "check": len(seq_lengths)}


def run_ours_step(lengths_file: str, L: int, window: int, source: str) -> dict:
    """Plan + assemble every packed row (input_ids, labels, 4×L position ids) from token data.

    source=table: the same in-memory Arrow token table TRL gets; source=stream: tokens generated per sample on
    the fly (a streaming reader), so memory is bounded by the window."""
    from vlmloom.packing.packers import plan_bins

    lengths = np.minimum(np.load(lengths_file), L)
    if source == "table":
        chunks = read_arrow(arrow_file(lengths_file, L)).column("input_ids").chunks  # zero-copy, memory-mapped
    else:  # a reader hands out token arrays; here views into one pool, so generating them costs nothing
        pool = (np.arange(4 * L, dtype=np.int64) % 4093).astype(np.int32)
    rss_before = peak_rss_mb()
    start = time.perf_counter()
    pending: dict[int, np.ndarray] = {}

    def feed():
        if source == "table":
            i = 0
            for chunk in chunks:
                values, offsets = chunk.values.to_numpy(), chunk.offsets.to_numpy().tolist()
                for a, b in zip(offsets[:-1], offsets[1:]):
                    pending[i] = values[a:b]
                    yield b - a
                    i += 1
        else:
            for i, n in enumerate(lengths.tolist()):
                o = (i * 7919) % (3 * L)
                pending[i] = pool[o:o + n]
                yield n

    ramp = np.arange(L, dtype=np.int32)
    input_ids = np.empty(L, np.int32)
    labels = np.empty(L, np.int32)
    position_ids = np.empty((4, L), np.int32)
    rows = tokens = 0
    for b in plan_bins(feed(), L, window=window, carry=64):
        at = 0
        for i in b:
            part = pending.pop(i)
            k = part.size
            input_ids[at:at + k] = part
            position_ids[0, at:at + k] = ramp[:k]
            at += k
        input_ids[at:] = 0
        labels[:at] = input_ids[:at]  # a real row masks prompts; the copy costs the same
        labels[at:] = -100
        position_ids[0, at:] = ramp[:L - at]
        position_ids[1:] = position_ids[0]  # text-only here: the M-RoPE rows equal the text row
        rows += 1
        tokens += at
    seconds = time.perf_counter() - start
    return {"sequences": rows, "lower_bound": int(math.ceil(lengths.sum() / L)), "fill": tokens / (rows * L),
            "samples_per_s": lengths.size / seconds, "seconds": seconds, "peak_rss_mb": peak_rss_mb(),
            "input_rss_mb": rss_before}


def child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(args)], capture_output=True, text=True,
                          cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fmt_row(name: str, L: int, r: dict) -> str:
    extra = r["sequences"] - r["lower_bound"]
    return (f"| {name} | {L} | {100 * r['fill']:.3f}% | {r['sequences']:,} | {r['lower_bound']:,} (+{extra}) | "
            f"{r['samples_per_s']:,.0f} | {r['peak_rss_mb']:,.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="synthetic samples (b)")
    parser.add_argument("--trl-n", type=int, default=100_000, help="samples for the TRL side-by-side")
    parser.add_argument("--seq-lens", default="8192,32768")
    parser.add_argument("--curated", default=None, help="curated dir for (a); default: a fixture corpus")
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ns = parser.parse_args()
    if ns.child:
        kind, *rest = json.loads(ns.child)
        fn = {"plan": run_plan, "trl": run_trl, "step": run_ours_step}[kind]
        print(json.dumps(fn(*rest)))
        return
    seq_lens = [int(x) for x in ns.seq_lens.split(",")]
    header = ("| run | L | fill | sequences | lower bound ⌈Σlen/L⌉ | samples/s | peak RSS MB |\n"
              "| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as work:
        demo, label = curated_lengths(ns.curated, work)
        demo_file, synth_file, trl_file = (os.path.join(work, f) for f in ("demo.npy", "synth.npy", "trl.npy"))
        np.save(demo_file, demo)
        synth = synthetic_lengths(ns.n)
        np.save(synth_file, synth)
        np.save(trl_file, synth[:ns.trl_n])
        print(f"(a) {label}: {demo.size} samples, median {int(np.median(demo))} tokens, max {demo.max()}")
        print(f"(b) synthetic: {ns.n:,} samples, median {int(np.median(synth))} tokens (text alone: median 300), "
              f"mean {synth.mean():.0f}\n")
        print("Planning only (lengths → bins), one fresh process per row\n" + header, flush=True)
        configs = [("best_fit_decreasing", w) for w in (1024, 4096, 16384, 65536, 0)] + \
                  [("first_fit_decreasing", w) for w in (4096, 16384)] + [("greedy", 4096)]
        for L in seq_lens:
            r = child(["plan", demo_file, L, "best_fit_decreasing", 0])
            print(fmt_row("(a) best_fit_decreasing whole set", L, r), flush=True)
            for packer, window in configs:
                r = child(["plan", synth_file, L, packer, window])
                print(fmt_row(f"(b) {packer} window={window or 'whole set'}", L, r), flush=True)
        print(f"\nWhole packing step on token data (plan + assemble input_ids/labels/4×L position_ids), "
              f"first {ns.trl_n:,} samples of (b)\n" + header.replace("peak RSS MB", "peak RSS MB (input data)"),
              flush=True)
        for L in seq_lens:
            if not ns.skip_trl:
                r = child(["trl", trl_file, L])
                print(fmt_row("TRL pack_dataset bfd (as SFTTrainer)", L, r)[:-2] + f" ({r['input_rss_mb']:,.0f}) |",
                      flush=True)
            arrow_file(trl_file, L)
            r = child(["step", trl_file, L, 16384, "table"])
            print(fmt_row("vlmloom BFD window=16384, same Arrow file", L, r)[:-2] + f" ({r['input_rss_mb']:,.0f}) |",
                  flush=True)
            r = child(["step", synth_file, L, 16384, "stream"])
            print(fmt_row(f"vlmloom BFD window=16384, streamed, all {ns.n:,}", L, r)[:-2] +
                  f" ({r['input_rss_mb']:,.0f}) |", flush=True)


if __name__ == "__main__":
    main()
