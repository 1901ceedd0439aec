"""Connected components of a large edge graph in rounds, without one in-memory union-find over the corpus.

edges (a, b) → {node: label}, label = the smallest node of the node's component.

The algorithm is large-star / small-star (Kiveris et al., "Connected Components in MapReduce and
Beyond", SoCC 2014). Edges are kept normalised as (larger, smaller). One round is two steps, each a
group-by-node followed by a local function of one node and its neighbours:
  * `large_star(u, N(u))`: every neighbour v > u is re-linked to m = min(N(u) ∪ {u});
  * `small_star(u, {v ∈ N(u): v < u})`: u and its smaller neighbours are linked to their minimum.
Both steps keep each component connected and never join two components. The graph converges to one
star per component, centred on the component's minimum; `star_label` then reads each node's label from
its own neighbourhood and says whether that neighbourhood is already a converged star.

What one worker holds is one node's neighbourhood (at most its component), never the corpus.

Rounds: the paper proves O(log² n) rounds and observes about log n; measured here
(tests/test_components.py, and `python -m vlmloom.curation.components`), a path whose labels increase
along it (the hardest case we found) needs 4, 7, 10, 14, 17 rounds for 10, 100, 1e3, 1e4, 1e5 nodes;
randomly labelled paths fewer (12 rounds for 3e4 nodes), stars one. A pipeline unrolls a fixed number of rounds
(`DedupConfig.components_max_rounds`); a node whose neighbourhood has not converged after them
keeps the smallest node it can see as its label (`star_label`): its component may then split into
several clusters, each with its own representative. That only keeps more records, never loses one,
and is counted (`dedup/<stage>_components_unconverged`).

`connected_components` runs the same rounds in memory: the reference the Beam transform is tested against.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Hashable, Iterable, Iterator, TypeVar

N = TypeVar("N", bound=Hashable)


def normalised(a: N, b: N) -> tuple[N, N] | None:
    """(larger, smaller), or None for a self-loop (it carries no connectivity)."""
    if a == b:
        return None
    return (a, b) if a > b else (b, a)


def both_directions(edge: tuple[N, N]) -> list[tuple[N, N]]:
    """An undirected edge as two (node, neighbour) pairs, for grouping by node."""
    return [(edge[0], edge[1]), (edge[1], edge[0])]


def large_star(node: N, neighbours: Iterable[N]) -> Iterator[tuple[N, N]]:
    """Every neighbour larger than `node` → (neighbour, smallest of node and its neighbours)."""
    neighbours = set(neighbours)
    smallest = min(neighbours | {node})
    for v in sorted(neighbours):
        if v > node:
            yield v, smallest


def small_star(node: N, smaller_neighbours: Iterable[N]) -> Iterator[tuple[N, N]]:
    """`node` and its smaller neighbours → each linked to their minimum (as (larger, smaller) edges)."""
    group = set(smaller_neighbours) | {node}
    smallest = min(group)
    for v in sorted(group):
        if v != smallest:
            yield v, smallest


def star_label(node: N, neighbours: Iterable[N]) -> tuple[N, bool]:
    """(label, converged): the smallest node in reach, and whether `node` already sits in a converged star
    (a centre whose neighbours are all larger, or a leaf with exactly one, smaller, neighbour)."""
    neighbours = set(neighbours)
    smaller = [v for v in neighbours if v < node]
    converged = not smaller or len(neighbours) == 1
    return min(neighbours | {node}), converged


def _grouped(pairs: Iterable[tuple[N, N]]) -> dict[N, set[N]]:
    out: dict[N, set[N]] = defaultdict(set)
    for node, other in pairs:
        out[node].add(other)
    return out


def one_round(edges: set[tuple[N, N]]) -> set[tuple[N, N]]:
    """Large-star then small-star over normalised edges, in memory (what the Beam transform does with two shuffles)."""
    adjacency = _grouped(p for e in edges for p in both_directions(e))
    large = {e for u, ns in adjacency.items() for e in large_star(u, ns)}
    smaller = _grouped(large)
    return {e for u, ns in smaller.items() for e in small_star(u, ns)}


def connected_components(edges: Iterable[tuple[N, N]], max_rounds: int) -> tuple[dict[N, N], int, int]:
    """Edges → ({node: label}, rounds run, unconverged nodes); stops early once nothing changes."""
    if max_rounds < 0:
        raise ValueError(f"max_rounds={max_rounds}: must be >= 0")
    current = {e for e in (normalised(a, b) for a, b in edges) if e is not None}
    rounds = 0
    while rounds < max_rounds:
        following = one_round(current)
        rounds += 1
        if following == current:
            break
        current = following
    labels: dict[N, N] = {}
    unconverged = 0
    for node, neighbours in _grouped(p for e in current for p in both_directions(e)).items():
        labels[node], converged = star_label(node, neighbours)
        unconverged += not converged
    return labels, rounds, unconverged


if __name__ == "__main__":  # rounds needed on paths labelled in order (the slow case), for the docstring
    for size in (10, 100, 1_000, 10_000, 100_000):
        _, used, left = connected_components([(i, i + 1) for i in range(size)], 64)
        print(f"path of {size + 1:>7} nodes: {used - 1} rounds to converge ({left} unconverged)")
