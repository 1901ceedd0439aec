"""The GPU suite's report: each part's raw output (bench/gpu_suite.sh's work folder) → one JSON with every figure
and one Markdown table per part, printed as well.

    python bench/gpu_suite_report.py --work WORK --out OUTDIR --mode gpu|cpu-smoke --command "..." --budgets a=75,...

WORK holds versions.json, and per part P (a, b, c, d) P.status ("exit_code seconds"), P.log, and what the part
wrote: a_figures.jsonl + a_junit.xml (pytest), b.json, c.json, d.json (the benches' --json). A part is `ok`,
`skipped` (its JSON says so, with the reason), `failed` (non-zero exit; its figures so far are kept) or `timeout`
(exit 124/137: its time budget ran out). Failed and timed-out parts carry the tail of their log.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import xml.etree.ElementTree as ET

PARTS = {"a": "a_attention", "b": "b_train", "c": "c_rlcs", "d": "d_video"}
TITLES = {"a": "(a) packed attention against masked sdpa (pytest tests/test_train_attention.py)",
          "b": "(b) training throughput, packed vs padded (bench/train_throughput.py)",
          "c": "(c) RLCS throughput (bench/rlcs_throughput.py)",
          "d": "(d) a packed video batch (bench/train_throughput.py --video)"}
LOG_TAIL_CHARS = 3000


def read_json(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def junit_counts(path: str) -> dict | None:
    """passed/failed/skipped/errors of a pytest --junitxml file."""
    if not os.path.isfile(path):
        return None
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {"tests": 0, "failed": 0, "errors": 0, "skipped": 0}
    for suite in suites:
        counts["tests"] += int(suite.get("tests", 0))
        counts["failed"] += int(suite.get("failures", 0))
        counts["errors"] += int(suite.get("errors", 0))
        counts["skipped"] += int(suite.get("skipped", 0))
    counts["passed"] = counts["tests"] - counts["failed"] - counts["errors"] - counts["skipped"]
    return counts


def part_result(work: str, key: str, budget: float | None) -> dict:
    status_path = os.path.join(work, f"{key}.status")
    if not os.path.isfile(status_path):
        return {"status": "not_run", "budget_s": budget}
    exit_code, seconds = open(status_path).read().split()
    exit_code = int(exit_code)
    result: dict = {"exit_code": exit_code, "seconds": int(seconds), "budget_s": budget}
    if key == "a":
        result["tests"] = junit_counts(os.path.join(work, "a_junit.xml"))
        figures_path = os.path.join(work, "a_figures.jsonl")
        result["figures"] = ([json.loads(line) for line in open(figures_path) if line.strip()]
                             if os.path.isfile(figures_path) else [])
        own_status = None
    else:
        data = read_json(os.path.join(work, f"{key}.json")) or {}
        own_status = data.pop("status", None)
        result.update(data)
    if exit_code in (124, 137):
        result["status"] = "timeout"
    elif exit_code != 0:
        result["status"] = "failed"
    else:
        result["status"] = own_status or "ok"
    if result["status"] in ("failed", "timeout"):
        log_path = os.path.join(work, f"{key}.log")
        if os.path.isfile(log_path):
            with open(log_path, encoding="utf-8", errors="replace") as fh:
                result["log_tail"] = fh.read()[-LOG_TAIL_CHARS:]
    return result


def fmt(value, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def params_text(params) -> str:
    if not params:
        return "?"
    return f"{params / 1e9:.2f}B" if params >= 1e8 else f"{params / 1e6:.2f}M"


def header(key: str, part: dict, versions: dict) -> list[str]:
    lines = [f"## {TITLES[key]}", "",
             f"device: {versions.get('device')}; torch {versions.get('torch')} (CUDA {versions.get('cuda')}), "
             f"DeepSpeed {versions.get('deepspeed')}, transformers {versions.get('transformers')}, "
             f"flash-attn {versions.get('flash_attn') or 'not installed'}", "",
             f"status: **{part['status']}**"
             + (f" (exit {part['exit_code']} after {part['seconds']} s of a {part['budget_s']:.0f} s budget)"
                if "exit_code" in part else ""), ""]
    if part.get("reason"):
        lines += [f"reason: {part['reason']}", ""]
    return lines


def attention_table(part: dict) -> list[str]:
    lines = []
    tests = part.get("tests")
    if tests:
        lines += [f"tests: {tests['passed']} passed, {tests['failed']} failed, {tests['errors']} errors, "
                  f"{tests['skipped']} skipped", ""]
    lines += ["max |Δ| against transformers' masked sdpa on the same packed rows (block-diagonal mask from the text "
              "positions); `vs fp32` against masked sdpa in fp32, beside masked sdpa's own bf16 error.", "",
              "| device | attention | dtype | check | status | tokens (samples) | max abs Δ logits | abs Δ loss "
              "| max abs Δ logits vs fp32 | masked sdpa's own vs fp32 | grad cosine |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for f in part.get("figures", []):
        tokens = f"{f['tokens']} ({f['samples']})" if "tokens" in f else "-"
        status = f["status"] if f["status"] == "ok" else f"{f['status']}: {f.get('reason', '')}"
        lines.append(f"| {f['device']} | {f['attention']} | {f['dtype']} | {f.get('check', 'packed_rows')} | "
                     f"{status} | {tokens} | {fmt(f.get('max_abs_logits_vs_sdpa'))} | "
                     f"{fmt(f.get('abs_loss_vs_sdpa'))} | {fmt(f.get('max_abs_logits_vs_sdpa_fp32'))} | "
                     f"{fmt(f.get('sdpa_max_abs_logits_vs_fp32'))} | {fmt(f.get('grad_cosine_vs_sdpa'), '.6f')} |")
    return lines


def train_table(part: dict) -> list[str]:
    if not part.get("results") and "device" not in part:
        return []
    tps = part.get("tokens_per_sample", {})
    lines = [f"{part.get('device')}, {part.get('precision')}, ZeRO-{part.get('zero_stage')}, L={part.get('seq_len')}, "
             f"{params_text(part.get('params'))} parameters (random weights), {part.get('samples')} samples "
             f"(tokens/sample mean {fmt(tps.get('mean'), '.0f')}, median {fmt(tps.get('median'), '.0f')}, "
             f"max {tps.get('max')}) in {part.get('packed_rows')} packed rows"
             + ("" if part.get("video") else f" or {part.get('samples')} padded rows")
             + (f"; peak {part['peak_tflops']} TFLOP/s" if part.get("peak_tflops") else "; peak unknown (no MFU)")
             + (" (given on the command line: a nominal figure, MFU is not meaningful)"
                if part.get("peak_tflops_given") else ""), "",
             "| attention | layout | recompute | rows | tokens/s | step s | TFLOP/s | MFU | padding | peak mem GiB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in part.get("results", []):
        recompute = "yes" if r.get("gradient_checkpointing") else "no"
        if "error" in r:
            lines.append(f"| {r['attention']} | {r['layout']} | {recompute} | {r['error']} |||||||")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        lines.append(f"| {r['attention']} | {r['layout']} | {recompute} | {r['rows']} | {r['tokens_per_s']:.0f} "
                     f"| {r['step_s']:.3f} "
                     f"| {r['tflops']:.3g} | {mfu} | {r['padding_fraction']:.2f} | {r['peak_mem_gib']:.2f} |")
    ratios = part.get("packed_over_padded") or {}
    if ratios:
        lines += ["", "packed / padded tokens/s: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items())]
    lines += ["", f"tokens/s counts real tokens (padding excluded); recompute: gradient checkpointing (turned on "
                  f"after an out-of-memory row). {part.get('mfu_formula', '')}. "
                  f"Peak memory: {part.get('peak_memory', '-')}."]
    return lines


def rlcs_table(part: dict) -> list[str]:
    if not part.get("iterations"):
        return []
    lines = [f"{part.get('device')}, {params_text(part.get('params'))} parameters ({part.get('model')} "
             f"weights), {part.get('attention')}, {part.get('precision')}, ZeRO-{part.get('zero_stage')}, group "
             f"{part.get('group_size')} x {part.get('prompts_per_iteration')} prompts, max_new_tokens "
             f"{part.get('max_new_tokens')}, update rows of {part.get('seq_len')}"
             + ("; reward scores replaced by coin flips after real scoring (a random model fails the format gate)"
                if part.get("coin_flip_scores") else ""), "",
             "| iteration | prompts | rollout tokens | rollout tok/s | reward scores/s | update tokens | update tok/s "
             "| step s |", "|---|---|---|---|---|---|---|---|"]
    for r in part["iterations"]:
        lines.append(f"| {r['iteration']} | {r['prompts']} | {r['rollout_tokens']} | {r['rollout_tokens_per_s']:.0f} "
                     f"| {r['reward_scores_per_s']:.0f} | {r['update_tokens']} | {r['update_tokens_per_s']:.0f} "
                     f"| {r['step_s']:.2f} |")
    m = part.get("median", {})
    lines.append(f"| median (after the first) | | | {fmt(m.get('rollout_tokens_per_s'), '.0f')} | "
                 f"{fmt(m.get('reward_scores_per_s'), '.0f')} | | {fmt(m.get('update_tokens_per_s'), '.0f')} | |")
    return lines


def markdown(key: str, part: dict, versions: dict) -> str:
    lines = header(key, part, versions)
    lines += {"a": attention_table, "b": train_table, "c": rlcs_table, "d": train_table}[key](part)
    if part.get("log_tail"):
        lines += ["", "log tail:", "", "```", part["log_tail"][-1500:].rstrip(), "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--mode", required=True)
    parser.add_argument("--command", default="")
    parser.add_argument("--budgets", default="", help="a=75,b=225,...: seconds per part")
    parser.add_argument("--total-seconds", type=float, default=None)
    args = parser.parse_args(argv)
    budgets = {k: float(v) for k, v in (item.split("=") for item in args.budgets.split(",") if item)}
    versions = read_json(os.path.join(args.work, "versions.json")) or {}
    parts = {name: part_result(args.work, key, budgets.get(key)) for key, name in PARTS.items()}
    report = {"suite": "vlmloom GPU figures (issue 23)", "mode": args.mode, "command": args.command,
              "finished_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "total_s": args.total_seconds, "versions": versions, "parts": parts}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_suite.json"), "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2)
    for key, name in PARTS.items():
        text = markdown(key, parts[name], versions)
        with open(os.path.join(args.out, f"{name}.md"), "w", encoding="utf-8") as fh:
            fh.write(text)
        print(text)
    print("parts: " + ", ".join(f"{name} {part['status']}" for name, part in parts.items()))
    return 0 if all(p["status"] in ("ok", "skipped") for p in parts.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
