"""RLCS throughput per iteration: rollout tokens/s, reward scores/s, update tokens/s.

    DS_ACCELERATOR=cpu .venv/bin/python bench/rlcs_throughput.py                 # tiny GLM-4.1V on CPU
    DS_ACCELERATOR=cpu .venv/bin/python bench/rlcs_throughput.py --model TOY/sft/hf_model --kinds color \
        --colors red,green,blue,yellow                                           # the toy's SFT checkpoint
    .venv/bin/python bench/rlcs_throughput.py --json rlcs.json                  # with CUDA: the GLM-4.1V-shaped
                                                                                  model of train_throughput.py
Prompts are the generated image task (demo/rlcs_task.py); rewards the project's reward system (process pool).
With CUDA the model is bench/train_throughput.py's GPU_MODEL (random weights, bf16, ZeRO-2) except its vocabulary,
which is the task tokenizer's (~400 tokens: a random model must only sample ids its tokenizer can decode).

A random model fails the format gate on every rollout, so every group would be uninformative and no update would
run. Without `--model` (or with `--coin-flip-scores`), the reward system still scores every rollout (the work that
`reward scores/s` times) but its scores are then replaced by seeded coin flips, so groups are informative and the
update runs and is timed. With `--model` an SFT-ed checkpoint (bench/rlcs_toy.py leaves one in
WORKDIR/sft/hf_model, tokenizer included) is scored for real; `--kinds/--colors/--max-count` should then match that
toy run. `update tokens/s` counts the packed rows' real tokens over the step time minus rollout and reward time
(old log-probs and packing included). Medians skip the first iteration (warm-up) when there are several.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import statistics
import sys
import tempfile

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CPU_SIZES: dict = {}  # rlcs_task's tiny defaults


def gpu_sizes() -> dict:
    """train_throughput.GPU_MODEL without its vocabulary (the task tokenizer's replaces it)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from train_throughput import GPU_MODEL

    return {k: v for k, v in GPU_MODEL.items() if k != "vocab_size"}


def use_coin_flip_scores(seed: int) -> None:
    """Make the RLCS objective's in-process reward system replace each score it computed by a coin flip."""
    from vlmloom.trainer import rlcs

    scored_for_real = rlcs.LocalRewards

    class CoinFlipRewards(scored_for_real):
        def __init__(self, source):
            super().__init__(source)
            self.rng = random.Random(seed)

        def score(self, items):
            return [dataclasses.replace(r, score=float(self.rng.random() < 0.5)) for r in super().score(items)]

    rlcs.LocalRewards = CoinFlipRewards


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--batch-prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=0, help="default: 128 with CUDA, 32 on CPU")
    parser.add_argument("--seq-len", type=int, default=0, help="update rows (default: 4096 with CUDA, 1024 on CPU)")
    parser.add_argument("--zero-stage", type=int, default=2)
    parser.add_argument("--attn", default="auto", help="attention implementation (auto: vlmloom_varlen on CUDA "
                                                       "without flash_attn; sdpa on CPU)")
    parser.add_argument("--model", default="", help="a model directory with its tokenizer (e.g. the toy's SFT "
                                                    "checkpoint); default: a random tiny (CPU) or GPU-sized model")
    parser.add_argument("--coin-flip-scores", action="store_true",
                        help="replace reward scores by coin flips (default without --model)")
    parser.add_argument("--kinds", default="color,count")
    parser.add_argument("--colors", default="red,green,blue,yellow")
    parser.add_argument("--max-count", type=int, default=4)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import logging

    logging.disable(logging.WARNING)
    from vlmloom.demo import rlcs_task
    from vlmloom.packing.tokenizer import train_tokenizer
    from vlmloom.schemas.config import build_config
    from vlmloom.trainer.config import TrainConfig
    from vlmloom.trainer.loop import train
    from vlmloom.trainer.model import special_token_ids

    max_new = args.max_new_tokens or (128 if cuda else 32)
    seq_len = args.seq_len or (4096 if cuda else 1024)
    work = tempfile.mkdtemp(prefix="rlcs_tput_")
    items = rlcs_task.make_task(64, seed=0, kinds=tuple(args.kinds.split(",")), colors=tuple(args.colors.split(",")),
                                max_count=args.max_count)
    if args.model:
        model, tokenizer_dir = args.model, args.model
    else:  # built in memory from sizes: a GPU-sized random checkpoint is not worth writing to disk and reading back
        tokenizer_dir = os.path.join(work, "tokenizer")
        vocab = len(train_tokenizer(rlcs_task.tokenizer_texts(items), tokenizer_dir, vocab_size=400))
        model = {**special_token_ids(tokenizer_dir, vocab), "vocab_size": vocab, **(gpu_sizes() if cuda else CPU_SIZES)}
    coin_flips = args.coin_flip_scores or not args.model
    if coin_flips:
        use_coin_flip_scores(seed=0)
    config = build_config(TrainConfig, {
        "mode": "rlcs", "model": model, "output": os.path.join(work, "run"), "steps": args.iterations,
        "lr": 1e-5, "micro_batch": 1, "zero_stage": args.zero_stage, "attn_implementation": args.attn,
        "progress": False, "tensorboard": False, "export": False,
        "rlcs": {"group_size": args.group_size, "prompts_per_iteration": args.batch_prompts, "tokenizer": tokenizer_dir,
                 "max_new_tokens": max_new, "max_think_tokens": max_new, "dynamic_sampling": False,
                 "force_answer_tokens": 8, "seq_len": seq_len, "generation_batch": 64,
                 "rewards": rlcs_task.REWARDS}})
    print(f"model: {args.model or 'random, ' + ('GPU sizes' if cuda else 'tiny')}")
    summary = train(config, source=rlcs_task.rl_prompts(items))
    steps = [json.loads(line) for line in open(summary["metrics"])]
    device = torch.cuda.get_device_name() if cuda else "cpu"
    with open(os.path.join(config.output, "run.json"), encoding="utf-8") as fh:
        params = json.load(fh)["model"]["parameters"]
    print(f"\nRLCS throughput, {device}, {'given model' if args.model else 'random model'}"
          f"{', coin-flip scores' if coin_flips else ''}, group {args.group_size} x {args.batch_prompts} prompts, "
          f"max_new_tokens {max_new}, {summary['attn_implementation']}, {summary['precision']}, "
          f"{params / 1e9:.2f}B params")
    print(f"{'it':>3} {'prompts':>7} {'rollout tok':>11} {'rollout tok/s':>13} {'scores/s':>9} {'update tok':>10} "
          f"{'update tok/s':>12} {'step s':>7}")
    rows = []
    for s in steps:
        update_s = s["step_time_s"] - s["rollout_seconds"] - s["scoring_seconds"]
        row = {"iteration": s["iteration"], "prompts": s["prompts_rolled_out"], "rollout_tokens": s["rollout_tokens"],
               "rollout_tokens_per_s": s["rollout_tokens_per_s"], "reward_scores_per_s": s["reward_scores_per_s"],
               "update_tokens": s["tokens"], "update_tokens_per_s": s["tokens"] / max(update_s, 1e-9),
               "step_s": s["step_time_s"]}
        rows.append(row)
        print(f"{row['iteration']:>3} {row['prompts']:>7} {row['rollout_tokens']:>11} "
              f"{row['rollout_tokens_per_s']:>13.0f} {row['reward_scores_per_s']:>9.0f} {row['update_tokens']:>10} "
              f"{row['update_tokens_per_s']:>12.0f} {row['step_s']:>7.2f}")
    timed = rows[1:] if len(rows) > 1 else rows
    medians = {key: statistics.median(r[key] for r in timed)
               for key in ("rollout_tokens_per_s", "reward_scores_per_s", "update_tokens_per_s")}
    print("median " + ", ".join(f"{k} {v:.0f}" for k, v in medians.items()))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"status": "ok", "device": device, "model": args.model or "random", "params": params,
                       "attention": summary["attn_implementation"], "precision": summary["precision"],
                       "zero_stage": args.zero_stage, "coin_flip_scores": coin_flips, "group_size": args.group_size,
                       "prompts_per_iteration": args.batch_prompts, "max_new_tokens": max_new, "seq_len": seq_len,
                       "iterations": rows, "median": medians}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
