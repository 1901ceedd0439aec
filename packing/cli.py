"""`vlmloom pack`: curated directories → packed shards (CPU only; no GPU is involved at this step).

    vlmloom pack demo_out/curated --output demo_out/packed --seq-len 8192
    vlmloom pack captions/ sft/ --output packed/ --seq-len 32768 --recipe recipe.yaml \\
        --tokenizer /models/GLM-4.1V-9B-Thinking --set window=65536 --set balance.world_size=64

Flags override keys of --config (a PackConfig YAML); `--set KEY=VALUE` (repeatable) overrides anything.
"""
from __future__ import annotations

import argparse
import sys

from vlmloom.schemas.config import ConfigError, add_set_argument, apply_overrides, build_config, load_yaml

from .curated import CuratedDirError
from .pack import PackConfig, pack


def parse_args(argv: list[str]) -> tuple[PackConfig, bool | None]:
    """The PackConfig and the --progress choice."""
    parser = argparse.ArgumentParser(prog="vlmloom pack", description=__doc__.split("\n")[0])
    parser.add_argument("inputs", nargs="*", metavar="CURATED_DIR")
    parser.add_argument("--output", "-o", help="packed directory to create")
    parser.add_argument("--seq-len", type=int, help="tokens per packed sequence (default 8192)")
    parser.add_argument("--config", help="PackConfig YAML")
    parser.add_argument("--recipe", help="mixture recipe YAML (sources with weight or token_share)")
    parser.add_argument("--tokenizer", help="tokenizer directory (default: train the demo tokenizer)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bars on stderr (default: only when stdout is a terminal)")
    add_set_argument(parser)
    ns = parser.parse_intermixed_args(argv)
    data = load_yaml(ns.config)
    if ns.recipe:
        data["recipe"] = load_yaml(ns.recipe)
    if ns.inputs:
        data["inputs"] = ns.inputs
    for key, value in (("output", ns.output), ("seq_len", ns.seq_len), ("tokenizer", ns.tokenizer)):
        if value is not None:
            data[key] = value
    if ns.overwrite:
        data["overwrite"] = True
    return build_config(PackConfig, apply_overrides(data, ns.overrides)), ns.progress


def parse_config(argv: list[str]) -> PackConfig:
    return parse_args(argv)[0]


def _counts(counts: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "none"


def summary(report: dict, output: str) -> str:
    lines = [
        f"packed {report['samples_packed']} samples into {report['sequences']} sequences of {report['seq_len']} "
        f"tokens ({report['shards']} shards) at {output}",
        f"  fill efficiency {100 * report['fill_efficiency']:.3f}%  (lower bound {report['lower_bound_sequences']} "
        f"sequences); label tokens {report['label_tokens']}; truncated {report['truncated']}",
        f"  dropped {report['dropped']}: " + (", ".join(f"{k}={v}" for k, v in report["dropped_by_reason"].items())
                                               or "none"),
    ]
    split = report.get("split")
    if split and split["documents"]:
        lines.append(f"  long documents split: {split['documents']} into {split['parts']} parts (KEY#p0, KEY#p1, …)")
    r = report.get("rendering")
    if r:
        lines.append(f"  rendered as chat: {_counts(r['chat'])}; as documents: {_counts(r['document'])}")
        if r["turns_unusable"] or r["text_left_out"] or r["boxes_left_out"]:
            lines.append(f"  chat turns unusable (trained as documents): {_counts(r['turns_unusable'])}; "
                         f"left out of chat turns: "
                         f"{r['text_left_out']} texts, {r['boxes_left_out']} boxes")
    for name, s in report["sources"].items():
        target = f", target {s['target_share']:.3f}" if s["target_share"] is not None else ""
        lines.append(f"  source {name}: {s['samples_used']} samples used of {s['usable']} usable, x{s['multiplier']:.3f},"
                     f" tokens {s['tokens_used']} = {100 * s['realised_share']:.2f}%{target}")
    b = report["balance"]
    if b["world_size"] > 1:
        lines.append(f"  balance over {b['world_size']} ranks: max/mean step cost {b['before']['mean_max_over_mean']}"
                     f" -> {b['after']['mean_max_over_mean']} (worst {b['before']['worst_max_over_mean']} -> "
                     f"{b['after']['worst_max_over_mean']})")
    lines.append(f"  recipe hash {report['recipe_hash']}, config hash {report['config_hash']}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    try:
        config, progress = parse_args(argv)
        report = pack(config, progress)
    except (ConfigError, CuratedDirError) as exc:
        print(f"vlmloom pack: {exc}", file=sys.stderr)
        return 2
    print(summary(report, config.output))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
