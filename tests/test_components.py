"""Connected components by large-star/small-star rounds (curation/components.py) against a plain union-find,
and the Beam transform (pipelines/dedup.ConnectedComponents) against the in-memory rounds."""
import random

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from vlmloom.curation.components import connected_components, large_star, small_star, star_label
from vlmloom.curation.neardup import UnionFind
from vlmloom.pipelines.dedup import ConnectedComponents


def _union_find_labels(edges):
    union = UnionFind()
    for a, b in edges:
        union.union(a, b)
    return {node: label for node, label in union.components().items()}


def _graphs():
    rng = random.Random(7)
    yield "chain", [(i, i + 1) for i in range(200)]
    yield "reversed chain", [(i + 1, i) for i in range(200)]
    perm = list(range(500))
    rng.shuffle(perm)
    yield "randomly labelled path", [(perm[i], perm[i + 1]) for i in range(499)]
    yield "star", [(0, i) for i in range(1, 100)]
    yield "star on its largest node", [(99, i) for i in range(99)]
    yield "zigzag", [(i, 1000 - i) for i in range(1, 400)] + [(1000 - i, i + 1) for i in range(1, 400)]
    for trial in range(5):
        nodes = rng.randint(5, 300)
        yield f"random {trial}", [(rng.randrange(nodes), rng.randrange(nodes)) for _ in range(rng.randint(1, 2 * nodes))]


@pytest.mark.parametrize("name,edges", list(_graphs()), ids=[n for n, _ in _graphs()])
def test_rounds_match_union_find(name, edges):
    labels, rounds, unconverged = connected_components(edges, max_rounds=64)
    assert unconverged == 0
    expected = {n: l for n, l in _union_find_labels(edges).items() if any(n in e and e[0] != e[1] for e in edges)}
    assert labels == expected, name


def test_long_path_needs_more_rounds_and_splits_safely_when_cut_short():
    path = [(i, i + 1) for i in range(2000)]
    _, rounds, unconverged = connected_components(path, max_rounds=64)
    assert unconverged == 0 and 8 <= rounds <= 16  # about log2(n) rounds, not n
    labels, _, unconverged = connected_components(path, max_rounds=2)
    assert unconverged > 0
    # Cut short, a component may split but never merges with another: every label is in the node's component.
    assert all(label <= node for node, label in labels.items())
    assert len(set(labels.values())) > 1


def test_round_steps():
    assert list(large_star(5, [2, 7, 9])) == [(7, 2), (9, 2)]
    assert list(small_star(5, [3, 4])) == [(4, 3), (5, 3)]
    assert star_label(3, [7, 9]) == (3, True)
    assert star_label(9, [3]) == (3, True)
    assert star_label(7, [3, 9]) == (3, False)


def test_beam_components_match_the_in_memory_rounds():
    rng = random.Random(3)
    edges = [(f"n{i:04d}", f"n{i + 1:04d}") for i in range(300)]  # a long path of string nodes
    edges += [(f"s{rng.randrange(60):03d}", f"s{rng.randrange(60):03d}") for _ in range(80)]
    expected, _, unconverged = connected_components(edges, max_rounds=12)
    assert unconverged == 0
    with TestPipeline() as p:
        out = p | beam.Create(edges) | ConnectedComponents("test", max_rounds=12)
        assert_that(out, equal_to(sorted(expected.items())))


def test_beam_components_count_unconverged_nodes():
    edges = [(i, i + 1) for i in range(200)]
    p = TestPipeline()
    _ = p | beam.Create(edges) | ConnectedComponents("test", max_rounds=1)
    result = p.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_name("test_components_unconverged"))["counters"]
    _, _, unconverged = connected_components(edges, max_rounds=1)
    assert unconverged > 0 and sum(c.committed for c in counters) == unconverged
