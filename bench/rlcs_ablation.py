"""RLCS ablation on CPU: from one shared SFT checkpoint, arms that add one thing at a time, compared on a held-out
split at equal rollout budgets, several seeds each, with bootstrap 95% intervals.

    DS_ACCELERATOR=cpu .venv/bin/python bench/rlcs_ablation.py --quick --workdir /tmp/ablation   # ≤ 10 min, 2 cores
    DS_ACCELERATOR=cpu .venv/bin/python bench/rlcs_ablation.py --workdir /tmp/ablation           # full: ≤ 60 min

Task (graded difficulty, generated images, tiny GLM-4.1V): `color` (easy: which of 4 colours fills the image),
`position` (medium: which quadrant holds the one square, 4 answers), `count` (hard: how many squares, 1–4,
scored by the exact `counting` verifier). SFT demonstrations are partly wrong (--sft-noise), so SFT teaches the
format and leaves the answers uncertain. Train and held-out prompts are disjoint draws.
Arms (each adds one thing; no arm has a KL term, this trainer has none):
    grpo      symmetric clip 0.2/0.2, token-mean loss, unbiased group std, B prompts per iteration, uniform draw
    paper     + the paper's settings: clip-higher 0.2/0.28, per-response (seq-mean-token-mean) loss, population std
    paper+ds  + dynamic sampling expansion (⌈B/(1 − EMA(r))⌉ prompts, the B most balanced informative groups kept)
    rlcs      + curriculum sampling (pass-rate tiers, online evidence) = RLCS
Every arm stops at the same rollout budget (`rlcs.rollout_budget`: the last iteration draws only what is left) and
is evaluated at the same milestones: held-out reward = mean over held-out prompts of the mean score of
--eval-k sampled responses (temperature 1, the RL sampling), the same evaluation seed for every policy.
Prints a table (reward, bootstrap 95% interval over prompts and seeds, held-out reward per kind (color, position,
count: chance is 0.25 on each, so a kind at ≈ 0.25 was not learned), rollouts, format-pass, force-answer and
informative-group rates), writes WORKDIR/rlcs_ablation.svg (held-out reward against rollouts) and
WORKDIR/rlcs_ablation.json, and ends with exactly one line
`rlcs_ablation: sft=S grpo=G rlcs=R rlcs_minus_grpo=D ci=[lo,hi]` (D paired over prompts and seeds).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REWARDS = {"domains": {"text": "text", "counting": "counting"}, "workers": 1}

ARMS: dict[str, dict] = {
    "grpo": {"clip_low": 0.2, "clip_high": 0.2, "loss_agg": "token-mean", "advantage_std": "unbiased",
             "dynamic_sampling": False, "curriculum": {"enabled": False}},
    "paper": {"clip_low": 0.2, "clip_high": 0.28, "loss_agg": "seq-mean-token-mean", "advantage_std": "population",
              "dynamic_sampling": False, "curriculum": {"enabled": False}},
    "paper+ds": {"clip_low": 0.2, "clip_high": 0.28, "loss_agg": "seq-mean-token-mean",
                 "advantage_std": "population", "dynamic_sampling": True, "curriculum": {"enabled": False}},
    "rlcs": {"clip_low": 0.2, "clip_high": 0.28, "loss_agg": "seq-mean-token-mean", "advantage_std": "population",
             "dynamic_sampling": True, "curriculum": {"enabled": True}},
}

# SFT: lr 1e-3 for 800+ steps. The earlier 5e-3 × 150/300 left the policy blind (held-out at chance on every kind,
# also with --sft-noise 0: the vision features collapsed to one direction), so RL could learn only the format.
QUICK = {"train_prompts": 96, "heldout": 48, "eval_k": 4, "seeds": 2, "sft_steps": 800, "batch_prompts": 4,
         "group_size": 8, "budget": 256, "milestones": 2}
FULL = {"train_prompts": 384, "heldout": 200, "eval_k": 8, "seeds": 3, "sft_steps": 1000, "batch_prompts": 8,
        "group_size": 8, "budget": 1536, "milestones": 3}


def make_items(n: int, *, seed: int, split: str):
    """n items, kinds alternating color / position / count; ids `{split}-{kind}-{i}` (demo/rlcs_task.py)."""
    from vlmloom.demo import rlcs_task

    return rlcs_task.make_graded_task(n, seed=seed, split=split)


def bootstrap(scores, *, resamples: int = 2000, seed: int = 0):
    """Mean and 95% interval of a (seeds, prompts) array, resampling seeds and prompts with replacement."""
    import numpy as np

    scores = np.asarray(scores, dtype=np.float64)
    rng = np.random.default_rng(seed)
    s, p = scores.shape
    means = [scores[rng.integers(0, s, s)][:, rng.integers(0, p, p)].mean() for _ in range(resamples)]
    return float(scores.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def paired_difference(a, b, *, resamples: int = 2000, seed: int = 1):
    """Mean of a − b and its 95% interval; seeds paired by index, prompts paired (the same held-out prompts)."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    s, p = a.shape
    diffs = []
    for _ in range(resamples):
        si, pi = rng.integers(0, s, s), rng.integers(0, p, p)
        diffs.append(a[si][:, pi].mean() - b[si][:, pi].mean())
    return float(a.mean() - b.mean()), float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))


def write_svg(path: str, curves: dict[str, list[tuple[float, float]]]) -> None:
    """Held-out reward against rollouts, one polyline per arm (means over seeds), plain SVG. The y axis spans the
    data (arms differ by hundredths: an axis from 0 would flatten them), five labelled grid lines, x ticks at the
    milestones, the legend right of the plot."""
    width, height, left, right, top, bottom = 720, 400, 60, 130, 30, 50
    xs = sorted({x for c in curves.values() for x, _ in c}) or [1.0]
    ys = [y for c in curves.values() for _, y in c] or [0.0]
    x_max = max(xs) or 1.0
    margin = max(0.1 * (max(ys) - min(ys)), 0.005)
    y_lo, y_hi = min(ys) - margin, max(ys) + margin

    def sx(x: float) -> float:
        return left + (width - left - right) * x / x_max

    def sy(y: float) -> float:
        return height - bottom - (height - top - bottom) * (y - y_lo) / max(y_hi - y_lo, 1e-9)

    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             f'font-size="12"><rect width="100%" height="100%" fill="white"/>',
             f'<text x="{(left + width - right) / 2}" y="{height - 10}" text-anchor="middle">rollouts</text>',
             f'<text x="14" y="{height / 2}" transform="rotate(-90 14 {height / 2})" text-anchor="middle">'
             'held-out reward (mean over seeds)</text>']
    for i in range(5):
        y = y_lo + (y_hi - y_lo) * i / 4
        parts.append(f'<line x1="{left}" y1="{sy(y):.1f}" x2="{width - right}" y2="{sy(y):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.3f}</text>')
    for x in xs:
        parts.append(f'<text x="{sx(x):.1f}" y="{height - bottom + 16}" text-anchor="middle">{x:.0f}</text>')
    parts += [f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="black"/>',
              f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="black"/>']
    for i, (name, points) in enumerate(curves.items()):
        colour = colours[i % len(colours)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}"/>')
        parts += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}"/>' for x, y in points]
        ly = top + 10 + 18 * i
        parts.append(f'<line x1="{width - right + 12}" y1="{ly - 4}" x2="{width - right + 30}" y2="{ly - 4}" '
                     f'stroke="{colour}" stroke-width="2"/>')
        parts.append(f'<text x="{width - right + 36}" y="{ly}" fill="{colour}">{name}</text>')
    parts.append("</svg>")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(parts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the small setting (≤ 10 min on 2 cores)")
    for key, value in FULL.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=None,
                            help=f"default {value} (quick: {QUICK[key]})")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of " + ", ".join(ARMS))
    parser.add_argument("--lr", type=float, default=3e-4,
                        help="RL learning rate (Adam, constant; quick runs: 1e-3 undid SFT's colour skill, 0.52 → "
                             "0.10-0.43; 3e-4 raised it to 0.55-0.63; 1e-4 barely moved it)")
    parser.add_argument("--sft-lr", type=float, default=1e-3)
    parser.add_argument("--sft-noise", type=float, default=0.5)
    parser.add_argument("--workdir", default="")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: the model is tiny, and 2 threads on a shared 2-core "
                             "machine stalled each other, 3-5x slower per arm than 1 thread)")
    args = parser.parse_args(argv)
    p = {k: (getattr(args, k) if getattr(args, k) is not None else (QUICK if args.quick else FULL)[k])
         for k in FULL}
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"unknown arms {unknown}; known: {', '.join(ARMS)}")

    import logging

    import numpy as np
    import torch

    torch.set_num_threads(max(1, args.threads))

    logging.disable(logging.WARNING)
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    from vlmloom.demo import rlcs_task
    from vlmloom.demo.packed import ListSource
    from vlmloom.schemas.config import build_config
    from vlmloom.trainer.config import TrainConfig
    from vlmloom.trainer.loop import train
    from vlmloom.trainer.rlcs import compute_pass_rates

    started = time.perf_counter()
    work = args.workdir or tempfile.mkdtemp(prefix="rlcs_ablation_")
    train_items = make_items(p["train_prompts"], seed=1, split="train")
    heldout_items = make_items(p["heldout"], seed=2, split="heldout")
    model_dir = rlcs_task.build_tokenizer_and_model(work, train_items + heldout_items, seed=0)
    records = rlcs_task.sft_records(train_items, model_dir, seq_len=256, noise=args.sft_noise, seed=0)
    sft = train(build_config(TrainConfig, {
        "mode": "sft", "model": model_dir, "output": os.path.join(work, "sft"), "steps": p["sft_steps"],
        "lr": args.sft_lr, "min_lr_ratio": 0.2, "warmup_steps": 5, "micro_batch": 1, "progress": False,
        "tensorboard": False, "resume": "never", "seed": 0}), source=ListSource(records, epochs=0))
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(sft["export_dir"])
    print(f"SFT: {p['sft_steps']} steps, loss {sft['first_loss']:.3f} → {sft['final_loss']:.3f} "
          f"({time.perf_counter() - started:.0f} s)", flush=True)

    heldout = rlcs_task.rl_prompts(heldout_items)
    heldout_ids = [h.id for h in heldout]
    kinds = ("color", "position", "count")  # easy, medium, hard: what the policy learned, not only the format
    kind_of = np.array([h.meta["kind"] for h in heldout])

    def per_kind(scores) -> dict[str, float]:
        """Mean held-out reward per question kind of a (seeds, prompts) or (prompts,) array."""
        scores = np.asarray(scores, dtype=np.float64).reshape(-1, len(heldout))
        return {k: float(scores[:, kind_of == k].mean()) for k in kinds}

    def rl_config(arm: str, seed: int, budget: int, model: str):
        return build_config(TrainConfig, {
            "mode": "rlcs", "model": model, "output": os.path.join(work, f"{arm}-seed{seed}"), "steps": 10**6,
            "lr": args.lr, "min_lr_ratio": 1.0, "micro_batch": 2, "progress": False, "tensorboard": False,
            "export": True, "resume": "auto", "seed": seed,
            "rlcs": {"group_size": p["group_size"], "prompts_per_iteration": p["batch_prompts"],
                     "expansion_max": 3.0, "expansion_decay": 0.5, "rollout_budget": budget,
                     "max_new_tokens": 24, "max_think_tokens": 16, "force_answer_tokens": 10, "seq_len": 256,
                     "generation_batch": 32, "rewards": REWARDS, **ARMS[arm]}})

    def evaluate(config, export_dir: str, name: str) -> list[float]:
        """Mean score of eval_k responses per held-out prompt, in held-out order (same evaluation seed)."""
        AutoTokenizer.from_pretrained(model_dir).save_pretrained(export_dir)
        cfg = config.__class__(**{**config.__dict__, "model": export_dir, "seed": 12345})
        out = os.path.join(work, f"eval_{name}.jsonl")
        compute_pass_rates(cfg, out, k=p["eval_k"], prompts=heldout, batch_prompts=32)
        rows = {r["id"]: r["mean_score"] for r in map(json.loads, open(out, encoding="utf-8"))}
        return [rows[i] for i in heldout_ids]

    sft_scores = evaluate(rl_config("grpo", 0, 0, sft["export_dir"]), sft["export_dir"], "sft")
    print(f"SFT held-out reward {np.mean(sft_scores):.3f}, per kind "
          + " ".join(f"{k}={v:.3f}" for k, v in per_kind(sft_scores).items())
          + f" ({time.perf_counter() - started:.0f} s)", flush=True)
    milestones = [round(p["budget"] * (m + 1) / p["milestones"]) for m in range(p["milestones"])]
    curves: dict[str, list[list[tuple[int, float]]]] = {a: [] for a in arms}
    final: dict[str, list[list[float]]] = {a: [] for a in arms}
    rates: dict[str, dict[str, list[float]]] = {a: {} for a in arms}
    for seed in range(p["seeds"]):
        for arm in arms:
            points = [(0, float(np.mean(sft_scores)))]
            summary = {}
            for budget in milestones:
                config = rl_config(arm, seed, budget, sft["export_dir"])
                summary = train(config, source=rlcs_task.rl_prompts(train_items))
                scores = evaluate(config, summary["export_dir"], f"{arm}-seed{seed}-{budget}")
                spent = sum(it["rollouts"] for it in summary["iterations"])
                points.append((spent, float(np.mean(scores))))
            final[arm].append(scores)
            curves[arm].append(points)
            its = summary["iterations"]
            for key in ("format_pass_rate", "force_answer_rate", "informative_group_share"):
                rates[arm].setdefault(key, []).extend(it[key] for it in its)
            rates[arm].setdefault("iterations", []).append(len(its))
            rates[arm].setdefault("rollouts", []).append(points[-1][0])
            by_kind = " ".join(f"{k}={v:.3f}" for k, v in per_kind(scores).items())
            print(f"  {arm} seed {seed}: held-out {points[-1][1]:.3f} ({by_kind}) after {points[-1][0]} rollouts, "
                  f"{len(its)} iterations ({time.perf_counter() - started:.0f} s)", flush=True)

    print()
    print(f"held-out: {len(heldout)} prompts × {p['eval_k']} responses; {p['seeds']} seeds per arm; budget "
          f"{p['budget']} rollouts; milestones {milestones}")
    header = (f"{'arm':<10}{'reward':>8}{'95% CI':>17}" + "".join(f"{k:>10}" for k in kinds) +
              f"{'rollouts':>10}{'iters':>7}{'format':>8}{'forced':>8}{'informative':>13}")
    print(header)
    print("-" * len(header))
    mean, lo, hi = bootstrap([sft_scores])
    kinds_sft = per_kind(sft_scores)
    print(f"{'sft':<10}{mean:>8.3f}{f'[{lo:.3f}, {hi:.3f}]':>17}" + "".join(f"{kinds_sft[k]:>10.3f}" for k in kinds) +
          f"{0:>10}{0:>7}{'':>8}{'':>8}{'':>13}")
    table = {"sft": {"reward": mean, "ci": [lo, hi], "per_kind": kinds_sft}}
    for arm in arms:
        mean, lo, hi = bootstrap(final[arm])
        r = rates[arm]
        kinds_arm = per_kind(final[arm])
        print(f"{arm:<10}{mean:>8.3f}{f'[{lo:.3f}, {hi:.3f}]':>17}" + "".join(f"{kinds_arm[k]:>10.3f}" for k in kinds) +
              f"{np.mean(r['rollouts']):>10.0f}"
              f"{np.mean(r['iterations']):>7.1f}{np.mean(r['format_pass_rate']):>8.3f}"
              f"{np.mean(r['force_answer_rate']):>8.3f}{np.mean(r['informative_group_share']):>13.3f}")
        table[arm] = {"reward": mean, "ci": [lo, hi], "per_kind": kinds_arm, "rollouts": float(np.mean(r["rollouts"])),
                      **{k: float(np.mean(v)) for k, v in r.items() if k != "rollouts"}}
    mean_curves = {a: [(float(np.mean([c[i][0] for c in curves[a]])), float(np.mean([c[i][1] for c in curves[a]])))
                       for i in range(len(curves[a][0]))] for a in arms}
    svg = os.path.join(work, "rlcs_ablation.svg")
    write_svg(svg, mean_curves)
    result = {"settings": p, "arms": ARMS, "table": table, "curves": mean_curves, "per_seed_final": final,
              "sft_scores": sft_scores, "seconds": time.perf_counter() - started}
    if "rlcs" in arms and "grpo" in arms:
        diff, dlo, dhi = paired_difference(final["rlcs"], final["grpo"])
        result["rlcs_minus_grpo"] = [diff, dlo, dhi]
    with open(os.path.join(work, "rlcs_ablation.json"), "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=1)
    print(f"curve: {svg}; {time.perf_counter() - started:.0f} s in all")
    if "rlcs_minus_grpo" in result:
        print(f"rlcs_ablation: sft={table['sft']['reward']:.3f} grpo={table['grpo']['reward']:.3f} "
              f"rlcs={table['rlcs']['reward']:.3f} rlcs_minus_grpo={diff:+.3f} ci=[{dlo:+.3f},{dhi:+.3f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
