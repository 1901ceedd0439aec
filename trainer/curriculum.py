"""Curriculum sampling for RLCS: per-prompt pass rates (offline pass@k merged with online rollouts) → difficulty
tiers → tier weights → which prompts the next iteration rolls out.

    offline pass-rate file (JSONL {id, pass_rate, k}, written by `vlmloom rlcs-passk`)
        + online counts updated from every rollout group
        → merged pass rate per prompt → `rl_algos.prompt_sampling_probs` (recomputed every iteration)
        → `CurriculumSampler.sample(n)`: n prompt indices

Choices (all `CurriculumConfig` fields):
- merged pass rate = (w·offline + s) / (w + n), where s, n are the prompt's online successes and trials and w
  the weight of the offline estimate. The offline pass@k starts as `offline_weight` pseudo-trials (a Beta prior);
  prompts with no offline rate start at `unknown_pass_rate` (default ½: unknown prompts look informative and get
  tried early) with a weight of one pseudo-trial.
- each rollout group of the prompt (k responses, c of them passing) updates, in this order:
      w ← offline_decay · w        the offline estimate fades as online evidence arrives (it was measured on an
                                   older model); after g groups it weighs offline_weight · offline_decay^g
      s ← online_decay · s + c     older online groups weigh less, so the rate tracks the current policy
      n ← online_decay · n + k
  With the defaults (offline_weight 4, both decays 0.5, k = 8) a prompt that passed offline (1.0) and fails every
  online group reads 2/10 = 0.2, then 1/13 ≈ 0.077, then 0.5/14.5 ≈ 0.034: it sinks to the all-fail tier
  instead of staying at 0.20 for ever (the earlier rule kept w fixed, and n saturates at k/(1 − online_decay)).
- tiers: `num_tiers` equal-width bins of pass rate; each tier's weight is `weight_fn` at the tier's mean pass rate,
  floored at `min_weight`. The default `informative` (1 − p^k − (1 − p)^k) is the probability that a group of k
  responses carries a non-zero GRPO advantage, so it directly targets what dynamic sampling otherwise filters out.
  Tiers (rather than per-prompt weights) make the curriculum robust to noisy per-prompt estimates from few rollouts.
The sampler's state (RNG, online counts) is a plain dict that goes into the checkpoint.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from vlmloom.trainer import rl_algos
from vlmloom.trainer.config import CurriculumConfig


class CurriculumSampler:
    """Draws prompt indices for an iteration and tracks pass rates; `enabled=False` draws uniformly (baseline)."""

    def __init__(self, prompt_ids: Sequence[str], config: CurriculumConfig, *, group_size: int, seed: int,
                 offline: dict[str, float] | None = None):
        if not prompt_ids:
            raise ValueError("curriculum: no prompts to sample from")
        self.ids = list(prompt_ids)
        self.config = config
        self.group_size = group_size
        offline = offline or {}
        self.prior = np.array([offline.get(i, config.unknown_pass_rate) for i in self.ids], np.float64)
        # the offline (or unknown) prior's weight in pseudo-trials; it decays with every online group (update)
        self.prior_weight = np.array([config.offline_weight if i in offline else 1.0 for i in self.ids], np.float64)
        self.successes = np.zeros(len(self.ids), np.float64)
        self.trials = np.zeros(len(self.ids), np.float64)
        self.rng = np.random.default_rng(seed)

    def pass_rates(self) -> np.ndarray:
        """Merged pass rate per prompt, float64 (P,)."""
        return (self.prior_weight * self.prior + self.successes) / (self.prior_weight + self.trials)

    def probabilities(self) -> np.ndarray:
        """Sampling probability per prompt for the next draw (uniform when the curriculum is off)."""
        if not self.config.enabled:
            return np.full(len(self.ids), 1.0 / len(self.ids))
        c = self.config
        probs = rl_algos.prompt_sampling_probs(torch.from_numpy(self.pass_rates()), c.num_tiers, c.weight_fn,
                                               min_weight=c.min_weight, group_size=self.group_size,
                                               **c.weight_params)
        return probs.numpy()

    def sample(self, n: int) -> list[int]:
        """n prompt indices, without replacement while prompts last (a larger n starts another round)."""
        probs = self.probabilities()
        out: list[int] = []
        while len(out) < n:
            take = min(n - len(out), len(self.ids))
            out += self.rng.choice(len(self.ids), size=take, replace=False, p=probs).tolist()
        return out

    def update(self, index: int, passed: Iterable[bool]) -> None:
        """Fold one rollout group of prompt `index` into its online counts (older counts decay first)."""
        passed = [bool(p) for p in passed]
        self.prior_weight[index] *= self.config.offline_decay
        self.successes[index] = self.config.online_decay * self.successes[index] + sum(passed)
        self.trials[index] = self.config.online_decay * self.trials[index] + len(passed)

    def tier_summary(self) -> dict[str, Any]:
        """Prompts and weight per tier, for the iteration's metrics."""
        c = self.config
        rates = torch.from_numpy(self.pass_rates())
        tiers = rl_algos.assign_tiers(rates, c.num_tiers)
        weights = rl_algos.tier_weights(rates, tiers, c.num_tiers, c.weight_fn, min_weight=c.min_weight,
                                        group_size=self.group_size, **c.weight_params)
        counts = torch.bincount(tiers, minlength=c.num_tiers)
        return {"tier_prompts": counts.tolist(), "tier_weights": [round(float(w), 4) for w in weights]}

    def state_dict(self) -> dict[str, Any]:
        return {"ids_hash": _ids_hash(self.ids), "successes": self.successes.tolist(), "trials": self.trials.tolist(),
                "prior_weight": self.prior_weight.tolist(), "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["ids_hash"] != _ids_hash(self.ids):
            raise ValueError("curriculum state was saved for a different prompt set; resume with the same prompts")
        self.successes = np.asarray(state["successes"], np.float64)
        self.trials = np.asarray(state["trials"], np.float64)
        if "prior_weight" in state:  # absent in checkpoints written before the offline decay
            self.prior_weight = np.asarray(state["prior_weight"], np.float64)
        self.rng.bit_generator.state = state["rng"]


def _ids_hash(ids: list[str]) -> str:
    import hashlib

    return hashlib.sha1("\x00".join(ids).encode("utf-8", "surrogateescape")).hexdigest()


def read_pass_rates(path: str) -> dict[str, float]:
    """JSONL rows {id, pass_rate[, k]} → {id: pass_rate}; a rate outside [0, 1] or a duplicate id is an error."""
    out: dict[str, float] = {}
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            rate = float(row["pass_rate"])
            if not 0.0 <= rate <= 1.0 or row["id"] in out:
                raise ValueError(f"{path}:{line_no}: pass_rate {rate} outside [0, 1] or duplicate id {row['id']!r}")
            out[str(row["id"])] = rate
    return out


def write_pass_rates(path: str, rows: Iterable[dict[str, Any]]) -> str:
    """Write {id, pass_rate, k, domain} rows as JSONL, atomically (temporary file, then rename)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path
