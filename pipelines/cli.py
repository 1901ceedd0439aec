"""Entry points of the Beam-side commands, run by the `vlmloom` dispatcher (vlmloom/cli/main.py):

    vlmloom curate data/*.tar --output out --config job.yaml --set dedup.phash_max_distance=8 \
        --direct_num_workers=2 --direct_running_mode=multi_processing   # unknown --flags go to Beam
    vlmloom report out
    vlmloom inspect out

Each parses its arguments, builds the config and calls one function.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from vlmloom.schemas.config import add_set_argument, apply_overrides, load_yaml


def curate_main(argv: list[str]) -> int:
    from vlmloom.pipelines.curate import curate, load_config
    from vlmloom.pipelines.report import summary_table
    from vlmloom.pipelines.sources import group_cli_paths

    parser = argparse.ArgumentParser(prog="vlmloom curate", description="Curate a multimodal corpus with Apache Beam.",
                                     allow_abbrev=False)  # unknown flags belong to Beam: never prefix-match them
    parser.add_argument("inputs", nargs="*", help="tar/parquet/jsonl files, globs or folders")
    parser.add_argument("--output", help="output directory")
    parser.add_argument("--config", help="job YAML")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="live per-stage counts on stderr (default: only when stdout is a terminal)")
    parser.add_argument("--chunk", type=int, metavar="N",
                        help="curate N input units (files, shards) per job, then dedup across chunks on metadata "
                             "and merge: memory bounded by the chunk (config key `chunk`)")
    add_set_argument(parser)
    args, beam_args = parser.parse_known_args(argv)
    data = apply_overrides(load_yaml(args.config), args.overrides)
    data.setdefault("inputs", [])
    data["inputs"] = list(data["inputs"]) + group_cli_paths(args.inputs)
    if args.output:
        data["output"] = args.output
    if args.overwrite:
        data["overwrite"] = True
    if args.chunk is not None:
        data["chunk"] = args.chunk
    config = load_config(data)
    report = curate(config, beam_args, progress=args.progress)
    print(summary_table(report))
    print(f"wrote {config.output}")
    return 0


def inspect_main(argv: list[str]) -> int:
    from vlmloom.pipelines.inspect_output import inspect_output

    parser = argparse.ArgumentParser(prog="vlmloom inspect", description="Print a curated/packed output's report and samples.")
    parser.add_argument("directory")
    parser.add_argument("--samples", type=int, default=5)
    args = parser.parse_args(argv)
    print(inspect_output(args.directory, args.samples))
    return 0


def report_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vlmloom report", description="Print a curated output's report.json.")
    parser.add_argument("directory")
    args = parser.parse_args(argv)
    from vlmloom.pipelines.files import BEAM_FILES
    from vlmloom.pipelines.report import summary_table
    from vlmloom.schemas import curated

    report: dict[str, Any] | None = curated.read_report(args.directory, BEAM_FILES)
    if report is None:
        print(f"vlmloom report: {curated.report_path(args.directory, BEAM_FILES)} does not exist "
              "(pass the directory `vlmloom curate --output` wrote)", file=sys.stderr)
        return 2
    print(summary_table(report))
    return 0


if __name__ == "__main__":  # `python -m vlmloom.pipelines.cli curate ...` = `vlmloom curate ...` (same logging set-up)
    from vlmloom.cli.main import main

    sys.exit(main(sys.argv[1:]))
