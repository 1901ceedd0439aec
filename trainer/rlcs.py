"""The RLCS objective: one iteration = curriculum draw → rollouts → rewards → GRPO advantages → packed updates.

    prompts ──CurriculumSampler.sample(⌈B·f⌉), f = min(1/(1 − EMA(r)), cap)──▶ k rollouts each (rollout.py)
      ──RewardSystem──▶ rewards (G, k) ──▶ online pass rates, uninformative ratio r, EMA(r) for the next draw
      ──select the B most balanced informative groups──▶ advantages (ADVANTAGE_ESTIMATORS)
      ──packing builder + packer (per-sample isolation, 4-row positions)──▶ packed rows
      ──old log-probs (no grad, before any update)──▶ `updates_per_iteration` optimizer steps

The loop (loop.py) calls `next_step()` for each optimizer step; an iteration runs when the previous one's steps
are used up. An iteration in which every group is uninformative yields an empty step (no update, metrics logged,
EMA(r) and so the expansion grow): hard data never aborts the run. Each iteration's metrics (policy loss, clip
fractions, ratio mean/max, entropy, response length, format pass and force-answer rates, informative-group share,
expansion factor, reward per domain, reward timeouts) reach metrics.jsonl and TensorBoard through the loop. Sampler RNG, online pass rates, the EMA and any
not-yet-used steps of the current iteration go into the checkpoint, so a resumed run continues exactly.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Sequence

import numpy as np
import torch

from vlmloom.trainer import rl_algos
from vlmloom.trainer.config import TrainConfig
from vlmloom.trainer.curriculum import CurriculumSampler, read_pass_rates
from vlmloom.trainer.data import PackedCollator
from vlmloom.trainer.loss import PolicyGradientLoss, model_inputs
from vlmloom.trainer.rollout import (GenerationSettings, LocalRewards, RayRewards, RayRollout, RLPrompt,
                                     PromptRenderer, load_prompts, make_rollout_backend, reward_items,
                                     training_sample)

log = logging.getLogger("vlmloom.rlcs")
RL_KEYS = ("old_log_probs", "advantages", "loss_weights")


def resolve_tokenizer_dir(config: TrainConfig) -> str:
    path = config.rlcs.tokenizer or (config.model if isinstance(config.model, str) else "")
    if not path or not os.path.isfile(os.path.join(path, "tokenizer_config.json")):
        raise ValueError(f"rlcs.tokenizer: {path or '(unset)'} has no tokenizer_config.json; set rlcs.tokenizer to "
                         "the tokenizer directory the prompts were packed with (e.g. PACKED/tokenizer)")
    return path


class RLCSObjective:
    def __init__(self, config: TrainConfig, model: Any, image_processor: Any, *, prompts: Sequence[RLPrompt] | None,
                 rank: int, world_size: int, device: torch.device):
        from transformers import AutoTokenizer

        rc = self.rc = config.rlcs
        self.config, self.model, self.device, self.world_size = config, model, device, world_size
        self.tokenizer_dir = resolve_tokenizer_dir(config)
        tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_dir)
        prompts = list(prompts) if prompts is not None else load_prompts(rc.prompts)
        self.prompts = prompts[rank::world_size]  # each rank rolls out its own share of the prompt set
        if not self.prompts:
            raise ValueError("rlcs: no prompts (set rlcs.prompts to JSONL files or curated directories with qa "
                             "samples that carry an answer and a domain)")
        self.renderer = PromptRenderer(tokenizer, system_prompt=rc.system_prompt)  # renders each prompt once
        offline = read_pass_rates(rc.curriculum.offline_pass_rates) if rc.curriculum.offline_pass_rates else None
        self.sampler = CurriculumSampler([p.id for p in self.prompts], rc.curriculum, group_size=rc.group_size,
                                         seed=config.seed + 1000 * rank, offline=offline)
        self.collator = PackedCollator(model.config, image_processor=image_processor, derive_labels=False)
        self.wrapper = PolicyGradientLoss(model, policy_loss=rc.policy_loss, clip_low=rc.clip_low,
                                          clip_high=rc.clip_high, temperature=rc.temperature,
                                          clip_ratio_c=rc.clip_ratio_c)
        settings = GenerationSettings(max_new_tokens=rc.max_new_tokens, max_think_tokens=rc.max_think_tokens,
                                      force_answer_tokens=rc.force_answer_tokens, temperature=rc.temperature,
                                      top_p=rc.top_p, generation_batch=rc.generation_batch)
        if rc.ray:  # the same backend, by name, inside a Ray actor
            self.backend = RayRollout(model, self.tokenizer_dir, settings, num_cpus=rc.ray_num_cpus,
                                      backend=rc.rollout_backend)
            self.rewards = RayRewards(rc.rewards, num_cpus=rc.ray_num_cpus)
        else:
            self.backend = make_rollout_backend(rc.rollout_backend, model, tokenizer, image_processor, settings)
            self.rewards = LocalRewards(rc.rewards)
        self.image_token_id = int(model.config.image_token_id)
        self.merge_size = int(model.config.vision_config.spatial_merge_size)
        self.pad_id = self.renderer.builder.pad_id
        self.ratio_ema = 0.0  # EMA of the uninformative-group share r; the expansion factor is 1 / (1 − ratio_ema)
        self.iteration = 0
        self.pending: list[list[dict[str, Any]]] = []  # optimizer steps left from the current iteration
        self.history: list[dict[str, Any]] = []  # per-iteration metrics (also in the run's summary)
        self._metrics: dict[str, Any] = {}

    # --- the Objective protocol (objectives.py) ---------------------------------------------------------------
    def next_step(self) -> list[dict[str, Any]] | None:
        self._metrics = {}
        if not self.pending and self.rc.rollout_budget and self.rollouts_done() >= self.rc.rollout_budget:
            return None  # the budget is spent: the loop ends the run (checkpointed, resumable with a larger one)
        if not self.pending:
            self._metrics = self.run_iteration()
        self.wrapper.clipped_tokens = 0
        self.wrapper.reset_stats()
        return self.pending.pop(0) if self.pending else []

    def rollouts_done(self) -> int:
        return sum(int(it["rollouts"]) for it in self.history)

    @staticmethod
    def denominator(batch: dict[str, Any]) -> float:
        return float(batch["loss_weights"].double().sum())  # responses (seq-mean) or tokens (token-mean)

    @staticmethod
    def inputs(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        out = model_inputs(batch, device)
        out.update({k: batch[k].to(device) for k in RL_KEYS})
        return out

    @staticmethod
    def null_batch(batch: dict[str, Any]) -> dict[str, Any]:
        return {**batch, "loss_weights": batch["loss_weights"].clone().fill_(0),
                "targets": batch["targets"].clone().fill_(-100)}

    def step_metrics(self) -> dict[str, Any]:
        # the iteration's figures on its first step, the policy figures of every step (this rank's tokens)
        return {**self._metrics, **self.wrapper.step_metrics(), "clipped_tokens": self.wrapper.clipped_tokens}

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict(), "ratio_ema": self.ratio_ema,
                "iteration": self.iteration, "pending": self.pending, "history": self.history}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is None:
            return
        self.sampler.load_state_dict(state["sampler"])
        if "ratio_ema" in state:
            self.ratio_ema = float(state["ratio_ema"])
        else:  # a checkpoint of the earlier rule kept an EMA of the factor: invert 1/(1 − r) once
            self.ratio_ema = 1.0 - 1.0 / max(float(state["expansion_ema"]), 1.0)
        self.iteration = int(state["iteration"])
        self.pending = state["pending"]
        self.history = list(state["history"])

    def summary(self) -> dict[str, Any]:
        return {"iterations": self.history, "reward_stats": self.rewards.stats()}

    def close(self) -> None:
        self.rewards.close()
        if hasattr(self.backend, "close"):
            self.backend.close()

    # --- one iteration -------------------------------------------------------------------------------------------
    def run_iteration(self) -> dict[str, Any]:
        rc = self.rc
        B = rc.prompts_per_iteration
        factor = rl_algos.expansion_factor(self.ratio_ema, rc.expansion_max) if rc.dynamic_sampling else 1.0
        n = rl_algos.prompts_to_roll_out(B, factor, rc.expansion_max)
        if rc.rollout_budget:  # the last iteration draws only what the budget has left
            n = min(n, max(1, -(-(rc.rollout_budget - self.rollouts_done()) // rc.group_size)))
        chosen = self.sampler.sample(n)
        rendered = [self.renderer.render(self.prompts[i]) for i in chosen]

        t0 = time.perf_counter()
        groups = self.backend.generate(rendered, rc.group_size)
        rollout_s = time.perf_counter() - t0
        rollout_tokens = sum(len(r.response_ids) for g in groups for r in g)

        t0 = time.perf_counter()
        results = self.rewards.score(reward_items([self.prompts[i] for i in chosen], groups))
        reward_s = time.perf_counter() - t0
        rewards = torch.tensor([r.score for r in results], dtype=torch.float64).view(len(chosen), rc.group_size)

        for g, i in enumerate(chosen):
            self.sampler.update(i, (rewards[g] >= rc.pass_threshold).tolist())
        ratio = rl_algos.uninformative_ratio(rewards)
        if rc.dynamic_sampling:
            self.ratio_ema = rl_algos.update_ratio_ema(self.ratio_ema, ratio, decay=rc.expansion_decay)
            keep = rl_algos.select_balanced_groups(rewards, B)
        else:
            keep = rl_algos.select_balanced_groups(rewards, len(chosen))  # every informative group
        advantages = rl_algos.ADVANTAGE_ESTIMATORS.get(rc.advantage)(rewards, std=rc.advantage_std)

        t0 = time.perf_counter()
        samples, sample_advantages = [], []
        for g in keep.tolist():
            for j, rollout in enumerate(groups[g]):
                if not any(rollout.trained):
                    continue
                samples.append(training_sample(f"it{self.iteration}-g{g}-r{j}", rendered[g], rollout,
                                               image_token_id=self.image_token_id, merge_size=self.merge_size))
                sample_advantages.append(float(advantages[g, j]))
        self.pending = self._update_steps(samples, sample_advantages)
        pack_s = time.perf_counter() - t0

        self.iteration += 1
        domains: dict[str, list[float]] = {}
        for g, i in enumerate(chosen):
            domains.setdefault(self.prompts[i].domain, []).extend(rewards[g].tolist())
        responses = [r for g in groups for r in g]
        metrics = {
            "iteration": self.iteration, "mean_reward": float(rewards.mean()),
            **{f"reward_{d}": float(np.mean(v)) for d, v in sorted(domains.items())},
            "uninformative_ratio": ratio, "informative_groups": int(round((1 - ratio) * len(chosen))),
            "informative_group_share": 1.0 - ratio,
            "expansion_factor": factor,  # the factor this iteration's draw used: min(1 / (1 − EMA(r)), cap)
            "ratio_ema": self.ratio_ema,  # EMA(r) after this iteration (the next draw's factor comes from it)
            "expansion_factor_next": rl_algos.expansion_factor(self.ratio_ema, rc.expansion_max)
            if rc.dynamic_sampling else 1.0,
            "prompts_rolled_out": len(chosen),
            "rollouts": len(chosen) * rc.group_size, "groups_kept": int(len(keep)),
            "responses_trained": len(samples),
            "force_answered": sum(r.forced for g in groups for r in g),
            "unfinished": sum(not r.finished for g in groups for r in g),
            "format_ok": float(np.mean([r.format_ok for r in results])),
            "format_pass_rate": float(np.mean([r.format_ok for r in results])),
            "force_answer_rate": float(np.mean([r.forced for r in responses])) if responses else 0.0,
            "response_length": float(np.mean([len(r.response_ids) for r in responses])) if responses else 0.0,
            "verifier_timeouts": sum(r.reason == "timeout" for r in results),
            "verifier_errors": sum(r.reason == "verifier_error" for r in results),
            "rollout_tokens": rollout_tokens, "rollout_tokens_per_s": rollout_tokens / max(rollout_s, 1e-9),
            "reward_scores_per_s": len(results) / max(reward_s, 1e-9),
            "rollout_seconds": rollout_s, "scoring_seconds": reward_s,
            "prepare_s": pack_s,
            "mean_pass_rate": float(self.sampler.pass_rates().mean()), **self.sampler.tier_summary(),
        }
        self.history.append(metrics)
        log.info("rlcs iteration %d: reward %.3f, r %.2f, EMA(r) %.2f, expansion %.2f, kept %d/%d, forced %d",
                 self.iteration, metrics["mean_reward"], ratio, self.ratio_ema, factor, len(keep), len(chosen),
                 metrics["force_answered"])
        return metrics

    def _update_steps(self, samples: list[Any], sample_advantages: list[float]) -> list[list[dict[str, Any]]]:
        """Pack the kept responses into rows, split them into optimizer steps and micro-batches, attach
        advantages, aggregation weights and old log-probs (computed now, before any update of this iteration)."""
        from vlmloom.packing.packers import plan_bins
        from vlmloom.packing.shards import assemble

        if not samples:
            return []
        L = self.rc.seq_len
        longest = max(len(s) for s in samples)
        if longest > L:
            raise ValueError(f"rlcs.seq_len ({L}) < longest rollout sample ({longest} tokens): raise rlcs.seq_len "
                             "to at least prompt + max_new_tokens + force_answer_tokens + 2")
        bins = list(plan_bins([len(s) for s in samples], L, packer=self.rc.packer, window=0))
        rows = []
        for b, members in enumerate(bins):
            row = assemble([samples[m] for m in members], L, self.pad_id)
            row["key"] = f"it{self.iteration}-row{b}"
            row["sample_of_token"] = np.concatenate(
                [np.full(len(samples[m]), m, np.int64) for m in members] +
                [np.full(L - int(row["seq_lens"].sum()), -1, np.int64)])
            rows.append(row)
        steps = np.array_split(np.arange(len(rows)), min(self.rc.updates_per_iteration, len(rows)))
        advantages = torch.tensor(sample_advantages, dtype=torch.float32)
        out = []
        was_training = self.wrapper.training
        self.wrapper.eval()
        for step_rows in steps:
            micro = [rows[i] for i in step_rows.tolist()]
            batches = [self._collate(micro[j:j + self.config.micro_batch], advantages)
                       for j in range(0, len(micro), self.config.micro_batch)]
            out.append(batches)
        self.wrapper.train(was_training)
        return out

    def _collate(self, rows: list[dict[str, Any]], advantages: torch.Tensor) -> dict[str, Any]:
        batch = self.collator(rows)
        owner = torch.from_numpy(np.stack([r["sample_of_token"] for r in rows]))  # (B, L), -1 = padding
        mask = batch["targets"] != -100
        batch["advantages"] = torch.where(mask, advantages[owner.clamp(min=0)], torch.zeros(()))
        weights = torch.zeros(mask.shape, dtype=torch.float64)
        weights[mask] = rl_algos.LOSS_AGGREGATIONS.get(self.rc.loss_agg)(owner[mask])
        batch["loss_weights"] = weights.float()
        with torch.no_grad():
            inputs = model_inputs(batch, self.device)
            log_probs, _ = self.wrapper.token_log_probs(**inputs)
        old = torch.zeros(mask.shape, dtype=torch.float32)
        old[mask] = log_probs.float().cpu()
        batch["old_log_probs"] = old
        return batch


def compute_pass_rates(config: TrainConfig, output: str, *, k: int = 8, prompts: Sequence[RLPrompt] | None = None,
                       batch_prompts: int = 16) -> dict[str, Any]:
    """Offline difficulty: k rollouts per prompt with `config.model` (the rlcs sampling settings and reward
    system), pass rate = share of responses scoring >= rlcs.pass_threshold. Writes JSONL rows
    {id, domain, k, pass_rate, mean_score} to `output` (atomically) for `rlcs.curriculum.offline_pass_rates`;
    returns a summary with the mean pass rate per domain."""
    from transformers import AutoTokenizer

    from vlmloom.trainer.curriculum import write_pass_rates
    from vlmloom.trainer.data import load_image_processor
    from vlmloom.trainer.model import load_model, resolve_model_spec

    rc = config.rlcs
    torch.manual_seed(config.seed)
    model = load_model(resolve_model_spec(config.model, config.data), seed=config.seed)
    tokenizer = AutoTokenizer.from_pretrained(resolve_tokenizer_dir(config))
    prompts = list(prompts) if prompts is not None else load_prompts(rc.prompts)
    renderer = PromptRenderer(tokenizer, system_prompt=rc.system_prompt)
    settings = GenerationSettings(max_new_tokens=rc.max_new_tokens, max_think_tokens=rc.max_think_tokens,
                                  force_answer_tokens=rc.force_answer_tokens, temperature=rc.temperature,
                                  top_p=rc.top_p, generation_batch=rc.generation_batch)
    backend = make_rollout_backend(rc.rollout_backend, model, tokenizer, load_image_processor(config.image_processor),
                                   settings)
    rewards = LocalRewards(rc.rewards)
    rows = []
    try:
        for start in range(0, len(prompts), batch_prompts):
            chunk = prompts[start:start + batch_prompts]
            groups = backend.generate([renderer.render(p) for p in chunk], k)
            scores = np.array([r.score for r in rewards.score(reward_items(chunk, groups))]).reshape(len(chunk), k)
            rows += [{"id": p.id, "domain": p.domain, "k": k, "pass_rate": float((s >= rc.pass_threshold).mean()),
                      "mean_score": float(s.mean())} for p, s in zip(chunk, scores)]
    finally:
        rewards.close()
    write_pass_rates(output, rows)
    by_domain: dict[str, list[float]] = {}
    for row in rows:
        by_domain.setdefault(row["domain"], []).append(row["pass_rate"])
    return {"output": output, "prompts": len(rows), "k": k,
            "pass_rate_by_domain": {d: float(np.mean(v)) for d, v in sorted(by_domain.items())}}
