"""`vlmloom` command line: demo | demo-corpus | curate | pack | train | rlcs-passk | reward | report | inspect.

    vlmloom demo --output demo_out                       # corpus → curate → pack → train a tiny model
    vlmloom curate data/*.tar --output out --config job.yaml --set dedup.phash_max_distance=8 \
        --direct_num_workers=2 --direct_running_mode=multi_processing   # unknown --flags go to Beam
    vlmloom pack out --output packed --seq-len 8192 --set packer=greedy
    vlmloom train --config train.yaml --data packed --set steps=100
    vlmloom reward outputs.jsonl --config trainer/rewards/rewards.yaml --output scored.jsonl
    vlmloom inspect out

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

COMMANDS = {  # name -> "module:function(argv) -> exit code"
    "demo": "vlmloom.demo.run:main",
    "demo-corpus": "vlmloom.demo.corpus:main",
    "curate": "vlmloom.pipelines.cli:curate_main",
    "pack": "vlmloom.packing.cli:main",
    "train": "vlmloom.trainer.cli:main",
    "rlcs-passk": "vlmloom.trainer.cli:passk_main",
    "reward": "vlmloom.trainer.rewards.cli:main",
    "report": "vlmloom.pipelines.cli:report_main",
    "inspect": "vlmloom.pipelines.cli:inspect_main",
    "trace": "vlmloom.pipelines.trace:main",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = any(a in ("-v", "--verbose") for a in argv)
    argv = [a for a in argv if a not in ("-v", "--verbose")]
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    # Before the command's module (and so apache_beam) is imported: Beam warns at import time.
    configure_logging(verbose=verbose or wants_beam_logs(argv))
    module, function = COMMANDS[argv[0]].split(":")
    try:
        return getattr(importlib.import_module(module), function)(argv[1:])
    except ConfigError as exc:
        print(f"vlmloom {argv[0]}: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
