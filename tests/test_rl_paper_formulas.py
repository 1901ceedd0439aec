"""Issue 21: the paper's RLCS formulas against sequences computed by hand (the numbers are written here, derived
on paper; none is produced by calling a copy of the code): dynamic sampling expansion 1/(1 − EMA(r)) with its cap,
a curriculum whose offline pass@k fades as online evidence arrives, the log-ratio clamp and dual-clip of the
policy loss, and the GRPO std choice."""
from __future__ import annotations

import math

import pytest
import torch

from vlmloom.schemas.config import ConfigError, build_config
from vlmloom.trainer import rl_algos as A
from vlmloom.trainer.config import CurriculumConfig, RLCSConfig
from vlmloom.trainer.curriculum import CurriculumSampler


def test_expansion_is_one_over_one_minus_the_ema_of_r_with_its_cap():
    """decay 0.5, cap 4, B = 8, r = 1, 1, 0, 1, 1, 1 (r: share of uninformative groups of an iteration).
    EMA(r) after each: 0.5, 0.75, 0.375, 0.6875, 0.84375, 0.921875
    factor 1/(1 − EMA): 2, 4, 1.6, 3.2, 6.4 → cap 4, 12.8 → cap 4
    prompts ⌈8·factor⌉: 16, 32, 13 (12.8), 26 (25.6), 32, 32"""
    ema, emas, factors, prompts = 0.0, [], [], []
    for r in [1, 1, 0, 1, 1, 1]:
        ema = A.update_ratio_ema(ema, r, decay=0.5)
        factor = A.expansion_factor(ema, 4.0)
        emas.append(ema), factors.append(factor), prompts.append(A.prompts_to_roll_out(8, factor, 4.0))
    assert emas == [0.5, 0.75, 0.375, 0.6875, 0.84375, 0.921875]
    assert factors == pytest.approx([2.0, 4.0, 1.6, 3.2, 4.0, 4.0], abs=1e-12)
    assert prompts == [16, 32, 13, 26, 32, 32]


def test_expansion_on_alternating_r_is_the_papers_not_an_ema_of_factors():
    """r alternating 0.9, 0 with decay 0.9, cap 4. Steady state of EMA(r): b = 0.9·a + 0.1·0.9 after a 0.9 step,
    a = 0.9·b after a 0 step ⇒ b = 0.09/0.19, a = 0.081/0.19; factors 1/(1 − b) = 0.19/0.10 = 1.9 and
    1/(1 − a) = 0.19/0.109 ≈ 1.7431. (The earlier EMA of min(1/(1 − r), 4) settles at 0.49/0.19 ≈ 2.579.)"""
    ema = 0.0
    for _ in range(400):
        ema = A.update_ratio_ema(ema, 0.9, decay=0.9)
        after_high = A.expansion_factor(ema, 4.0)
        ema = A.update_ratio_ema(ema, 0.0, decay=0.9)
        after_zero = A.expansion_factor(ema, 4.0)
    assert after_high == pytest.approx(1.9, abs=1e-9)
    assert after_zero == pytest.approx(0.19 / 0.109, abs=1e-9)


def test_offline_pass_at_k_fades_as_online_evidence_arrives():
    """offline_weight 4, offline_decay 0.5, online_decay 0.5, k = 8. Prompt a passed offline (1.0) and fails every
    online group: (w·1 + s)/(w + n) with w = 2, 1, 0.5 and n = 8, 12, 14 ⇒ 2/10, 1/13, 0.5/14.5 = 1/29.
    Prompt b failed offline (0.0) and passes every group: (0 + 8)/(2 + 8) = 0.8, then (0 + 12)/(1 + 12) = 12/13."""
    sampler = CurriculumSampler(["a", "b", "c"], CurriculumConfig(offline_weight=4.0, offline_decay=0.5,
                                                                  online_decay=0.5), group_size=8, seed=0,
                                offline={"a": 1.0, "b": 0.0})
    assert sampler.pass_rates().tolist() == [1.0, 0.0, 0.5]
    seen = []
    for _ in range(3):
        sampler.update(0, [False] * 8)
        seen.append(sampler.pass_rates()[0])
    assert seen == pytest.approx([2 / 10, 1 / 13, 1 / 29], abs=1e-12)
    sampler.update(1, [True] * 8)
    assert sampler.pass_rates()[1] == pytest.approx(0.8, abs=1e-12)
    sampler.update(1, [True] * 8)
    assert sampler.pass_rates()[1] == pytest.approx(12 / 13, abs=1e-12)

    # tiers of width 0.2: a (1/29) in tier 0, c (1/2) in tier 2, b (12/13) in tier 4, one prompt each, so each
    # prompt's weight is informative(p) = 1 − p^8 − (1 − p)^8 at its own rate (all above min_weight 0.05):
    w_a = 1 - (1 / 29) ** 8 - (28 / 29) ** 8  # ≈ 0.24473
    w_c = 1 - 2 * 0.5 ** 8  # = 0.9921875
    w_b = 1 - (12 / 13) ** 8 - (1 / 13) ** 8  # ≈ 0.47291
    total = w_a + w_b + w_c
    assert sampler.probabilities() == pytest.approx([w_a / total, w_b / total, w_c / total], abs=1e-12)
    assert sampler.probabilities()[0] == pytest.approx(0.14, abs=0.005)  # the all-fail prompt: 14 %, was 20 %+


def test_all_pass_and_all_fail_prompts_lose_weight_against_informative_ones():
    """Ten prompts with offline pass@k 1.0 that now fail everything, ten with 0.0 that now pass everything, ten
    balanced: after two online groups each, a balanced prompt is drawn more often than any other. With the
    earlier fixed offline weight the first ten stayed at 4/(4 + 12) = 0.25 → informative 0.90, above the
    balanced prompts' tier."""
    ids = [f"p{i}" for i in range(30)]
    offline = {**{f"p{i}": 1.0 for i in range(10)}, **{f"p{i}": 0.0 for i in range(10, 20)}}
    sampler = CurriculumSampler(ids, CurriculumConfig(), group_size=8, seed=0, offline=offline)
    for _ in range(2):
        for i in range(10):
            sampler.update(i, [False] * 8)
            sampler.update(10 + i, [True] * 8)
            sampler.update(20 + i, [True, False] * 4)
    rates = sampler.pass_rates()
    # hand: all-fail (1·1 + 0)/(1 + 12) = 1/13; all-pass (0 + 12)/(1 + 12) = 12/13;
    # balanced (0.25·0.5 + 6)/(0.25 + 12) = 6.125/12.25 = 0.5
    assert rates[:10] == pytest.approx([1 / 13] * 10) and rates[10:20] == pytest.approx([12 / 13] * 10)
    assert rates[20:] == pytest.approx([0.5] * 10)
    probs = sampler.probabilities()
    assert probs[20:].min() > 2 * probs[:20].max()


def test_policy_loss_by_hand_with_clip_higher_and_dual_clip():
    """clip_low 0.2, clip_high 0.28, dual-clip c = 3; per token (ρ, A) → loss:
    (1.5, +2): −min(3, 1.28·2) = −2.56, clipped high      (0.5, −1): max(0.5, 0.8) = 0.8, clipped low
    (4, −1): max(4, 1.28) = 4 → dual min(4, 3) = 3         (2.5, −1): 2.5 (< 3, no dual)     (1.1, +1): −1.1"""
    ratios = [1.5, 0.5, 4.0, 2.5, 1.1]
    adv = torch.tensor([2.0, -1.0, -1.0, -1.0, 1.0], dtype=torch.float64)
    lp = torch.log(torch.tensor(ratios, dtype=torch.float64))
    out = A.clip_higher_policy_loss(lp, torch.zeros(5, dtype=torch.float64), adv, clip_low=0.2, clip_high=0.28,
                                    clip_ratio_c=3.0)
    assert out.loss.tolist() == pytest.approx([-2.56, 0.8, 3.0, 2.5, -1.1])
    assert out.clipped_high.tolist() == [True, False, False, False, False]
    assert out.clipped_low.tolist() == [False, True, False, False, False]
    assert out.dual_clipped.tolist() == [False, False, True, False, False]
    assert out.ratio.tolist() == pytest.approx(ratios)
    plain = A.clip_higher_policy_loss(lp, torch.zeros(5, dtype=torch.float64), adv)  # dual-clip off (default)
    assert plain.loss.tolist() == pytest.approx([-2.56, 0.8, 4.0, 2.5, -1.1])
    with pytest.raises(ValueError, match="clip_ratio_c"):
        A.clip_higher_policy_loss(lp, lp, adv, clip_ratio_c=0.5)


def test_log_ratio_is_clamped_so_far_off_policy_tokens_stay_finite():
    """log-ratio ±100 (exp(100) overflows float32 to inf; inf·0 advantages gave nan): clamped to ±20, so
    ρ = e^20 ≈ 4.85e8 or e^−20; with A = −1 the dual clip bounds the loss at 3; gradients are finite."""
    lp = torch.tensor([100.0, -100.0, 100.0, 100.0], requires_grad=True)
    adv = torch.tensor([1.0, 1.0, -1.0, 0.0])
    out = A.clip_higher_policy_loss(lp, torch.zeros(4), adv, clip_ratio_c=3.0)
    assert out.loss.tolist() == pytest.approx([-1.28, -math.exp(-20), 3.0, 0.0])
    assert out.ratio[0].item() == pytest.approx(math.exp(20), rel=1e-6)
    out.loss.sum().backward()
    assert torch.isfinite(lp.grad).all()
    without_dual = A.clip_higher_policy_loss(torch.tensor([100.0]), torch.zeros(1), torch.tensor([-1.0]))
    assert without_dual.loss.item() == pytest.approx(math.exp(20), rel=1e-6) and torch.isfinite(without_dual.loss).all()


def test_grpo_std_population_or_unbiased():
    """rewards 1, 0, 0, 0: mean ¼; population var = (9/16 + 3/16)/4 = 3/16, std √3/4 → advantages √3, −1/√3;
    unbiased var = (3/4)/3 = 1/4, std ½ → advantages 1.5, −0.5. The default is population."""
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    population = A.grpo_advantages(rewards, eps=0.0)
    unbiased = A.grpo_advantages(rewards, eps=0.0, std="unbiased")
    assert population[0].tolist() == pytest.approx([math.sqrt(3), -1 / math.sqrt(3)] + [-1 / math.sqrt(3)] * 2)
    assert unbiased[0].tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5])
    assert RLCSConfig().advantage_std == "population"
    with pytest.raises(ValueError, match="population"):
        A.grpo_advantages(rewards, std="sample")
    with pytest.raises(ConfigError, match="advantage_std"):
        build_config(RLCSConfig, {"advantage_std": "sample"}).validate()
    with pytest.raises(ConfigError, match="clip_ratio_c"):
        build_config(RLCSConfig, {"clip_ratio_c": 0.9}).validate()
