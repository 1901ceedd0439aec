"""The demo's last stage: a short RLCS run on the demo corpus's QA items, printing reward per domain.

    run_rlcs_demo(curated_dir, sft_model_dir, output) -> summary
        curated_dir     the demo's curated output (qa samples with answer + domain math/chart, one image each)
        sft_model_dir   the SFT stage's exported hf_model (weights + tokenizer)
        output          run directory (metrics.jsonl, checkpoints, summary.json)

Config: demo/configs/demo_rlcs.yaml (a few iterations, small groups, short responses: a tiny model on CPU).
CLI equivalent:  vlmloom train --config demo/configs/demo_rlcs.yaml --model SFT/hf_model --set rlcs.prompts=[CURATED]
"""
from __future__ import annotations

import importlib.resources
from typing import Any

DEMO_CONFIG = str(importlib.resources.files("vlmloom.demo").joinpath("configs", "demo_rlcs.yaml"))


def run_rlcs_demo(curated_dir: str, sft_model_dir: str, output: str, *, config_path: str = DEMO_CONFIG,
                  overrides: dict[str, Any] | None = None, verbose: bool = True) -> dict[str, Any]:
    """Run RLCS from the SFT model on the curated QA items; returns {reward_by_domain, iterations, summary}."""
    from vlmloom.schemas.config import build_config, load_yaml
    from vlmloom.trainer.config import TrainConfig
    from vlmloom.trainer.loop import train

    data = load_yaml(config_path)
    data.update({"mode": "rlcs", "model": sft_model_dir, "output": output, **(overrides or {})})
    data["rlcs"] = {**data.get("rlcs", {}), "prompts": [curated_dir]}
    summary = train(build_config(TrainConfig, data))
    totals: dict[str, list[float]] = {}
    for it in summary["iterations"]:
        for key, value in it.items():
            if key.startswith("reward_") and key != "reward_scores_per_s":
                totals.setdefault(key.removeprefix("reward_"), []).append(value)
    by_domain = {d: sum(v) / len(v) for d, v in sorted(totals.items())}
    if verbose:
        print("RLCS on the demo QA items (mean reward per iteration, by domain):")
        for it in summary["iterations"]:
            cells = "  ".join(f"{d}={it.get('reward_' + d, float('nan')):.3f}" for d in by_domain)
            print(f"  iteration {it['iteration']}: mean={it['mean_reward']:.3f}  {cells}  "
                  f"prompts={it['prompts_rolled_out']} kept={it['groups_kept']} forced={it['force_answered']}")
        print("  reward per domain: " + ", ".join(f"{d} {v:.3f}" for d, v in by_domain.items()))
    return {"reward_by_domain": by_domain, "iterations": summary["iterations"], "summary": summary}
