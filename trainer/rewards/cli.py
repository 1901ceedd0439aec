"""`vlmloom reward`: score a JSONL file of model outputs with the reward system.

    vlmloom reward outputs.jsonl                                   # default routes and params, summary only
    vlmloom reward outputs.jsonl --config rewards.yaml --output scored.jsonl --set workers=4

Input rows: `id`, `domain`, `response` (the full model output, tags included), `answer` (ground truth; for
`choice` the option letter with `options` a list of option texts; for `grounding` a list of [x1, y1, x2, y2]
boxes in 0–1000 coordinates), optional `meta`. Output rows (same order): `id`, `score`, `reason`, plus
`verifier` and `format_ok`. A row that is not valid JSON or lacks a field is kept as an output row with score 0
and reason `bad_input_row` (also a domain no verifier is routed to; nothing lost). A per-domain summary (count, mean score, reasons) ends the run.
The output is written to a temporary file and renamed, so it is complete or absent.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from typing import Any, Iterable

from vlmloom.schemas.config import ConfigError, apply_overrides, load_yaml
from vlmloom.trainer.rewards.base import RewardItem, RewardResult
from vlmloom.trainer.rewards.config import load_reward_config
from vlmloom.trainer.rewards.system import RewardSystem

BAD_INPUT_ROW = "bad_input_row"
BATCH = 512  # rows scored per score_batch call: bounded memory on large files


def _item(line_no: int, line: str) -> RewardItem | tuple[str, str]:
    """A RewardItem, or (id, error) for a row that cannot be scored."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        return f"line{line_no}", f"line {line_no}: not JSON ({exc})"
    if not isinstance(row, dict):
        return f"line{line_no}", f"line {line_no}: not an object"
    key = str(row.get("id", f"line{line_no}"))
    missing = [f for f in ("domain", "response", "answer") if f not in row]
    if missing:
        return key, f"line {line_no}: missing {', '.join(missing)}"
    options = row.get("options")
    if options is not None and not isinstance(options, list):
        return key, f"line {line_no}: options must be a list of option texts"
    return RewardItem(id=key, domain=str(row["domain"]), response=row["response"], answer=row["answer"],
                      options=[str(o) for o in options] if options is not None else None, meta=row.get("meta"))


def _routable(entry: RewardItem | tuple[str, str], system: RewardSystem) -> RewardItem | tuple[str, str]:
    if isinstance(entry, RewardItem):
        try:
            system.route(entry.domain)
        except KeyError as exc:
            return entry.id, str(exc).strip("'\"")
    return entry


def _batches(lines: Iterable[str]) -> Iterable[list[tuple[int, str]]]:
    batch: list[tuple[int, str]] = []
    for line_no, line in enumerate(lines, 1):
        if line.strip():
            batch.append((line_no, line))
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def score_file(path: str, system: RewardSystem, out: Any | None) -> dict[str, dict[str, Any]]:
    """Score every row of `path`, write result rows to `out`; returns the per-domain summary."""
    summary: dict[str, dict[str, Any]] = defaultdict(lambda: {"count": 0, "score_sum": 0.0, "reasons": defaultdict(int)})
    with open(path, encoding="utf-8") as fh:
        for batch in _batches(fh):
            parsed = [_routable(_item(n, line), system) for n, line in batch]
            items = [p for p in parsed if isinstance(p, RewardItem)]
            scored = iter(system.score_batch(items))
            for entry in parsed:
                if isinstance(entry, RewardItem):
                    result: RewardResult = next(scored)
                    row = {"id": result.id, "score": result.score, "reason": result.reason,
                           "verifier": result.verifier, "format_ok": result.format_ok}
                    domain = result.domain
                else:
                    key, error = entry
                    print(f"vlmloom reward: {error}", file=sys.stderr)
                    row = {"id": key, "score": 0.0, "reason": BAD_INPUT_ROW, "verifier": "", "format_ok": False}
                    domain = "(bad rows)"
                if out is not None:
                    out.write(json.dumps(row, ensure_ascii=False) + "\n")
                s = summary[domain]
                s["count"] += 1
                s["score_sum"] += row["score"]
                s["reasons"][row["reason"]] += 1
    return {d: {"count": s["count"], "mean_score": s["score_sum"] / s["count"], "reasons": dict(s["reasons"])}
            for d, s in sorted(summary.items())}


def summary_table(summary: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'domain':<14}{'count':>7}{'mean':>8}  reasons"]
    for domain, s in summary.items():
        reasons = ", ".join(f"{r}={n}" for r, n in sorted(s["reasons"].items(), key=lambda kv: (-kv[1], kv[0])))
        lines.append(f"{domain:<14}{s['count']:>7}{s['mean_score']:>8.3f}  {reasons}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vlmloom reward", description="Score model outputs with the reward system.")
    parser.add_argument("input", help="JSONL with id, domain, response, answer (+ options, meta)")
    parser.add_argument("--config", help="rewards YAML (a whole file or one with a top-level `rewards:` section)")
    parser.add_argument("--output", help="JSONL of id, score, reason (+ verifier, format_ok)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set workers=0 (repeatable)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    args = parser.parse_args(argv)
    data = load_yaml(args.config)
    if set(data) == {"rewards"}:
        data = data["rewards"] or {}
    config = load_reward_config(apply_overrides(data, args.overrides))
    if args.output and os.path.exists(args.output) and not args.overwrite:
        raise ConfigError(f"--output {args.output} exists: pass --overwrite to replace it")
    tmp = f"{args.output}.tmp-{os.getpid()}" if args.output else None
    try:
        with RewardSystem(config) as system:
            if tmp:
                with open(tmp, "w", encoding="utf-8") as out:
                    summary = score_file(args.input, system, out)
                os.replace(tmp, args.output)
            else:
                summary = score_file(args.input, system, None)
    finally:
        if tmp and os.path.exists(tmp):
            os.remove(tmp)
    print(summary_table(summary))
    if args.output:
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
