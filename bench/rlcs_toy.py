"""RLCS toy on CPU: a tiny GLM-4.1V, briefly SFT-ed by our trainer on a generated image task, then RL-trained
with RLCS (curriculum + dynamic sampling expansion) and, beside it, with both switched off (the baseline).

    DS_ACCELERATOR=cpu .venv/bin/python bench/rlcs_toy.py --workdir /tmp/toy     # a few minutes on 2 CPU cores
    DS_ACCELERATOR=cpu .venv/bin/python bench/rlcs_toy.py --kinds color,count --max-count 2   # add a harder kind

Task (demo/rlcs_task.py): "Which color fills the image?" over --colors (default four); optionally "How many
squares are in the image?" (1..--max-count). The SFT demonstrations are only partly correct (--sft-noise, default
half of them answer another color), so SFT teaches the format and leaves the answer uncertain: groups of rollouts
mix correct and wrong answers, the setting where RL after SFT improves the policy. Both RL runs start from the same
SFT checkpoint with the same seed; RL samples at temperature 1.0, top-p 1.0, Adam at --lr.
Prints reward per iteration (over the prompts each run drew: the curriculum draws harder ones on purpose), rollouts
spent and the share of informative groups for both runs, then each policy's reward on every prompt
(--eval-k responses each), then exactly one line:
`rlcs_toy: rlcs first=F last=L baseline first=F last=L` (mean reward of the first and last iteration).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--sft-steps", type=int, default=300)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--batch-prompts", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3, help="RL learning rate (Adam)")
    parser.add_argument("--sft-lr", type=float, default=5e-3)
    parser.add_argument("--sft-noise", type=float, default=0.5,
                        help="share of SFT demonstrations that answer wrongly (leaves the SFT policy uncertain)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", default="color", help="question kinds, alternating (color, count)")
    parser.add_argument("--colors", default="red,green,blue,yellow", help="answer vocabulary of the color questions")
    parser.add_argument("--max-count", type=int, default=2, help="count questions ask about 1..N squares")
    parser.add_argument("--eval-k", type=int, default=4, help="responses per prompt when evaluating each policy on "
                                                              "every prompt (0: skip)")
    parser.add_argument("--workdir", default="")
    parser.add_argument("--reuse-sft", action="store_true", help="keep WORKDIR/sft/hf_model from an earlier run")
    args = parser.parse_args(argv)

    import logging

    logging.disable(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    from vlmloom.demo import rlcs_task
    from vlmloom.schemas.config import build_config
    from vlmloom.trainer.config import TrainConfig
    from vlmloom.trainer.loop import train
    from vlmloom.demo.packed import ListSource

    work = args.workdir or tempfile.mkdtemp(prefix="rlcs_toy_")
    items = rlcs_task.make_task(args.prompts, seed=args.seed, kinds=tuple(args.kinds.split(",")), colors=tuple(args.colors.split(",")),
                                max_count=args.max_count)
    t0 = time.perf_counter()
    model_dir = rlcs_task.build_tokenizer_and_model(work, items, seed=args.seed)
    records = rlcs_task.sft_records(items, model_dir, seq_len=256, noise=args.sft_noise, seed=args.seed)
    sft_dir = os.path.join(work, "sft", "hf_model")
    if args.reuse_sft and os.path.isfile(os.path.join(sft_dir, "config.json")):
        sft = {"export_dir": sft_dir, "first_loss": float("nan"), "final_loss": float("nan")}
    else:
        sft = train(build_config(TrainConfig, {
            "mode": "sft", "model": model_dir, "output": os.path.join(work, "sft"), "steps": args.sft_steps,
            "lr": args.sft_lr, "min_lr_ratio": 0.2, "warmup_steps": 5, "micro_batch": 1, "progress": False,
            "tensorboard": False, "resume": "never", "seed": args.seed}), source=ListSource(records, epochs=0))
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(model_dir).save_pretrained(sft["export_dir"])
    print(f"SFT: {args.sft_steps} steps on {len(records)} packed rows, loss {sft['first_loss']:.3f} → "
          f"{sft['final_loss']:.3f} ({time.perf_counter() - t0:.0f} s)")

    runs, finals = {}, {}
    for name, curriculum, dynamic in (("rlcs", True, True), ("baseline", False, False)):
        t1 = time.perf_counter()
        config = build_config(TrainConfig, {
            "mode": "rlcs", "model": sft["export_dir"], "output": os.path.join(work, name), "steps": args.iterations,
            "lr": args.lr, "min_lr_ratio": 1.0, "micro_batch": 2, "progress": False, "tensorboard": False,
            "export": args.eval_k > 0, "resume": "never", "seed": args.seed,
            "rlcs": {"group_size": args.group_size, "prompts_per_iteration": args.batch_prompts,
                     "dynamic_sampling": dynamic, "expansion_max": 3.0, "expansion_decay": 0.5,
                     "max_new_tokens": 24, "max_think_tokens": 16, "force_answer_tokens": 10, "seq_len": 256,
                     "generation_batch": 32, "rewards": {**rlcs_task.REWARDS, "workers": 0},
                     "curriculum": {"enabled": curriculum}}})
        summary = train(config, source=rlcs_task.rl_prompts(items))
        runs[name] = (summary["iterations"], time.perf_counter() - t1)
        finals[name] = (config, summary["export_dir"])
    evaluation = {}
    if args.eval_k > 0:  # the iteration reward is over the prompts each run drew (the curriculum draws harder
        # ones on purpose), so each policy is also scored on every prompt: same prompts, same k, same seed
        from vlmloom.trainer.rlcs import compute_pass_rates

        for name, (config, export_dir) in [("sft", (finals["rlcs"][0], sft["export_dir"])), *finals.items()]:
            AutoTokenizer.from_pretrained(model_dir).save_pretrained(export_dir)
            cfg = config.__class__(**{**config.__dict__, "model": export_dir})
            result = compute_pass_rates(cfg, os.path.join(work, f"eval_{name}.jsonl"), k=args.eval_k,
                                        prompts=rlcs_task.rl_prompts(items), batch_prompts=32)
            evaluation[name] = result["pass_rate_by_domain"]

    print()
    header = f"{'it':>3} | " + " | ".join(f"{n + ' reward':>15} {'rollouts':>8} {'informative':>11} {'color':>6} "
                                          f"{'count':>6}" for n in runs)
    print(header)
    print("-" * len(header))
    spent = {n: 0 for n in runs}
    for i in range(args.iterations):
        cells = []
        for n, (its, _) in runs.items():
            it = its[i]
            spent[n] += it["rollouts"]
            cells.append(f"{it['mean_reward']:>15.3f} {spent[n]:>8d} {1 - it['uninformative_ratio']:>11.2f} "
                         f"{it.get('reward_text', float('nan')):>6.2f} {it.get('reward_numeric', float('nan')):>6.2f}")
        print(f"{i + 1:>3} | " + " | ".join(cells))
    for n, (its, seconds) in runs.items():
        forced = sum(it["force_answered"] for it in its)
        print(f"{n}: {seconds:.0f} s, {spent[n]} rollouts, {forced} force-answered, "
              f"median rollout {sorted(it['rollout_tokens_per_s'] for it in its)[len(its) // 2]:.0f} tok/s")
    if evaluation:
        print(f"every prompt x {args.eval_k} responses (share scoring 1): " + ", ".join(
            f"{n} " + " ".join(f"{d} {v:.3f}" for d, v in sorted(e.items())) for n, e in evaluation.items()))
    first_last = {n: (its[0]["mean_reward"], its[-1]["mean_reward"]) for n, (its, _) in runs.items()}
    print(f"rlcs_toy: rlcs first={first_last['rlcs'][0]:.3f} last={first_last['rlcs'][1]:.3f} "
          f"baseline first={first_last['baseline'][0]:.3f} last={first_last['baseline'][1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
