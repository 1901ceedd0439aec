"""`vlmloom train`: train a GLM-4.1V-style model on packed shards with DeepSpeed.

CPU (one process, gloo, fp32):
    DS_ACCELERATOR=cpu vlmloom train --config demo/configs/demo_train_pretrain.yaml --data demo_out/packed --output runs/tiny
GPU, one node (bf16, ZeRO from the config):
    deepspeed --num_gpus 8 --module vlmloom.trainer.cli --config train.yaml --data /data/packed --set zero_stage=2
    (or: torchrun --nproc_per_node 8 -m vlmloom.trainer.cli --config train.yaml ...)
Any config key can be overridden with `--set KEY=VALUE` (repeatable, e.g. `--set steps=100 --set lr=2e-5`).
RLCS (`mode: rlcs` and an `rlcs:` section, see demo/configs/rlcs_example.yaml):
    DS_ACCELERATOR=cpu vlmloom train --config rl.yaml --model runs/sft/hf_model
Offline pass@k difficulty for the curriculum (writes JSONL id → pass rate):
    vlmloom rlcs-passk --config rl.yaml --k 8 --output pass_rates.jsonl
"""
from __future__ import annotations

import argparse
import json
import sys

from vlmloom.schemas.config import ConfigError, add_set_argument, apply_overrides, build_config, load_yaml
from vlmloom.trainer.config import TrainConfig


def parse_args(argv: list[str]) -> TrainConfig:
    parser = argparse.ArgumentParser(prog="vlmloom train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="train.yaml (keys of vlmloom.trainer.config.TrainConfig)")
    parser.add_argument("--data", action="append", help="packed directory (repeatable); overrides `data`")
    parser.add_argument("--output", help="run directory; overrides `output`")
    parser.add_argument("--model", help="checkpoint directory; overrides `model`")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by `deepspeed`
    add_set_argument(parser)
    # bare KEY=VALUE, the older spelling of --set, still accepted: train takes no positional paths to confuse
    parser.add_argument("bare_overrides", nargs="*", metavar="KEY=VALUE", help=argparse.SUPPRESS)
    args = parser.parse_intermixed_args(argv)
    data = load_yaml(args.config)
    if args.data:
        data["data"] = args.data
    if args.output:
        data["output"] = args.output
    if args.model:
        data["model"] = args.model
    return build_config(TrainConfig, apply_overrides(data, args.overrides + args.bare_overrides))


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_args(sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        print(f"vlmloom train: {exc}", file=sys.stderr)
        return 2
    from vlmloom.trainer.loop import train

    summary = train(config)
    print(json.dumps({k: v for k, v in summary.items() if k != "losses"}, indent=2))
    return 0


def passk_main(argv: list[str] | None = None) -> int:
    """`vlmloom rlcs-passk --config rl.yaml --output pass_rates.jsonl [--k 8] [KEY=VALUE ...]`."""
    parser = argparse.ArgumentParser(prog="vlmloom rlcs-passk",
                                     description="pass@k per RL prompt with a given model (curriculum difficulty)")
    parser.add_argument("--config", required=True, help="an RLCS train.yaml (model, rlcs.prompts, rlcs.rewards)")
    parser.add_argument("--output", required=True, help="pass-rate JSONL to write")
    parser.add_argument("--k", type=int, default=8, help="rollouts per prompt")
    parser.add_argument("--model", help="checkpoint directory; overrides `model`")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides")
    args = parser.parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    try:
        data = load_yaml(args.config)
        if args.model:
            data["model"] = args.model
        config = build_config(TrainConfig, {**apply_overrides(data, args.overrides), "mode": "rlcs"})
    except ConfigError as exc:
        print(f"vlmloom rlcs-passk: {exc}", file=sys.stderr)
        return 2
    from vlmloom.trainer.rlcs import compute_pass_rates

    print(json.dumps(compute_pass_rates(config, args.output, k=args.k), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
