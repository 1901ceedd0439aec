"""`vlmloom` command line; `vlmloom --help` lists every sub-command of COMMANDS (the one table).

    vlmloom demo --output demo_out                       # corpus → curate → pack → train a tiny model
    vlmloom curate data/*.tar --output out --config job.yaml --set dedup.phash_max_distance=8 \\
        --direct_num_workers=2 --direct_running_mode=multi_processing   # unknown --flags go to Beam
    vlmloom pack out --output packed --seq-len 8192 --set packer=greedy
    vlmloom train --config train.yaml --data packed --set steps=100
    vlmloom reward outputs.jsonl --config trainer/rewards/rewards.yaml --output scored.jsonl
    vlmloom inspect out
    vlmloom trace KEY --curated out --packed packed

Quiet by default: vlmloom's own lines and real problems only. `-v`/`--verbose` (anywhere on the line) brings
Beam's own logging back; so does any of Beam's log-level options (`--default_sdk_harness_log_level=INFO`).

Every command takes config overrides as `--set KEY=VALUE` (repeatable). This module is only the table: each
sub-command's `main(argv)` lives in the package it runs and is imported when chosen, so `vlmloom curate`
never imports torch or deepspeed and no library package imports another's entry point.
"""
from __future__ import annotations

import importlib
import sys

from vlmloom.schemas.config import ConfigError
from vlmloom.schemas.console import configure_logging, wants_beam_logs

COMMANDS = {  # name -> ("module:function(argv) -> exit code", what it does, for --help)
    "demo": ("vlmloom.demo.run:main", "demo corpus -> curate -> pack -> train a tiny model, offline"),
    "demo-corpus": ("vlmloom.demo.corpus:main", "write the demo corpus (webdataset tars with planted problems)"),
    "curate": ("vlmloom.pipelines.cli:curate_main", "raw inputs -> curated shards, manifest/, rejected/, report"),
    "pack": ("vlmloom.packing.cli:main", "curated directories -> fixed-length packed shards"),
    "train": ("vlmloom.trainer.cli:main", "train on packed shards with DeepSpeed (pretrain, sft, rlcs)"),
    "rlcs-passk": ("vlmloom.trainer.cli:passk_main", "pass@k per RL prompt with a given model (curriculum difficulty)"),
    "reward": ("vlmloom.trainer.rewards.cli:main", "score a JSONL of model outputs with the verifiers"),
    "report": ("vlmloom.pipelines.cli:report_main", "print the summary of a curated output's report.json"),
    "inspect": ("vlmloom.pipelines.cli:inspect_main", "report, table sizes and a few samples of an output"),
    "trace": ("vlmloom.pipelines.trace:main", "one record's history: raw input, every decision, packed place"),
}


def usage() -> str:
    """The module docstring with the command table, built from COMMANDS so that no command goes unlisted."""
    width = max(map(len, COMMANDS))
    table = "\n".join(f"    {name:<{width}}  {about}" for name, (_, about) in COMMANDS.items())
    return f"usage: vlmloom COMMAND [ARGS] [-v]   (vlmloom COMMAND --help for its options)\n\ncommands:\n{table}\n\n" \
        + __doc__.strip()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = any(a in ("-v", "--verbose") for a in argv)
    argv = [a for a in argv if a not in ("-v", "--verbose")]
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(usage())
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    # Before the command's module (and so apache_beam) is imported: Beam warns at import time.
    configure_logging(verbose=verbose or wants_beam_logs(argv))
    module, function = COMMANDS[argv[0]][0].split(":")
    try:
        return getattr(importlib.import_module(module), function)(argv[1:])
    except ConfigError as exc:
        print(f"vlmloom {argv[0]}: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
