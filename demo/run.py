"""`vlmloom demo`: the whole system on the bundled demo corpus, offline, on a laptop CPU.

    vlmloom demo --output demo_out [--num-samples 2000] [--overwrite]

Steps: build the demo corpus → curate it with Beam (in-process DirectRunner) → pack into fixed-length
sequences → a few pre-training and SFT steps of a tiny GLM-4.1V with DeepSpeed on CPU → export.
Stages that need model weights the demo cannot ship (CLIP, recaptioning, the detector) are off; the
curate summary says how to turn them on.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time

from vlmloom.schemas.config import apply_overrides, load_yaml


def _config_path(name: str) -> str:
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", name)
    return here


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vlmloom demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="demo_out")
    parser.add_argument("--num-samples", type=int, default=2000)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--train-steps", type=int, default=8)
    parser.add_argument("--skip-train", action="store_true", help="stop after packing")
    args, beam_args = parser.parse_known_args(argv)

    from vlmloom.curation.demo_corpus import DemoCorpusConfig, build_demo_corpus
    from vlmloom.pipelines.curate import curate, load_config
    from vlmloom.pipelines.model_config import describe_disabled
    from vlmloom.pipelines.report import summary_table

    out = args.output
    if os.path.exists(out):
        if not args.overwrite:
            print(f"vlmloom demo: {out!r} exists; pass --overwrite to rebuild it")
            return 2
        shutil.rmtree(out)
    os.makedirs(out)
    t0 = time.time()
    corpus = os.path.join(out, "corpus")
    expected = build_demo_corpus(corpus, DemoCorpusConfig(num_samples=args.num_samples))
    print(f"[1/4] demo corpus: {expected['total_records']} tar records + {expected.get('manifest_records', 0)} "
          f"manifest rows in {time.time() - t0:.1f} s → {corpus}")

    data = load_yaml(_config_path("demo_curate.yaml"))
    data["inputs"] = [{"path": os.path.join(corpus, "tars", "*.tar"), "name": "demo_wds"},
                      {"path": os.path.join(corpus, "manifest.parquet"), "name": "demo_manifest"}]
    data["output"] = os.path.join(out, "curated")
    data = apply_overrides(data, demo_model_overrides(corpus))
    config = load_config(data)
    # OCR dominates the demo's curation time: two local processes unless Beam options were given
    beam_args = beam_args or ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    t1 = time.time()
    report = curate(config, beam_args)
    print(f"[2/4] curated in {time.time() - t1:.1f} s → {config.output}")
    print(summary_table(report))
    for line in describe_disabled(config.models):
        print(f"      {line}")

    from vlmloom.packing.cli import main as pack_main

    packed, packed_sft = os.path.join(out, "packed"), os.path.join(out, "packed_sft")
    t2 = time.time()
    rc = pack_main([config.output, "--output", packed, "--seq-len", str(args.seq_len)])
    if rc:
        return rc
    # the SFT set: only the long-CoT qa samples, same tokenizer so that the models agree
    rc = pack_main([config.output, "--output", packed_sft, "--seq-len", str(args.seq_len),
                    "--tokenizer", os.path.join(packed, "tokenizer"), "builder.kinds=[qa]", "builder.require_cot=true"])
    if rc:
        return rc
    print(f"[3/4] packed in {time.time() - t2:.1f} s → {packed} (pre-training), {packed_sft} (SFT)")
    if args.skip_train:
        return 0

    from vlmloom.trainer.cli import main as train_main

    t3 = time.time()
    pretrain_dir, sft_dir = os.path.join(out, "train_pretrain"), os.path.join(out, "train_sft")
    rc = train_main(["--config", _config_path("demo_train_pretrain.yaml"), "--data", packed,
                     "--output", pretrain_dir, f"steps={args.train_steps}"])
    if rc:
        return rc
    # SFT continues from the exported pre-trained model on the qa-only packed set.
    rc = train_main(["--config", _config_path("demo_train_sft.yaml"), "--data", packed_sft, "--output", sft_dir,
                     "--model", os.path.join(pretrain_dir, "hf_model"), f"steps={args.train_steps}"])
    if rc:
        return rc
    _print_losses(pretrain_dir, "pretrain")
    _print_losses(sft_dir, "sft")
    print(f"[4/4] trained in {time.time() - t3:.1f} s → {out}/train_pretrain, {out}/train_sft")
    print(f"demo done in {time.time() - t0:.1f} s")
    return 0


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
        "models.ocr.det_max_side=960",
        "models.grounding.enabled=true",
        "models.concepts.enabled=true",
        "models.contamination.enabled=true",
        f"models.contamination.benchmarks=[{json.dumps({'name': 'demo_bench', 'path': bench})}]",
    ]
