"""Compute balance: order packed sequences so the data-parallel ranks of one step cost about the same.

A packed sequence's attention cost is Σ len² over its samples (with per-sample masking), so two full
sequences can differ several-fold in forward/backward time, and every step waits for its slowest rank.
Within a window of `window_steps` steps, sequences are sorted by cost and dealt in consecutive groups of
`world_size` (one group = one step, similar costs together); the steps are then put back in a seeded
random order so cost does not become a curriculum. The pack step writes step s's sequence for rank r into
rank r's shard stream (see pack.py), and the reader keeps ranks step-aligned.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, kw_only=True)
class BalanceConfig:
    """Grouping of packed sequences into data-parallel steps."""
    world_size: int = 1  # data-parallel ranks the shards are laid out for; 1 disables balancing
    window_steps: int = 64  # steps whose sequences are balanced together (bounded reordering)

    def validate(self) -> None:
        from vlmloom.schemas.config import ConfigError

        if self.world_size < 1 or self.window_steps < 1:
            raise ConfigError("balance.world_size and balance.window_steps must be >= 1")


def attention_cost(seq_lens) -> int:
    return int(sum(int(n) * int(n) for n in seq_lens))


def balanced_order(costs: np.ndarray, world_size: int, window_steps: int, seed: int) -> np.ndarray:
    """A permutation of sequence indices: consecutive groups of `world_size` are steps of similar cost."""
    costs = np.asarray(costs, np.int64)
    n = costs.size
    if world_size <= 1 or n == 0:
        return np.arange(n)
    rng = np.random.default_rng([seed, 0xBA1A])
    out = []
    window = world_size * window_steps
    for start in range(0, n, window):
        idx = np.arange(start, min(start + window, n))
        full = (idx.size // world_size) * world_size
        ranked = idx[np.argsort(-costs[idx], kind="stable")]
        steps = ranked[:full].reshape(-1, world_size)
        steps = steps[rng.permutation(steps.shape[0])]
        out.append(steps.reshape(-1))
        out.append(ranked[full:])  # a last partial step keeps its order
    return np.concatenate(out)


def imbalance(costs: np.ndarray, world_size: int) -> dict:
    """max/mean rank cost per step (step = consecutive `world_size` sequences): mean and worst over steps."""
    costs = np.asarray(costs, np.float64)
    full = (costs.size // world_size) * world_size
    if world_size <= 1 or full == 0:
        return {"mean_max_over_mean": 1.0, "worst_max_over_mean": 1.0, "steps": int(costs.size)}
    steps = costs[:full].reshape(-1, world_size)
    ratio = steps.max(1) / np.maximum(steps.mean(1), 1e-9)
    return {"mean_max_over_mean": round(float(ratio.mean()), 4), "worst_max_over_mean": round(float(ratio.max()), 4),
            "steps": int(steps.shape[0])}
