"""RLCS algorithm pieces (trainer/rl_algos.py) against slow plain-Python references, plus their invariants."""
from __future__ import annotations

import math
import random

import pytest
import torch

from vlmloom.trainer import rl_algos as A


def ref_grpo(rows: list[list[float]], eps: float = 1e-6) -> list[list[float]]:
    out = []
    for row in rows:
        mean = sum(row) / len(row)
        std = math.sqrt(sum((r - mean) ** 2 for r in row) / len(row))
        out.append([0.0 if max(row) == min(row) else (r - mean) / (std + eps) for r in row])
    return out


def random_rewards(rng: random.Random, groups: int, k: int) -> list[list[float]]:
    rows = []
    for g in range(groups):
        kind = g % 4
        if kind == 0:
            rows.append([1.0] * k)  # all correct
        elif kind == 1:
            rows.append([0.1] * k)  # all equal, not representable exactly: must still give exactly 0
        elif kind == 2:
            rows.append([float(rng.random() < 0.5) for _ in range(k)])
        else:
            rows.append([rng.random() for _ in range(k)])
    return rows


def test_grpo_matches_reference_and_uniform_groups_are_zero():
    rng = random.Random(0)
    rows = random_rewards(rng, 40, 6)
    got = A.ADVANTAGE_ESTIMATORS.get("grpo")(torch.tensor(rows))
    torch.testing.assert_close(got, torch.tensor(ref_grpo(rows)), rtol=1e-5, atol=1e-5)
    uniform = [g for g, row in enumerate(rows) if max(row) == min(row)]
    assert uniform and bool((got[uniform] == 0).all())
    # group-normalised: every informative group has mean 0 and population std ≈ 1
    informative = [g for g in range(len(rows)) if g not in uniform]
    torch.testing.assert_close(got[informative].mean(1), torch.zeros(len(informative)), atol=1e-5, rtol=0)


def test_grpo_no_std_and_single_response_groups():
    rows = [[1.0, 0.0, 0.0], [0.3, 0.3, 0.3]]
    got = A.ADVANTAGE_ESTIMATORS.get("grpo_no_std")(torch.tensor(rows))
    torch.testing.assert_close(got, torch.tensor([[2 / 3, -1 / 3, -1 / 3], [0.0, 0.0, 0.0]]))
    assert bool((A.grpo_advantages(torch.tensor([[0.7], [0.0]])) == 0).all())
    with pytest.raises(KeyError, match="known: grpo"):
        A.ADVANTAGE_ESTIMATORS.get("gae")


def ref_policy_loss(lp, old, adv, low, high):
    losses, clipped = [], []
    for a, b, c in zip(lp, old, adv):
        ratio = math.exp(a - b)
        unclipped = -c * ratio
        clip = -c * min(max(ratio, 1 - low), 1 + high)
        losses.append(max(unclipped, clip))
        clipped.append(clip > unclipped)
    return losses, clipped


def test_clip_higher_matches_reference():
    rng = random.Random(1)
    n = 500
    lp = [rng.uniform(-3, 0) for _ in range(n)]
    old = [x + rng.uniform(-0.6, 0.6) for x in lp]
    adv = [rng.uniform(-2, 2) for _ in range(n)]
    out = A.POLICY_LOSSES.get("clip_higher")(torch.tensor(lp, dtype=torch.float64),
                                             torch.tensor(old, dtype=torch.float64),
                                             torch.tensor(adv, dtype=torch.float64), clip_low=0.2, clip_high=0.28)
    loss, clipped = out.loss, out.clipped_high | out.clipped_low
    ref_loss, ref_clipped = ref_policy_loss(lp, old, adv, 0.2, 0.28)
    torch.testing.assert_close(loss, torch.tensor(ref_loss, dtype=torch.float64))
    assert clipped.tolist() == ref_clipped
    assert 0 < sum(ref_clipped) < n  # the test data exercises both branches


def test_clip_is_asymmetric():
    """ratio 1.25 with A > 0 is inside clip-higher's upper bound (1.28) but outside a symmetric 0.2 clip."""
    lp, old, adv = torch.tensor([math.log(1.25)]), torch.tensor([0.0]), torch.tensor([1.0])
    higher, clipped, *_ = A.clip_higher_policy_loss(lp, old, adv, clip_low=0.2, clip_high=0.28)
    symmetric, clipped_sym, *_ = A.clip_higher_policy_loss(lp, old, adv, clip_low=0.2, clip_high=0.2)
    assert not clipped.item() and clipped_sym.item()
    torch.testing.assert_close(higher, torch.tensor([-1.25]))
    torch.testing.assert_close(symmetric, torch.tensor([-1.2]))


def ref_aggregate(losses: list[float], samples: list[int], mode: str) -> float:
    by_sample: dict[int, list[float]] = {}
    for loss, s in zip(losses, samples):
        by_sample.setdefault(s, []).append(loss)
    if mode == "token-mean":
        return sum(losses) / len(losses)
    return sum(sum(v) / len(v) for v in by_sample.values()) / len(by_sample)


@pytest.mark.parametrize("mode", ["seq-mean-token-mean", "token-mean"])
def test_aggregation_over_a_step_split_in_micro_batches(mode):
    """Weights computed per micro-batch, summed over the step and divided by Σ weights of the whole step, equal
    the reference aggregate of the step (samples never straddle micro-batches, as in packing)."""
    rng = random.Random(2)
    lengths = [rng.randint(1, 9) for _ in range(13)]
    samples = [s for s, n in enumerate(lengths) for _ in range(n)]
    losses = [rng.uniform(-1, 1) for _ in samples]
    cut = sum(lengths[:6])  # two micro-batches: samples 0-5 and 6-12
    numerator, denominator = 0.0, 0.0
    for part in (slice(0, cut), slice(cut, None)):
        w = A.LOSS_AGGREGATIONS.get(mode)(torch.tensor(samples[part]))
        numerator += float((w * torch.tensor(losses[part], dtype=torch.float64)).sum())
        denominator += float(w.sum())
    assert numerator / denominator == pytest.approx(ref_aggregate(losses, samples, mode), rel=1e-12)
    assert denominator == pytest.approx(len(lengths) if mode == "seq-mean-token-mean" else len(samples))


def ref_probs(rates: list[float], tiers: int, fn, floor: float) -> list[float]:
    tier_of = [min(int(r * tiers), tiers - 1) for r in rates]
    weights = []
    for t in range(tiers):
        members = [r for r, tt in zip(rates, tier_of) if tt == t]
        centre = sum(members) / len(members) if members else (t + 0.5) / tiers
        weights.append(max(fn(centre), floor))
    per_prompt = [weights[t] for t in tier_of]
    return [w / sum(per_prompt) for w in per_prompt]


@pytest.mark.parametrize("name,fn", [
    ("informative", lambda p: 1 - p**4 - (1 - p) ** 4),
    ("variance", lambda p: 4 * p * (1 - p)),
    ("gaussian", lambda p: math.exp(-((p - 0.5) ** 2) / (2 * 0.25**2))),
])
def test_curriculum_probs_match_reference(name, fn):
    rng = random.Random(3)
    rates = [rng.choice([0.0, 1.0, rng.random()]) for _ in range(60)]
    got = A.prompt_sampling_probs(torch.tensor(rates, dtype=torch.float64), 5, name, min_weight=0.02, group_size=4)
    assert got.tolist() == pytest.approx(ref_probs(rates, 5, fn, 0.02), rel=1e-9)
    assert float(got.sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["informative", "variance", "gaussian"])
def test_curriculum_weight_moves_away_from_zero_and_one(name):
    """A prompt always solved or never solved is sampled less than a mid-range one; the floor keeps it possible."""
    probs = A.prompt_sampling_probs(torch.tensor([0.0, 0.5, 1.0]), 5, name, min_weight=0.05, group_size=8)
    assert probs[1] > probs[0] and probs[1] > probs[2]
    assert probs[0] > 0 and probs[2] > 0
    edge = A.CURRICULUM_WEIGHTS.get(name)(torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0]), group_size=8)
    assert edge[0] < edge[1] < edge[2] and edge[4] < edge[3] < edge[2]


def test_expansion_bounds_and_ema():
    """Invariants only; the formula itself is checked against hand-computed sequences in test_rl_paper_formulas."""
    rng = random.Random(4)
    ema = 0.0
    for _ in range(300):
        ratio = rng.choice([0.0, 1.0, rng.random()])
        ema = A.update_ratio_ema(ema, ratio, decay=0.8)
        assert 0.0 <= ema <= 1.0
        factor = A.expansion_factor(ema, 4.0)
        assert 1.0 <= factor <= 4.0
        assert 8 <= A.prompts_to_roll_out(8, factor, 4.0) <= 32
    assert A.expansion_factor(0.5, 4.0) == 2.0
    assert A.expansion_factor(1.0, 3.0) == 3.0  # every group uninformative so far: widen to the cap, never abort
    assert A.prompts_to_roll_out(8, 3.0, 3.0) == 24


def test_select_balanced_groups():
    rewards = torch.tensor([[1.0, 1.0, 1.0, 1.0],   # uniform: never kept
                            [1.0, 0.0, 0.0, 0.0],   # 0.25 from ½
                            [1.0, 1.0, 0.0, 0.0],   # balanced
                            [0.0, 0.0, 0.0, 0.0],   # uniform
                            [0.0, 1.0, 0.0, 1.0],   # balanced
                            [1.0, 1.0, 1.0, 0.0]])  # 0.25 from ½, later than group 1
    assert A.select_balanced_groups(rewards, 3).tolist() == [1, 2, 4]
    assert A.select_balanced_groups(rewards, 10).tolist() == [1, 2, 4, 5]
    assert A.select_balanced_groups(rewards[[0, 3]], 2).tolist() == []
    assert A.uninformative_ratio(rewards) == pytest.approx(2 / 6)
    assert A.uninformative_ratio(torch.zeros(0, 4)) == 0.0
