"""Bin packing: every item exactly once, capacity respected, near the lower bound, registry behaviour."""
import math

import numpy as np
import pytest

from vlmloom.packing.balance import balanced_order, imbalance
from vlmloom.packing.packers import PACKERS, plan_bins

ALL = ["best_fit_decreasing", "first_fit_decreasing", "greedy"]


def synthetic_lengths(n, cap, seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(math.log(300), 1.0, n), 1, None).astype(int)
    lengths += (rng.random(n) < 0.6) * rng.integers(64, 2305, n)
    return np.minimum(lengths, cap)


def check(bins, lengths, cap):
    flat = sorted(i for b in bins for i in b)
    assert flat == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= cap for b in bins)
    assert all(b == sorted(b) for b in bins)


def test_registry():
    assert PACKERS.names() == sorted(ALL)
    with pytest.raises(KeyError, match="known: best_fit_decreasing"):
        PACKERS.get("nope")
    with pytest.raises(ValueError, match="already registered"):
        PACKERS.register("greedy")(object)


@pytest.mark.parametrize("packer", ALL)
@pytest.mark.parametrize("window,carry", [(0, 0), (7, 0), (7, 3), (100, 64)])
def test_cover_and_capacity(packer, window, carry):
    lengths = synthetic_lengths(500, 4096, seed=1).tolist()
    check(list(plan_bins(lengths, 4096, packer=packer, window=window, carry=carry)), lengths, 4096)


def test_small_exact_cases():
    assert list(plan_bins([], 10)) == []
    assert list(plan_bins([10], 10)) == [[0]]
    # BFD: 6 → bin0, 5 → bin1, 4 → bin0 (exact fit), 4 → bin1, 1 → bin1
    assert list(plan_bins([4, 6, 5, 4, 1], 10, window=0)) == [[0, 1], [2, 3, 4]]
    assert list(plan_bins([4, 6, 5, 4, 1], 10, packer="greedy")) == [[0, 1], [2, 3, 4]]
    assert list(plan_bins([6, 5, 4, 4, 1], 10, packer="greedy")) == [[0], [1, 2], [3, 4]]
    with pytest.raises(ValueError, match="item 1 has length 11"):
        list(plan_bins([3, 11], 10))
    with pytest.raises(ValueError, match="outside"):
        list(plan_bins([0], 10))


@pytest.mark.parametrize("cap,min_fill", [(8192, 0.999), (32768, 0.995)])
def test_bounded_window_fill(cap, min_fill):
    lengths = synthetic_lengths(30000, cap, seed=2)
    bins = list(plan_bins(lengths.tolist(), cap, window=4096, carry=64))
    check(bins, lengths, cap)
    fill = lengths.sum() / (len(bins) * cap)
    assert fill >= min_fill
    assert len(bins) <= math.ceil(lengths.sum() / cap) + 2


def test_deterministic():
    lengths = synthetic_lengths(3000, 8192, seed=3).tolist()
    assert list(plan_bins(lengths, 8192, window=512)) == list(plan_bins(lengths, 8192, window=512))


def test_balance_groups_similar_costs():
    rng = np.random.default_rng(0)
    costs = rng.integers(1, 1000, 64 * 8) ** 2
    order = balanced_order(costs, 8, 16, seed=0)
    assert sorted(order.tolist()) == list(range(costs.size))
    before, after = imbalance(costs, 8), imbalance(costs[order], 8)
    assert after["mean_max_over_mean"] < before["mean_max_over_mean"]
    assert after["mean_max_over_mean"] < 0.7 * before["mean_max_over_mean"]
    assert imbalance(costs, 1)["mean_max_over_mean"] == 1.0
