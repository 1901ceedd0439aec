"""`vlmloom` command line: demo | demo-corpus | curate | pack | train | rlcs-passk | reward | report | inspect.

    vlmloom demo --output demo_out                       # corpus → curate → pack → train a tiny model
    vlmloom curate data/*.tar --output out --config job.yaml --set dedup.phash_max_distance=8 \
        --direct_num_workers=2 --direct_running_mode=multi_processing   # unknown --flags go to Beam
    vlmloom pack out --output packed --seq-len 8192
    vlmloom train --config train.yaml --data packed
    vlmloom inspect out

Entry points parse, build a config and call one function; `pack` and `train` are handed to their
own modules' `main(argv)` so this file stays free of torch/deepspeed imports.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from vlmloom.schemas.config import ConfigError, apply_overrides, load_yaml


def _curate(argv: list[str]) -> int:
    from vlmloom.pipelines.curate import curate, load_config
    from vlmloom.pipelines.report import summary_table

    parser = argparse.ArgumentParser(prog="vlmloom curate", description="Curate a multimodal corpus with Apache Beam.",
                                     allow_abbrev=False)  # unknown flags belong to Beam: never prefix-match them
    parser.add_argument("inputs", nargs="*", help="tar/parquet/jsonl files, globs or folders")
    parser.add_argument("--output", help="output directory")
    parser.add_argument("--config", help="job YAML")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set heuristics.min_side=128 (repeatable)")
    args, beam_args = parser.parse_known_args(argv)
    data = apply_overrides(load_yaml(args.config), args.overrides)
    data.setdefault("inputs", [])
    data["inputs"] = list(data["inputs"]) + [{"path": p} for p in args.inputs]
    if args.output:
        data["output"] = args.output
    if args.overwrite:
        data["overwrite"] = True
    config = load_config(data)
    report = curate(config, beam_args)
    print(summary_table(report))
    print(f"wrote {config.output}")
    return 0


def _inspect(argv: list[str]) -> int:
    from vlmloom.pipelines.inspect import inspect_output

    parser = argparse.ArgumentParser(prog="vlmloom inspect", description="Print a curated/packed output's report and samples.")
    parser.add_argument("directory")
    parser.add_argument("--samples", type=int, default=5)
    args = parser.parse_args(argv)
    print(inspect_output(args.directory, args.samples))
    return 0


def _report(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vlmloom report", description="Print a curated output's report.json.")
    parser.add_argument("directory")
    args = parser.parse_args(argv)
    from vlmloom.pipelines.report import summary_table

    with open(f"{args.directory}/report.json", encoding="utf-8") as fh:
        report: dict[str, Any] = json.load(fh)
    print(summary_table(report))
    return 0


def _demo_corpus(argv: list[str]) -> int:
    from vlmloom.curation.demo_corpus import DemoCorpusConfig, build_demo_corpus

    parser = argparse.ArgumentParser(prog="vlmloom demo-corpus", description="Build the deterministic demo corpus.")
    parser.add_argument("output")
    parser.add_argument("--num-samples", type=int, default=DemoCorpusConfig().num_samples)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    expected = build_demo_corpus(args.output, DemoCorpusConfig(num_samples=args.num_samples, seed=args.seed))
    print(f"wrote {args.output}: {expected['total_records']} records in tars, "
          f"{expected.get('manifest_records', 0)} manifest rows")
    return 0


def _demo(argv: list[str]) -> int:
    from vlmloom.pipelines.demo import main as demo_main

    return demo_main(argv)


def _pack(argv: list[str]) -> int:
    from vlmloom.packing.cli import main as pack_main

    return pack_main(argv)


def _reward(argv: list[str]) -> int:
    from vlmloom.trainer.rewards.cli import main as reward_main

    return reward_main(argv)


def _train(argv: list[str]) -> int:
    from vlmloom.trainer.cli import main as train_main

    return train_main(argv)


def _rlcs_passk(argv: list[str]) -> int:
    from vlmloom.trainer.cli import passk_main

    return passk_main(argv)


COMMANDS = {"demo": _demo, "demo-corpus": _demo_corpus, "curate": _curate, "pack": _pack, "train": _train,
            "report": _report, "inspect": _inspect, "reward": _reward,
            "rlcs-passk": _rlcs_passk}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip())
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    try:
        return COMMANDS[argv[0]](argv[1:])
    except ConfigError as exc:
        print(f"vlmloom {argv[0]}: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
