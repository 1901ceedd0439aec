"""RLCS throughput per iteration: rollout tokens/s, reward scores/s, update tokens/s.

    DS_ACCELERATOR=cpu .venv/bin/python bench/rlcs_throughput.py                 # tiny GLM-4.1V on CPU
    DS_ACCELERATOR=cpu .venv/bin/python bench/rlcs_throughput.py --model TOY/sft/hf_model --kinds color \
        --colors red,green,blue,yellow                                           # the toy's SFT checkpoint
    .venv/bin/python bench/rlcs_throughput.py --iterations 5                    # with CUDA: a ~1.5B GLM-4.1V-shaped
                                                                                  model (random weights, bf16)
Prompts are the generated image task (demo/rlcs_task.py); rewards the project's reward system (process pool).
A random model fails the format gate on every rollout, so every group is uninformative and no update runs
(update tokens/s 0): pass `--model` with an SFT-ed checkpoint (bench/rlcs_toy.py leaves one in WORKDIR/sft/hf_model,
tokenizer included) to time the update too; `--kinds/--colors/--max-count` should then match that toy run.
`update tokens/s` counts the packed rows' real tokens over the time of the policy update (old log-probs and
packing included), i.e. the step time minus rollout and reward time.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# ~1.5B parameters in GLM-4.1V's shape (the 9B has hidden 4096, 40 layers, a 24-block 1536-wide ViT).
GPU_SIZES = {"hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 24, "num_attention_heads": 16,
             "num_key_value_heads": 2, "vision_hidden_size": 1024, "vision_depth": 12, "vision_heads": 16,
             "vision_intermediate_size": 4096}


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--batch-prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--model", default="", help="a model directory with its tokenizer (e.g. the toy's SFT "
                                                    "checkpoint); default: a random tiny (CPU) or ~1.5B (CUDA) model")
    parser.add_argument("--kinds", default="color,count")
    parser.add_argument("--colors", default="red,green,blue,yellow")
    parser.add_argument("--max-count", type=int, default=4)
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import logging

    logging.disable(logging.WARNING)
    from vlmloom.demo import rlcs_task
    from vlmloom.schemas.config import build_config
    from vlmloom.trainer.config import TrainConfig
    from vlmloom.trainer.loop import train

    work = tempfile.mkdtemp(prefix="rlcs_tput_")
    items = rlcs_task.make_task(64, seed=0, kinds=tuple(args.kinds.split(",")), colors=tuple(args.colors.split(",")),
                                max_count=args.max_count)
    model_dir = args.model or rlcs_task.build_tokenizer_and_model(work, items, **(GPU_SIZES if cuda else {}))
    config = build_config(TrainConfig, {
        "mode": "rlcs", "model": model_dir, "output": os.path.join(work, "run"), "steps": args.iterations,
        "lr": 1e-5, "micro_batch": 1, "progress": False, "tensorboard": False, "export": False,
        "rlcs": {"group_size": args.group_size, "prompts_per_iteration": args.batch_prompts,
                 "max_new_tokens": args.max_new_tokens, "max_think_tokens": args.max_new_tokens,
                 "force_answer_tokens": 8, "seq_len": 1024, "generation_batch": 64,
                 "rewards": rlcs_task.REWARDS}})
    print(f"model: {model_dir}")
    summary = train(config, source=rlcs_task.rl_prompts(items))
    steps = [json.loads(line) for line in open(summary["metrics"])]
    device = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"\nRLCS throughput, {device}, {'given model' if args.model else 'random model'}, "
          f"group {args.group_size} x {args.batch_prompts} prompts, max_new_tokens {args.max_new_tokens}")
    print(f"{'it':>3} {'prompts':>7} {'rollout tok':>11} {'rollout tok/s':>13} {'scores/s':>9} {'update tok':>10} "
          f"{'update tok/s':>12} {'step s':>7}")
    for s in steps:
        update_s = s["step_time_s"] - s["rollout_seconds"] - s["scoring_seconds"]
        print(f"{s['iteration']:>3} {s['prompts_rolled_out']:>7} {s['rollout_tokens']:>11} "
              f"{s['rollout_tokens_per_s']:>13.0f} {s['reward_scores_per_s']:>9.0f} {s['tokens']:>10} "
              f"{s['tokens'] / max(update_s, 1e-9):>12.0f} {s['step_time_s']:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
