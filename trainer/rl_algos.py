"""RLCS algorithm pieces as pure functions: advantages, policy loss, loss aggregation, curriculum weights,
dynamic-sampling expansion and group selection.

    rewards (G, k) ──advantage estimator──▶ advantages (G, k)            ADVANTAGE_ESTIMATORS: grpo, grpo_no_std
    log-probs, old log-probs, advantages (N,) ──policy loss──▶ (N,)      POLICY_LOSSES: clip_higher (+ dual-clip)
    sample index (N,) ──aggregation──▶ per-token weights (N,)            LOSS_AGGREGATIONS: seq-mean-token-mean, token-mean
    pass rates (P,) ──tiers + weight function──▶ sampling probs (P,)     CURRICULUM_WEIGHTS: informative, gaussian, variance
    uninformative ratio r ──EMA──▶ 1/(1 − EMA(r)), cap──▶ expansion ≥ 1  update_ratio_ema / expansion_factor

Everything here is plain tensor/number code without state, so each piece is tested against a slow Python
reference (tests/test_rl_algos.py). What GLM-4.1V-Thinking fixes (and so what the defaults are): GRPO
group-normalised advantages, no KL and no entropy term, clip-higher with separate low/high clip (0.2 / 0.28),
per-sample aggregation (mean over a response's tokens, then over responses), token-level as an option.
The registries follow verl's `core_algos` (register by name, look up from the config); the code is ours.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

from vlmloom.schemas.registry import Registry

ADVANTAGE_ESTIMATORS: Registry[Callable[..., torch.Tensor]] = Registry("advantage estimator")
POLICY_LOSSES: Registry[Callable[..., tuple[torch.Tensor, torch.Tensor]]] = Registry("policy loss")
LOSS_AGGREGATIONS: Registry[Callable[[torch.Tensor], torch.Tensor]] = Registry("loss aggregation")
CURRICULUM_WEIGHTS: Registry[Callable[..., torch.Tensor]] = Registry("curriculum weight function")


# ------------------------------------------------------------------------------------------------
# advantages
# ------------------------------------------------------------------------------------------------
GRPO_STD = ("population", "unbiased")  # the choices of `rlcs.advantage_std`


@ADVANTAGE_ESTIMATORS.register("grpo")
def grpo_advantages(rewards: torch.Tensor, *, eps: float = 1e-6, std: str = "population") -> torch.Tensor:
    """Group-normalised advantages: (r − mean_group) / (std_group + eps).

    rewards: float (G, k), one row per prompt group of k responses. Returns float32 (G, k).
    std "population" (the default; divides by k, correction 0: the group is every response drawn for the prompt,
    and a group of one is defined) or "unbiased" (divides by k − 1, as torch.std and verl's GRPO do; for 0/1
    rewards it shrinks advantages by √((k−1)/k)). A group whose rewards are all equal gets exactly 0 (not a
    rounding residue over eps): it carries no learning signal.
    """
    if std not in GRPO_STD:
        raise ValueError(f"grpo std {std!r}: use one of {list(GRPO_STD)}")
    rewards = rewards.double()
    mean = rewards.mean(dim=1, keepdim=True)
    correction = 0 if std == "population" or rewards.shape[1] < 2 else 1
    std_group = rewards.std(dim=1, keepdim=True, correction=correction)
    adv = (rewards - mean) / (std_group + eps)
    return torch.where(_uniform_groups(rewards)[:, None], torch.zeros_like(adv), adv).float()


@ADVANTAGE_ESTIMATORS.register("grpo_no_std")
def grpo_mean_advantages(rewards: torch.Tensor, *, eps: float = 1e-6, std: str = "population") -> torch.Tensor:
    """Group-centred advantages without the std division (Dr. GRPO): r − mean_group. rewards (G, k) → (G, k).
    Groups with equal rewards get exactly 0. `eps` and `std` are accepted for a common signature and unused."""
    del eps, std
    rewards = rewards.double()
    adv = rewards - rewards.mean(dim=1, keepdim=True)
    return torch.where(_uniform_groups(rewards)[:, None], torch.zeros_like(adv), adv).float()


def _uniform_groups(rewards: torch.Tensor) -> torch.Tensor:
    """(G, k) → bool (G,): the group's rewards are all equal."""
    return rewards.amax(dim=1) == rewards.amin(dim=1)


def uninformative_ratio(rewards: torch.Tensor) -> float:
    """Share r of groups whose responses all scored the same (all correct or all wrong): rewards (G, k) → r in
    [0, 1]; 0 for G = 0. These groups have zero advantage and teach nothing."""
    if rewards.shape[0] == 0:
        return 0.0
    return float(_uniform_groups(rewards).double().mean())


# ------------------------------------------------------------------------------------------------
# policy loss and its aggregation
# ------------------------------------------------------------------------------------------------
LOG_RATIO_CLAMP = 20.0  # |log π − log π_old| is clamped here before exp (verl's bound): exp(20) ≈ 4.9e8, finite


class PolicyLossOutput(NamedTuple):
    """Per-token policy loss and what the clips did, all (N,): the metrics are means of these over loss tokens."""

    loss: torch.Tensor  # float: the per-token loss to aggregate
    clipped_high: torch.Tensor  # bool: A > 0 and ρ > 1 + clip_high (the gradient is cut)
    clipped_low: torch.Tensor  # bool: A < 0 and ρ < 1 − clip_low
    dual_clipped: torch.Tensor  # bool: A < 0 and ρ > clip_ratio_c (the dual clip bounded the loss)
    ratio: torch.Tensor  # float: ρ = exp(clamped log-ratio), detached


@POLICY_LOSSES.register("clip_higher")
def clip_higher_policy_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor, *,
                            clip_low: float = 0.2, clip_high: float = 0.28,
                            clip_ratio_c: float = 0.0) -> PolicyLossOutput:
    """PPO clipped surrogate with separate low/high clip (DAPO's clip-higher); no KL, no entropy term.

    log_probs, old_log_probs, advantages: float (N,) over response tokens. ρ = exp(clamp(log_probs −
    old_log_probs, ±LOG_RATIO_CLAMP)) — the clamp keeps ρ finite when a later update of the same iteration has
    moved far (a log-ratio of 100 gave inf/nan before). loss = −min(ρ·A, clip(ρ, 1 − clip_low, 1 + clip_high)·A);
    with `clip_ratio_c` > 1 (dual-clip, Ye et al. 2020, as verl's `compute_policy_loss`), tokens with A < 0 take
    min(that, −A·clip_ratio_c), so a huge ratio on a bad token cannot blow the loss up; 0 disables it.
    A higher upper clip lets rare tokens with positive advantage grow faster, which keeps exploration alive
    without an entropy bonus.
    """
    if clip_ratio_c and clip_ratio_c <= 1.0:
        raise ValueError(f"clip_ratio_c ({clip_ratio_c}) must be > 1 (or 0 to disable the dual clip)")
    log_ratio = torch.clamp(log_probs - old_log_probs, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    cut = clipped > unclipped
    negative = advantages < 0
    dual = torch.zeros_like(cut)
    if clip_ratio_c:
        bound = -advantages * clip_ratio_c
        dual = negative & (loss > bound)
        loss = torch.where(negative, torch.minimum(loss, bound), loss)
    return PolicyLossOutput(loss, cut & (advantages > 0), cut & negative, dual, ratio.detach())


@LOSS_AGGREGATIONS.register("seq-mean-token-mean")
def seq_mean_token_mean_weights(sample_index: torch.Tensor) -> torch.Tensor:
    """Per-sample aggregation (the paper's default): each response's token losses are averaged, then responses.

    sample_index: long (N,), the response each loss token belongs to. Returns float (N,) weights 1/T_s, so that
    Σ w·loss = Σ_s mean_t loss_s,t; the step's denominator is then Σ w = the number of responses in the step.
    """
    _, inverse, counts = torch.unique(sample_index, return_inverse=True, return_counts=True)
    return 1.0 / counts[inverse].double()


@LOSS_AGGREGATIONS.register("token-mean")
def token_mean_weights(sample_index: torch.Tensor) -> torch.Tensor:
    """Token-level aggregation: every loss token weighs 1; the step's denominator Σ w is its token count.
    sample_index: long (N,) → float (N,) ones."""
    return torch.ones(sample_index.shape[0], dtype=torch.float64)


# ------------------------------------------------------------------------------------------------
# curriculum
# ------------------------------------------------------------------------------------------------
@CURRICULUM_WEIGHTS.register("informative")
def informative_weight(pass_rate: torch.Tensor, *, group_size: int = 8, **_: float) -> torch.Tensor:
    """P(a group of k responses is not uniform) = 1 − p^k − (1 − p)^k for pass rate p: exactly the chance the
    prompt yields a non-zero GRPO advantage, so sampling by it spends rollouts where learning happens. 0 at p ∈
    {0, 1}, maximal at 0.5; flat in the middle for large k (k = 8: 0.90 at p = 0.25). pass_rate (T,) → (T,)."""
    p = pass_rate.double().clamp(0.0, 1.0)
    return 1.0 - p**group_size - (1.0 - p) ** group_size


@CURRICULUM_WEIGHTS.register("gaussian")
def gaussian_weight(pass_rate: torch.Tensor, *, center: float = 0.5, width: float = 0.25, **_: float) -> torch.Tensor:
    """exp(−(p − center)² / (2·width²)): a tunable bump around `center`. pass_rate (T,) → (T,)."""
    p = pass_rate.double()
    return torch.exp(-((p - center) ** 2) / (2 * width**2))


@CURRICULUM_WEIGHTS.register("variance")
def variance_weight(pass_rate: torch.Tensor, **_: float) -> torch.Tensor:
    """4·p·(1 − p): the Bernoulli reward variance, scaled to 1 at p = 0.5. pass_rate (T,) → (T,)."""
    p = pass_rate.double().clamp(0.0, 1.0)
    return 4.0 * p * (1.0 - p)


def assign_tiers(pass_rates: torch.Tensor, num_tiers: int) -> torch.Tensor:
    """Equal-width difficulty tiers over [0, 1]: pass_rates (P,) → long (P,) in 0..num_tiers−1 (0 = hardest).
    Pass rate exactly 1 falls into the last tier."""
    return torch.clamp((pass_rates.double() * num_tiers).floor().long(), 0, num_tiers - 1)


def tier_weights(pass_rates: torch.Tensor, tiers: torch.Tensor, num_tiers: int, weight_fn: str, *,
                 min_weight: float, **weight_kwargs: float) -> torch.Tensor:
    """Weight of each tier: the weight function at the mean pass rate of the tier's prompts (the tier midpoint
    when it is empty), floored at `min_weight` so solved and unsolved prompts are revisited now and then (their
    pass rates may be stale). pass_rates (P,), tiers long (P,) → float64 (num_tiers,)."""
    sums = torch.zeros(num_tiers, dtype=torch.float64).index_add_(0, tiers, pass_rates.double())
    counts = torch.zeros(num_tiers, dtype=torch.float64).index_add_(0, tiers, torch.ones_like(pass_rates, dtype=torch.float64))
    midpoints = (torch.arange(num_tiers, dtype=torch.float64) + 0.5) / num_tiers
    centre = torch.where(counts > 0, sums / counts.clamp(min=1), midpoints)
    return CURRICULUM_WEIGHTS.get(weight_fn)(centre, **weight_kwargs).clamp(min=min_weight)


def prompt_sampling_probs(pass_rates: torch.Tensor, num_tiers: int, weight_fn: str, *, min_weight: float,
                          **weight_kwargs: float) -> torch.Tensor:
    """Sampling probability of each prompt: its tier's weight, normalised over all prompts (so a tier's share is
    its weight × its size). pass_rates (P,) → float64 (P,) summing to 1."""
    tiers = assign_tiers(pass_rates, num_tiers)
    weights = tier_weights(pass_rates, tiers, num_tiers, weight_fn, min_weight=min_weight, **weight_kwargs)[tiers]
    return weights / weights.sum()


# ------------------------------------------------------------------------------------------------
# dynamic sampling expansion and group selection
# ------------------------------------------------------------------------------------------------
def expansion_factor(ratio_ema: float, cap: float) -> float:
    """The paper's dynamic sampling expansion: 1 / (1 − EMA(r)), within [1, cap], where r is the share of
    uninformative groups (all responses scored the same) and EMA(r) its exponential moving average. EMA(r) = 1
    (every group uninformative so far) gives the cap instead of infinity, so hard data widens sampling as far as
    allowed and never aborts the run."""
    if ratio_ema >= 1.0:
        return float(cap)
    return float(min(max(1.0 / (1.0 - ratio_ema), 1.0), cap))


def update_ratio_ema(ema: float, ratio: float, *, decay: float) -> float:
    """EMA of the uninformative-group ratio r: decay·ema + (1 − decay)·r, in [0, 1]. Averaging r (not the factor)
    is the paper's rule. The two differ whenever r varies: with r alternating 0 / 0.9 (decay 0.9, cap 4) the factor
    1/(1 − EMA(r)) settles near 1.9, an EMA of the capped factors min(1/(1 − r), 4) (the earlier code) near 2.6."""
    return float(min(max(decay * ema + (1.0 - decay) * ratio, 0.0), 1.0))


def prompts_to_roll_out(batch_prompts: int, factor: float, cap: float) -> int:
    """How many prompts to roll out: ⌈B·factor⌉ (factor = expansion_factor(EMA(r))), at least B, at most ⌈B·cap⌉."""
    return int(min(max(math.ceil(batch_prompts * factor - 1e-9), batch_prompts),
                   math.ceil(batch_prompts * cap - 1e-9)))


def select_balanced_groups(rewards: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the `keep` most balanced informative groups (mean reward closest to ½, i.e. correct ≈ incorrect
    for 0/1 rewards), ties broken by group order. rewards (G, k) → long (≤ keep,), ascending.

    Uniform groups are never kept: their advantage is zero, so they would only add to the step's denominator
    (diluting the update) and cost a forward/backward pass.
    """
    balance = (rewards.double().mean(dim=1) - 0.5).abs()
    informative = torch.nonzero(~_uniform_groups(rewards), as_tuple=True)[0]
    order = sorted(informative.tolist(), key=lambda g: (float(balance[g]), g))
    return torch.tensor(sorted(order[:keep]), dtype=torch.long)
