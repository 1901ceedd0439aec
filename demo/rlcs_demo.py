"""RLCS demos: `make demo`'s RL stage on a task a tiny model can learn, and a short run on curated QA items.

    run_rlcs_task_demo(output) -> summary          (`make demo` step 5)
        the graded task of bench/rlcs_ablation.py (color / position / count, generated images): its own tokenizer
        and tiny GLM-4.1V, a short SFT on partly wrong demonstrations, held-out reward of the SFT model, RLCS
        from it (a rollout budget), held-out reward again; prints the per-iteration metrics (reward per domain,
        informative-group share, expansion factor, format-pass and force-answer rates, response length).
    run_rlcs_demo(curated_dir, sft_model_dir, output) -> summary
        curated_dir     a curated output (qa samples with answer + domain math/chart, one image each)
        sft_model_dir   an SFT stage's exported hf_model (weights + tokenizer)
        output          run directory (metrics.jsonl, checkpoints, summary.json)
        Config: demo/configs/demo_rlcs.yaml. CLI equivalent:
        vlmloom train --config demo/configs/demo_rlcs.yaml --model SFT/hf_model --set rlcs.prompts=[CURATED]
        (on the demo corpus a tiny model trained for a few steps earns no reward: every group is uninformative)
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


# The demo's RL stage on the graded task of bench/rlcs_ablation.py (color / position / count), sized for ~2 min on
# 2 cores: a tokenizer and tiny model of its own, a short SFT on partly wrong demonstrations (so groups hold right
# and wrong answers), held-out reward before and after a few RLCS iterations.
# Chosen by measurement (one seed each, 48 held-out prompts × 4): 80 SFT steps with half the demonstrations wrong and
# RL lr 2e-3 lowered held-out reward (0.073 → 0.036); 100 steps, half wrong, lr 5e-4 left it flat (0.094); 100
# steps, a quarter wrong, lr 5e-4 raised it (0.089 → 0.125) with train format-pass 0.72 → 1.00.
TASK_DEMO = {"train_prompts": 48, "heldout": 48, "eval_k": 4, "sft_steps": 100, "sft_lr": 1e-2, "sft_noise": 0.25,
             "lr": 5e-4, "group_size": 8, "prompts_per_iteration": 4, "rollout_budget": 256, "expansion_max": 3.0}
TASK_REWARDS = {"domains": {"text": "text", "counting": "counting"}, "workers": 1}


def run_rlcs_task_demo(output: str, *, settings: dict[str, Any] | None = None,
                       verbose: bool = True) -> dict[str, Any]:
    """SFT a tiny model on the graded task, then RLCS from it; prints held-out reward (SFT → RLCS) and the
    per-iteration metrics. `settings` override TASK_DEMO.
    Returns {sft_heldout, rlcs_heldout, iterations, sft_summary, summary}."""
    import json
    import os

    from transformers import AutoTokenizer

    from vlmloom.demo import rlcs_task
    from vlmloom.demo.packed import ListSource
    from vlmloom.schemas.config import build_config
    from vlmloom.trainer.config import TrainConfig
    from vlmloom.trainer.loop import train
    from vlmloom.trainer.rlcs import compute_pass_rates

    p = {**TASK_DEMO, **(settings or {})}
    train_items = rlcs_task.make_graded_task(p["train_prompts"], seed=1, split="train")
    heldout_items = rlcs_task.make_graded_task(p["heldout"], seed=2, split="heldout")
    model_dir = rlcs_task.build_tokenizer_and_model(output, train_items + heldout_items, seed=0)
    records = rlcs_task.sft_records(train_items, model_dir, seq_len=256, noise=p["sft_noise"], seed=0)
    sft = train(build_config(TrainConfig, {
        "mode": "sft", "model": model_dir, "output": os.path.join(output, "sft"), "steps": p["sft_steps"],
        "lr": p["sft_lr"], "min_lr_ratio": 0.2, "warmup_steps": 5, "progress": False, "tensorboard": False,
        "resume": "never"}), source=ListSource(records, epochs=0))
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(sft["export_dir"])
    rl = {"mode": "rlcs", "model": sft["export_dir"], "output": os.path.join(output, "rlcs"), "steps": 10**6,
          "lr": p["lr"], "min_lr_ratio": 1.0, "micro_batch": 2, "progress": False, "tensorboard": True,
          "resume": "never", "rlcs": {
              "group_size": p["group_size"], "prompts_per_iteration": p["prompts_per_iteration"],
              "expansion_max": p["expansion_max"], "expansion_decay": 0.5, "rollout_budget": p["rollout_budget"],
              "max_new_tokens": 24, "max_think_tokens": 16, "force_answer_tokens": 10, "seq_len": 256,
              "generation_batch": 32, "rewards": TASK_REWARDS}}
    heldout = rlcs_task.rl_prompts(heldout_items)

    def heldout_reward(model: str, name: str) -> dict[str, float]:
        """Mean over held-out prompts of the mean score of eval_k sampled responses (one evaluation seed), in all
        ("all") and per kind (color / position / count)."""
        config = build_config(TrainConfig, {**rl, "model": model, "seed": 12345})
        path = os.path.join(output, f"heldout_{name}.jsonl")
        compute_pass_rates(config, path, k=p["eval_k"], prompts=heldout, batch_prompts=48)
        by_kind: dict[str, list[float]] = {"all": []}
        with open(path, encoding="utf-8") as fh:
            for row in map(json.loads, fh):
                by_kind["all"].append(row["mean_score"])
                by_kind.setdefault(row["id"].split("-")[1], []).append(row["mean_score"])
        return {kind: sum(v) / len(v) for kind, v in by_kind.items()}

    before = heldout_reward(sft["export_dir"], "sft")
    summary = train(build_config(TrainConfig, rl), source=rlcs_task.rl_prompts(train_items))
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(summary["export_dir"])
    after = heldout_reward(summary["export_dir"], "rlcs")
    if verbose:
        print(f"      SFT {p['sft_steps']} steps on the graded task (color/position/count, {p['sft_noise']:.0%} of the "
              f"demonstrations wrong): loss {sft['first_loss']:.3f} → {sft['final_loss']:.3f}")
        print("      RLCS iterations (train prompts):")
        for it in summary["iterations"]:
            print(f"        {it['iteration']}: reward {it['mean_reward']:.3f}  " +
                  " ".join(f"{d}={it['reward_' + d]:.2f}" for d in ("text", "counting") if 'reward_' + d in it) +
                  f"  informative {it['informative_group_share']:.2f}  expansion {it['expansion_factor']:.2f}  "
                  f"format {it['format_pass_rate']:.2f}  forced {it['force_answer_rate']:.2f}  "
                  f"length {it['response_length']:.1f}")
        kinds = "  ".join(f"{k} {before[k]:.3f} → {after[k]:.3f}" for k in before if k != "all")
        print(f"      held-out reward ({len(heldout)} prompts × {p['eval_k']} samples): SFT {before['all']:.3f} → "
              f"RLCS {after['all']:.3f} after {sum(it['rollouts'] for it in summary['iterations'])} rollouts "
              f"({kinds})")
    return {"sft_heldout": before["all"], "rlcs_heldout": after["all"], "heldout_by_kind": {"sft": before,
            "rlcs": after}, "iterations": summary["iterations"], "sft_summary": sft, "summary": summary}
