"""bench/gpu_suite.sh --cpu-smoke end to end: every part runs on CPU with tiny sizes and its figures reach the JSON
and the Markdown tables, so the one command a GPU session runs cannot rot between the sessions that have a GPU.

Not marked `gpu` or `slow`: CI must run it, it is the suite's only check without a device (~40 s on 2 idle cores).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ("a_attention", "b_train", "c_rlcs", "d_video")


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_suite")
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path_factory.mktemp("work"))}
    proc = subprocess.run(["bash", os.path.join(ROOT, "bench", "gpu_suite.sh"), "--cpu-smoke", str(out)], env=env,
                          capture_output=True, text=True, timeout=540)
    with open(out / "gpu_suite.json", encoding="utf-8") as fh:
        report = json.load(fh)
    return proc, out, report


def test_the_smoke_run_succeeds_and_leaves_what_the_device_tool_brings_back(suite):
    proc, out, report = suite
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert sorted(os.listdir(out)) == sorted(["gpu_suite.json"] + [f"{p}.md" for p in PARTS])  # ≤ 8 files
    assert report["mode"] == "cpu-smoke" and set(report["parts"]) == set(PARTS)
    versions = report["versions"]
    assert versions["cuda_available"] is False and versions["device"].startswith("cpu")
    for name in ("torch", "transformers", "deepspeed"):
        assert versions[name] and f"# {name}: {versions[name]}" in proc.stdout
    for part in PARTS:
        assert report["parts"][part]["budget_s"] > 0 and report["parts"][part]["seconds"] >= 0


def test_attention_part_records_the_kernel_against_masked_sdpa(suite):
    _, out, report = suite
    part = report["parts"]["a_attention"]
    assert part["status"] == "ok" and part["tests"]["passed"] >= 2 and part["tests"]["failed"] == 0
    rows = {(f["attention"], f["dtype"]): f for f in part["figures"]}
    assert set(rows) == {("vlmloom_varlen", "float32"), ("vlmloom_varlen", "bfloat16")}
    assert rows[("vlmloom_varlen", "float32")]["max_abs_logits_vs_sdpa"] < 1e-5
    bf16 = rows[("vlmloom_varlen", "bfloat16")]
    assert 0 < bf16["sdpa_max_abs_logits_vs_fp32"] and 0 <= bf16["abs_loss_vs_sdpa"] < 2e-2
    table = (out / "a_attention.md").read_text()
    assert "| cpu | vlmloom_varlen | bfloat16 | packed_rows | ok |" in table


def test_train_part_measures_packed_and_padded_per_attention(suite):
    _, out, report = suite
    part = report["parts"]["b_train"]
    assert part["status"] == "ok" and part["impls"] == ["sdpa", "vlmloom_varlen"]
    rows = {(r["attention"], r["layout"]): r for r in part["results"]}
    assert set(rows) == {(i, layout) for i in part["impls"] for layout in ("packed", "padded")}
    for (impl, layout), row in rows.items():
        assert row["tokens_per_s"] > 0 and row["mfu"] > 0 and row["peak_mem_gib"] > 0
        assert row["rows"] == (part["packed_rows"] if layout == "packed" else part["samples"])
        # the same samples both ways: the same real tokens, far more padding when padded
        assert row["tokens"] == rows[(impl, "packed")]["tokens"]
        assert row["gradient_checkpointing"] is False
    assert rows[("sdpa", "padded")]["padding_fraction"] > rows[("sdpa", "packed")]["padding_fraction"]
    assert set(part["packed_over_padded"]) == set(part["impls"]) and "MFU =" in part["mfu_formula"]
    assert "| vlmloom_varlen | padded | no | 12 |" in (out / "b_train.md").read_text()


def test_rlcs_part_times_rollout_reward_and_update(suite):
    _, out, report = suite
    part = report["parts"]["c_rlcs"]
    assert part["status"] == "ok" and len(part["iterations"]) == 2 and part["coin_flip_scores"] is True
    for key in ("rollout_tokens_per_s", "reward_scores_per_s", "update_tokens_per_s"):
        assert part["median"][key] > 0
    assert all(r["update_tokens"] > 0 for r in part["iterations"])  # coin-flip scores: every iteration updates
    assert "| median (after the first) |" in (out / "c_rlcs.md").read_text()


def test_video_part_runs_or_says_why_not(suite):
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from train_throughput import video_support

    _, out, report = suite
    part = report["parts"]["d_video"]
    supported, reason = video_support()
    if supported:
        assert part["status"] == "ok" and part["video"] is True and part["packed_rows"] >= 1
        assert {r["attention"] for r in part["results"]} == {"sdpa", "vlmloom_varlen"}
        assert all(r["layout"] == "packed" and r["tokens_per_s"] > 0 and r["mfu"] > 0 for r in part["results"])
        assert "| vlmloom_varlen | packed | no |" in (out / "d_video.md").read_text()
    else:
        assert part["status"] == "skipped" and part["reason"] == reason
        assert reason in (out / "d_video.md").read_text()
