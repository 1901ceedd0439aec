"""`vlmloom demo` (`make demo`): the whole system on the bundled demo corpus, offline, on a laptop CPU.

    vlmloom demo --output demo_out [--num-samples 2000] [--overwrite]

Steps: build the demo corpus → curate it with Beam (in-process DirectRunner) → pack into fixed-length
sequences → a few pre-training and SFT steps of a tiny GLM-4.1V with DeepSpeed on CPU → export.
Stages that need model weights the demo cannot ship (CLIP, recaptioning, the detector) are off; the
curate summary says how to turn them on.
"""
from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import shutil
import sys
import time

from vlmloom.demo.corpus import DemoCorpusConfig, build_demo_corpus
from vlmloom.demo.media import MEDIA_DIR, write_media_folder
from vlmloom.schemas.config import apply_overrides, load_yaml


def config_path(name: str) -> str:
    """A demo config shipped as package data (demo/configs/NAME), read through importlib.resources so that
    an installed wheel finds it too (the package is a plain directory, so the path is a real file)."""
    return str(importlib.resources.files("vlmloom.demo").joinpath("configs", name))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vlmloom demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="demo_out")
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--train-steps", type=int, default=8)
    parser.add_argument("--skip-train", action="store_true", help="stop after packing")
    parser.add_argument("--skip-rl", action="store_true", help="stop after SFT (no RLCS stage)")
    args, beam_args = parser.parse_known_args(argv)

    out = args.output
    if os.path.exists(out):
        if not args.overwrite:
            print(f"vlmloom demo: {out!r} exists; pass --overwrite to rebuild it")
            return 2
        shutil.rmtree(out)
    os.makedirs(out)
    t0 = time.time()
    corpus = build_corpus(out, args.num_samples)
    curated = curate_corpus(out, corpus, beam_args)
    rc = pack_curated(out, curated, args.seq_len)
    if rc or args.skip_train:
        if not rc:
            print(next_steps(out))
        return rc
    rc = train_tiny_models(out, args.train_steps)
    if rc:
        return rc
    if not args.skip_rl:
        rlcs_stage(out)
    print(f"demo done in {time.time() - t0:.1f} s")
    print(next_steps(out))
    return 0


def build_corpus(out: str, num_samples: int) -> str:
    """Step 1: the demo corpus under OUT/corpus."""
    t0 = time.time()
    corpus = os.path.join(out, "corpus")
    expected = build_demo_corpus(corpus, DemoCorpusConfig(num_samples=num_samples))
    media = write_media_folder(corpus, seed=0)  # videos (one broken, one exact copy) and a PDF: corpus/media
    print(f"[1/5] demo corpus: {expected['total_records']} tar records + {expected.get('manifest_records', 0)} "
          f"manifest rows + {media['videos']} videos and a {media['pdf_pages']}-page PDF in "
          f"{time.time() - t0:.1f} s → {corpus}")
    return corpus


def curate_corpus(out: str, corpus: str, beam_args: list[str]) -> str:
    """Step 2: curate the corpus with Beam into OUT/curated; prints the funnel."""
    from vlmloom.pipelines.curate import curate, load_config
    from vlmloom.pipelines.model_config import describe_disabled
    from vlmloom.pipelines.report import summary_table

    data = load_yaml(config_path("demo_curate.yaml"))
    data["inputs"] = [{"path": os.path.join(corpus, "tars", "*.tar"), "name": "demo_wds"},
                      {"path": os.path.join(corpus, "manifest.parquet"), "name": "demo_manifest"},
                      {"path": os.path.join(corpus, MEDIA_DIR), "name": "demo_media"}]
    data["output"] = os.path.join(out, "curated")
    data = apply_overrides(data, demo_model_overrides(corpus))
    config = load_config(data)
    # OCR dominates the demo's curation time: two local processes unless Beam options were given
    beam_args = beam_args or ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    t1 = time.time()
    report = curate(config, beam_args)
    print(f"[2/5] curated in {time.time() - t1:.1f} s → {config.output}")
    print(summary_table(report))
    for line in describe_disabled(config.models):
        print(f"      {line}")
    return config.output


def pack_curated(out: str, curated: str, seq_len: int) -> int:
    """Step 3: pack OUT/curated twice: everything (pre-training) and the long-CoT qa samples (SFT)."""
    from vlmloom.packing.cli import main as pack_main

    packed, packed_sft = os.path.join(out, "packed"), os.path.join(out, "packed_sft")
    t2 = time.time()
    rc = pack_main([curated, "--output", packed, "--seq-len", str(seq_len)])
    if rc:
        return rc
    # the SFT set: only the long-CoT qa samples, same tokenizer so that the models agree
    rc = pack_main([curated, "--output", packed_sft, "--seq-len", str(seq_len),
                    "--tokenizer", os.path.join(packed, "tokenizer"),
                    "--set", "builder.kinds=[qa]", "--set", "builder.require_cot=true"])
    if rc:
        return rc
    print(f"[3/5] packed in {time.time() - t2:.1f} s → {packed} (pre-training), {packed_sft} (SFT)")
    return 0


def train_tiny_models(out: str, steps: int) -> int:
    """Step 4: pre-train a tiny GLM-4.1V on OUT/packed, then SFT it on OUT/packed_sft; prints the losses."""
    from vlmloom.trainer.cli import main as train_main

    t3 = time.time()
    pretrain_dir, sft_dir = os.path.join(out, "train_pretrain"), os.path.join(out, "train_sft")
    rc = train_main(["--config", config_path("demo_train_pretrain.yaml"), "--data", os.path.join(out, "packed"),
                     "--output", pretrain_dir, "--set", f"steps={steps}"])
    if rc:
        return rc
    # SFT continues from the exported pre-trained model on the qa-only packed set.
    rc = train_main(["--config", config_path("demo_train_sft.yaml"), "--data", os.path.join(out, "packed_sft"),
                     "--output", sft_dir, "--model", os.path.join(pretrain_dir, "hf_model"), "--set", f"steps={steps}"])
    if rc:
        return rc
    _print_losses(pretrain_dir, "pretrain")
    _print_losses(sft_dir, "sft")
    print(f"[4/5] trained in {time.time() - t3:.1f} s → {out}/train_pretrain, {out}/train_sft")
    return 0


def rlcs_stage(out: str) -> dict:
    """Step 5: RLCS where a tiny model can learn: the graded task of bench/rlcs_ablation.py (color / position /
    count), a short SFT, then RLCS; prints held-out reward before and after and the per-iteration metrics."""
    from vlmloom.demo.rlcs_demo import run_rlcs_task_demo

    t4 = time.time()
    result = run_rlcs_task_demo(os.path.join(out, "train_rlcs"))
    print(f"[5/5] RLCS in {time.time() - t4:.1f} s → {out}/train_rlcs (metrics.jsonl, tensorboard/ under rlcs/)")
    return result


def _print_losses(run_dir: str, name: str) -> None:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as fh:
        losses = [json.loads(line).get("loss") for line in fh if line.strip()]
    losses = [round(x, 3) for x in losses if isinstance(x, (int, float))]
    print(f"      {name} loss by step: {losses}")


def demo_model_overrides(corpus: str) -> list[str]:
    """The model stages that need no downloaded weights: OCR (rapidocr ships its models), contamination
    against the demo benchmark, concept balancing, grounding from OCR/GUI boxes."""
    bench = os.path.join(corpus, "benchmark", "items.parquet")
    return [
        "models.ocr.enabled=true",
        "models.ocr.angle_classifier=false",  # rendered pages are upright; same accuracy, faster
        "models.ocr.det_max_side=640",  # rendered pages keep their accuracy (1.0); ~40% less OCR time than 960
        "models.grounding.enabled=true",
        "models.concepts.enabled=true",
        "models.contamination.enabled=true",
        f"models.contamination.benchmarks=[{json.dumps({'name': 'demo_bench', 'path': bench})}]",
    ]


def next_steps(out: str, trace_lines: int = 14) -> str:
    """What to look at after the demo: the HTML reports, one `vlmloom trace` of a real packed sequence (run
    here, its first lines shown) and the command that opens TensorBoard on the training runs."""
    from vlmloom.pipelines.trace import render, trace
    from vlmloom.schemas import curated as curated_layout, packed as packed_layout

    curated, packed = os.path.join(out, "curated"), os.path.join(out, "packed")
    lines = ["", "what to look at next"]
    for name, path in (("curation report", curated_layout.report_html_path(curated)),
                       ("pack report", packed_layout.report_html_path(packed)),
                       ("SFT pack report", packed_layout.report_html_path(os.path.join(out, "packed_sft")))):
        if os.path.exists(path):
            lines.append(f"  {name + ':':<18}{path}")
    if os.path.exists(packed_layout.manifest_path(packed)):
        first = min(packed_layout.read_manifest(packed).select(["key", "shard"]).to_pylist(), key=lambda r: r["key"])
        what = f"{first['shard']}:0"  # the first sequence written is entry 0 of its shard
        shown = render(trace(what, curated, packed)).splitlines()
        lines.append("  a packed sequence, traced back to its raw records (add --json for machines):")
        lines.append(f"    {_installed('vlmloom')} trace {what} --curated {curated} --packed {packed}")
        lines.extend(f"      {line}" if line else "" for line in shown[:trace_lines])
        if len(shown) > trace_lines:
            lines.append(f"      ... ({len(shown) - trace_lines} more lines)")
    runs = [d for d in ("train_pretrain", "train_sft") if os.path.isdir(os.path.join(out, d, "tensorboard"))]
    if runs:  # the trainer logs to RUN/tensorboard (trainer/metrics.py); --logdir OUT shows every run under it
        lines.append(f"  training curves ({', '.join(runs)}):")
        lines.append(f"    {_installed('tensorboard')} --logdir {out}")
    return "\n".join(lines)


def _installed(command: str) -> str:
    """`command` as this interpreter's environment installs it (.venv/bin/vlmloom after `make demo`)."""
    path = os.path.join(os.path.dirname(sys.executable), command)
    if not os.path.exists(path):
        return command
    relative = os.path.relpath(path)
    return relative if not relative.startswith("..") else path
