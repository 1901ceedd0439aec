"""Near-duplicate clustering logic: pHash band keys, verified Hamming edges, union-find, representatives.

Used twice: piecewise by the Beam near-dup transforms (band keys → group by key → `verified_pairs` per
bucket → connected components → `choose_representative`), and whole by `cluster_phashes` /
`cluster_minhash`, the in-memory reference the Beam stage is tested against.
(key, pHash, pixels) items → {key: representative key} for every key whose cluster has >= 2 members.

`DedupConfig` (the dedup stages' config) and the per-group steps of the Beam stages (`duplicate_decisions`,
`verified_hex_pairs`, `minhash_bucket_edges`) live here too, apart from their Beam plumbing.

Pair-aware text edges (`minhash_bucket_edges`): inside a MinHash bucket, text-only records link by text
alone; a record with an image links to another only when their images are near as well (`images_near`).
One representative rule for exact, image and text dedup (`representative_rank`): most pixels, then most
encoded bytes, then longest text, then smallest key. Bucket caps (`max_bucket_pairs`) are reported by the
caller through `BucketEdges.capped`.

Determinism: every tie is broken by value (smallest key, smallest hash), never by input order.
"""
from __future__ import annotations

import zlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Generic, Hashable, Iterable, Iterator, TypeVar

import numpy as np

from vlmloom.curation.embeddings import EmbeddingDedupConfig, SemanticTextDedupConfig
from vlmloom.curation.hashing import EMPTY_MINHASH_VALUE, minhash_signature
from vlmloom.schemas.config import ConfigError
from vlmloom.schemas.records import Sample

T = TypeVar("T", bound=Hashable)

HASH_BITS = 64
# verified_pairs compares all pairs directly (vectorised) at or below this many distinct hashes;
# above it, it splits the bucket again by pigeonhole on the bits that still differ.
BRUTE_FORCE_MAX = 512
_CHUNK_ROWS = 256  # rows per vectorised block: bounds memory to _CHUNK_ROWS x bucket size x 8 bytes


def _check_distance(max_distance: int) -> None:
    if not 0 <= max_distance < HASH_BITS:
        raise ValueError(f"max_distance={max_distance}: must be in [0, {HASH_BITS - 1}] for 64-bit pHashes")


def _band_layout(max_distance: int) -> list[tuple[int, int]]:
    """(shift, width) of max_distance+1 contiguous bands covering the 64 bits, widths differing by at most 1."""
    count = max_distance + 1
    base, extra = divmod(HASH_BITS, count)
    layout, shift = [], 0
    for i in range(count):
        width = base + (1 if i < extra else 0)
        layout.append((shift, width))
        shift += width
    return layout


def phash_band_keys(h: int, max_distance: int) -> list[tuple[int, int]]:
    """[(band index, band value)] over max_distance+1 bands of the 64-bit hash.

    Pigeonhole: two hashes within Hamming distance k differ in at most k bits, so at most k of the k+1
    bands can differ and they share at least one band value exactly. Grouping by these keys therefore
    misses no pair; candidates still need `verified_pairs`. Wider bands (small k) make small buckets:
    a bucket of uniformly random hashes holds about N / 2**(64 / (k+1)) of N hashes.
    """
    _check_distance(max_distance)
    return [(i, (h >> shift) & ((1 << width) - 1)) for i, (shift, width) in enumerate(_band_layout(max_distance))]


# --- verified pairs ------------------------------------------------------------------------------
if hasattr(np, "bitwise_count"):  # numpy >= 2.0
    def _popcount(x: np.ndarray) -> np.ndarray:
        return np.bitwise_count(x)
else:  # pragma: no cover - numpy 1.26
    _BYTE_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)

    def _popcount(x: np.ndarray) -> np.ndarray:
        return _BYTE_POPCOUNT[x.view(np.uint8)].reshape(*x.shape, 8).sum(axis=-1, dtype=np.uint8)


def _brute_force_pairs(values: np.ndarray, max_distance: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """All (i, j), i < j, with popcount(values[i] ^ values[j]) <= k, as blocks of index arrays."""
    n = len(values)
    found = []
    for start in range(0, n - 1, _CHUNK_ROWS):
        stop = min(start + _CHUNK_ROWS, n)
        rows = values[start:stop, None]
        cols = values[None, start + 1:]
        close = _popcount(rows ^ cols) <= max_distance
        # Column c is index start+1+c; keep only j > i, i.e. c >= row offset r.
        close &= np.arange(stop - start)[:, None] <= np.arange(n - start - 1)[None, :]
        r, c = np.nonzero(close)
        if len(r):
            found.append((r + start, c + start + 1))
    return found


def _pairs_within_groups(
    values: np.ndarray, keys: np.ndarray, max_distance: int, depth: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Index pairs within Hamming distance k among values that share a group key (values distinct).

    All groups of <= BRUTE_FORCE_MAX values are compared at once: sort by key, then for each offset d
    compare position p with p+d while both lie in the same group (one vectorised step per offset, over
    the groups still larger than d). Larger groups are split again by `_split_pairs`.
    """
    n = len(values)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    sizes = np.diff(np.r_[starts, n])
    found: list[tuple[np.ndarray, np.ndarray]] = []

    # Positions of small groups, ordered by how many later members their group still has: the
    # positions that take part at offset d are then a prefix of this order.
    group_size = np.repeat(sizes, sizes)
    later = group_size - 1 - (np.arange(n) - np.repeat(starts, sizes))
    positions = np.flatnonzero((group_size <= BRUTE_FORCE_MAX) & (later >= 1))
    positions = positions[np.argsort(-later[positions], kind="stable")]
    neg_later = -later[positions]  # ascending
    sorted_values = values[order]
    position_values = sorted_values[positions]  # gathered once; each offset reads a prefix of it
    for offset in range(1, int(-neg_later[0]) + 1 if len(neg_later) else 1):
        count = int(np.searchsorted(neg_later, -offset, side="right"))
        active = positions[:count]
        close = _popcount(position_values[:count] ^ sorted_values[active + offset]) <= max_distance
        if close.any():
            hits = active[close]
            found.append((order[hits], order[hits + offset]))

    for start, size in zip(starts[sizes > BRUTE_FORCE_MAX].tolist(), sizes[sizes > BRUTE_FORCE_MAX].tolist()):
        members = order[start:start + size]
        for i, j in _split_pairs(values[members], max_distance, depth + 1):
            found.append((members[i], members[j]))
    return found


def _split_pairs(values: np.ndarray, max_distance: int, depth: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Index pairs (into `values`, distinct uint64s) within Hamming distance k; see `verified_pairs`."""
    n = len(values)
    if n < 2:
        return []
    differing = int(np.bitwise_or.reduce(values ^ values[0]))  # bits that are not common to all values
    free_bits = [b for b in range(HASH_BITS) if (differing >> b) & 1]
    if len(free_bits) <= max_distance:
        # Every pair differs only inside these <= k bits: the bucket is a clique. A star from the
        # smallest value has the same connected components and is linear, not quadratic, in size.
        anchor = int(np.argmin(values))
        others = np.delete(np.arange(n, dtype=np.int64), anchor)
        return [(np.full(len(others), anchor, dtype=np.int64), others)]
    if n <= BRUTE_FORCE_MAX or depth >= 8:
        return _brute_force_pairs(values, max_distance)
    # Pigeonhole again on the bits that still differ: split them into k+1 groups; a close pair agrees
    # on at least one whole group. Each sub-group fixes >= 1 more bit, so the recursion terminates.
    found: list[tuple[np.ndarray, np.ndarray]] = []
    for g in range(max_distance + 1):
        mask = np.uint64(sum(1 << b for b in free_bits[g::max_distance + 1]))
        found.extend(_pairs_within_groups(values, values & mask, max_distance, depth))
    return found


def _unique_pairs(blocks: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Unique (i, j), i < j, index pairs as an int64 array of shape (m, 2), sorted."""
    if not blocks:
        return np.empty((0, 2), dtype=np.int64)
    i = np.concatenate([b[0] for b in blocks])
    j = np.concatenate([b[1] for b in blocks])
    return np.unique(np.stack([np.minimum(i, j), np.maximum(i, j)], axis=1), axis=0)


def _pair_indices(values: np.ndarray, max_distance: int) -> np.ndarray:
    return _unique_pairs(_split_pairs(values, max_distance, 0))


def verified_pairs(hashes: list[int], max_distance: int) -> list[tuple[int, int]]:
    """Edges (a, b), a < b, between distinct hash values of one bucket within Hamming distance k, sorted.

    Callers pass DISTINCT values (group identical hashes first: 100k copies of one hash are one node).
    Cost: a bucket of <= BRUTE_FORCE_MAX values is compared all-pairs, vectorised (n²/2 XOR+popcount).
    A larger one is split again by pigeonhole over the bits that still differ between its values (k+1
    groupings, each sub-bucket fixing more bits; all small sub-buckets of one grouping are compared in
    one vectorised pass), so the work is about (k+1)·n per level plus small all-pairs leaves, not n².
    After 8 levels a sub-bucket is compared all-pairs whatever its size (not reached by real pHashes).
    Cap for pathological buckets: where a (sub-)bucket's values differ in <= k bit positions in total,
    every pair is within k and the bucket is a clique; it is returned as a star from its smallest value
    (same connected components, n-1 edges instead of n²/2). So the result is exactly the edge set
    except inside such cliques, and always has the same connected components as the full <= k graph.
    """
    _check_distance(max_distance)
    if len(hashes) < 2:
        return []
    values = np.asarray(hashes, dtype=np.uint64)
    if len(np.unique(values)) != len(values):
        raise ValueError("verified_pairs: hashes must be distinct; group identical hashes before calling")
    pairs = _pair_indices(values, max_distance)
    edges = [(min(hashes[i], hashes[j]), max(hashes[i], hashes[j])) for i, j in pairs.tolist()]
    edges.sort()
    return edges


# --- union-find -----------------------------------------------------------------------------------
class UnionFind(Generic[T]):
    """Disjoint sets with path compression and union by size; items must be hashable and orderable."""

    def __init__(self, items: Iterable[T] = ()):
        self._parent: dict[T, T] = {}
        self._size: dict[T, int] = {}
        for item in items:
            self.add(item)

    def __len__(self) -> int:
        return len(self._parent)

    def __contains__(self, item: T) -> bool:
        return item in self._parent

    def add(self, item: T) -> None:
        if item not in self._parent:
            self._parent[item] = item
            self._size[item] = 1

    def find(self, item: T) -> T:
        parent = self._parent
        if item not in parent:
            raise KeyError(f"union-find: unknown item {item!r}; add() it first")
        root = item
        while parent[root] != root:
            root = parent[root]
        while parent[item] != root:  # path compression
            parent[item], item = root, parent[item]
        return root

    def union(self, a: T, b: T) -> T:
        self.add(a)
        self.add(b)
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self._size[ra] < self._size[rb]:
            ra, rb = rb, ra
        self._parent[rb] = ra
        self._size[ra] += self._size[rb]
        return ra

    def components(self) -> dict[T, T]:
        """item → the minimum item of its component (independent of the order of unions)."""
        smallest: dict[T, T] = {}
        for item in self._parent:
            root = self.find(item)
            if root not in smallest or item < smallest[root]:
                smallest[root] = item
        return {item: smallest[self.find(item)] for item in self._parent}


# --- representatives and clustering -----------------------------------------------------------------
# A cluster member is (key, *quality): quality values where larger is better, compared in order.
# `sample_member` builds the one shared form (key, pixels, image bytes, text characters); the in-memory
# references and older callers pass (key, size) and get the same rule on fewer fields.
Member = tuple


def sample_member(sample: Sample) -> Member:
    """(key, pixels of image 0, encoded bytes of image 0, text characters): what the representative rule reads.
    For a video record without images, video 0's frame size (filled at decode) and encoded bytes."""
    pixels = int(sample.signals.get("width", 0) or 0) * int(sample.signals.get("height", 0) or 0)
    image_bytes = sample.images[0].nbytes if sample.images else 0
    if not sample.images and sample.videos:  # a video record: its clip stands where image 0 would (frame size,
        pixels, image_bytes = sample.videos[0].width * sample.videos[0].height, sample.videos[0].nbytes  # bytes)
    return sample.key, pixels, image_bytes, len(sample.text or "")


def representative_rank(member: Member) -> tuple:
    """Sort key of the one representative rule shared by exact, image and text dedup (smallest wins):
    most pixels (the uncropped, unshrunk original), then most encoded bytes — at equal pixels that is the
    least compressed copy, the one that kept the most detail (a re-encoded or thumbnailed copy only ever
    loses bytes) — then the longest text, then the smallest key. Because every stage ranks by the same
    rule, a later stage never discards an earlier stage's representative in favour of a worse member."""
    key, *quality = member
    return tuple(-q for q in quality), key


def choose_representative(members: list[Member]) -> str:
    """Members (key, *quality) → the key to keep by `representative_rank`."""
    if not members:
        raise ValueError("choose_representative: empty cluster")
    return min(members, key=representative_rank)[0]


def _clusters_to_representatives(groups: dict[object, list[Member]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        rep = choose_representative(members)
        for member in members:
            out[member[0]] = rep
    return out


def _check_unique_keys(keys: list[str]) -> None:
    if len(set(keys)) != len(keys):
        seen: set[str] = set()
        dup = next(k for k in keys if k in seen or seen.add(k))
        raise ValueError(f"near-dup clustering: key {dup!r} appears more than once; keys must be unique")


def cluster_phashes(items: list[tuple[str, int, int]], max_distance: int) -> dict[str, str]:
    """(key, phash, pixels) → {key: representative key} for every key in a cluster of >= 2 items.

    Reference implementation: identical hashes are grouped first (so 100k copies are one node), then
    the distinct hashes are bucketed by `phash_band_keys`, each bucket is verified with the same
    all-pairs/pigeonhole search as `verified_pairs`, and connected components (transitive: A~B, B~C →
    one cluster) pick their representative with `choose_representative`. Representatives map to
    themselves.
    """
    _check_distance(max_distance)
    if not items:
        return {}
    _check_unique_keys([k for k, _, _ in items])
    hash_of_item = np.fromiter((h for _, h, _ in items), dtype=np.uint64, count=len(items))
    distinct, node_of_item = np.unique(hash_of_item, return_inverse=True)
    node_of_item = node_of_item.reshape(-1)

    # Each band is one grouping of the distinct hashes; all its buckets are verified together.
    blocks: list[tuple[np.ndarray, np.ndarray]] = []
    for shift, width in _band_layout(max_distance):
        band = (distinct >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        blocks.extend(_pairs_within_groups(distinct, band, max_distance, 0))
    edges = _unique_pairs(blocks)

    union: UnionFind[int] = UnionFind()
    for a, b in edges.tolist():
        union.union(a, b)
    group_of_node = np.arange(len(distinct), dtype=np.int64)  # a node without edges is its own group
    for node, smallest in union.components().items():
        group_of_node[node] = smallest
    item_groups = group_of_node[node_of_item]
    counts = np.bincount(item_groups, minlength=len(distinct))
    groups: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for idx in np.flatnonzero(counts[item_groups] >= 2).tolist():
        key, _, pixels = items[idx]
        groups[int(item_groups[idx])].append((key, int(pixels)))
    return _clusters_to_representatives(groups)


def cluster_minhash(items: list[tuple[str, np.ndarray, int]], threshold: float, bands: int, rows: int) -> dict[str, str]:
    """(key, MinHash signature, text_length) → {key: representative key} for text near-duplicates.

    Identical signatures are grouped first; distinct signatures that share a band (`rows` equal values)
    are candidates, kept as edges when the estimated Jaccard (fraction of equal slots over the whole
    signature) is >= threshold; components are transitive; the longest text wins, then the smallest key.
    Texts without shingles (all slots EMPTY_MINHASH_VALUE) are never near-duplicates of anything.
    Verification is all-pairs within a band bucket, i.e. quadratic in its number of distinct signatures.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"minhash threshold={threshold}: must be in (0, 1]")
    if not items:
        return {}
    _check_unique_keys([k for k, _, _ in items])
    num_perm = len(items[0][1])
    if bands < 1 or rows < 1 or bands * rows > num_perm:
        raise ValueError(f"minhash bands={bands} x rows={rows} exceeds the signature length {num_perm}")

    node_of_signature: dict[bytes, int] = {}
    signatures: list[np.ndarray] = []
    node_of_item: list[int] = []
    for key, sig, _ in items:
        sig = np.asarray(sig, dtype=np.uint64)
        if len(sig) != num_perm:
            raise ValueError(f"record {key!r}: MinHash has {len(sig)} values, expected {num_perm}")
        if bool(np.all(sig == EMPTY_MINHASH_VALUE)):
            node_of_item.append(-1)
            continue
        blob = sig.astype("<u8").tobytes()
        node = node_of_signature.setdefault(blob, len(signatures))
        if node == len(signatures):
            signatures.append(sig)
        node_of_item.append(node)

    union = UnionFind(range(len(signatures)))
    if signatures:
        matrix = np.stack(signatures)
        for band in range(bands):
            cols = matrix[:, band * rows:(band + 1) * rows]
            buckets: dict[bytes, list[int]] = defaultdict(list)
            for node, row in enumerate(cols):
                buckets[row.tobytes()].append(node)
            for nodes in buckets.values():
                if len(nodes) < 2:
                    continue
                sub = matrix[nodes]
                for r in range(len(nodes) - 1):
                    equal = np.count_nonzero(sub[r + 1:] == sub[r], axis=1) / num_perm
                    for c in np.flatnonzero(equal >= threshold).tolist():
                        union.union(nodes[r], nodes[r + 1 + c])

    component = union.components()
    groups: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for (key, _, length), node in zip(items, node_of_item):
        if node >= 0:
            groups[component[node]].append((key, int(length)))
    return _clusters_to_representatives(groups)


# --- what the Beam dedup stages (pipelines/dedup.py) run per group -------------------------------------------
@dataclass(frozen=True, kw_only=True)
class DedupConfig:
    exact: bool = True  # drop records whose image bytes (or, for text-only records, text) are identical
    phash: bool = True  # drop near-duplicate images
    phash_max_distance: int = 6  # Hamming distance <= this on the 64-bit pHash counts as a near duplicate
    minhash: bool = True  # drop near-duplicate captions/documents (image records only when their images are near too)
    minhash_threshold: float = 0.8  # estimated Jaccard similarity of word 5-gram shingles
    minhash_num_perm: int = 128  # signature length; must equal bands * rows
    minhash_bands: int = 16  # LSH bands (more bands: higher recall at lower similarity)
    minhash_min_words: int = 12  # shorter texts are not text-deduplicated (short captions repeat legitimately)
    # Per LSH bucket. MinHash: at most this many signature comparisons; beyond it the remaining members
    # are compared with the anchors (the bucket's first members, at least one) only. pHash: a bucket with
    # more verified pairs than this emits one star per cluster instead (same clusters, fewer edges).
    # Each use is counted (dedup/minhash_bucket_capped, dedup/phash_bucket_capped in report.json).
    max_bucket_pairs: int = 2_000_000
    # Large-star/small-star rounds unrolled in the pipeline (curation/components.py), two shuffles each.
    # Measured: 12 rounds converge a chain of 3,000 duplicates labelled in order (30,000 in random order),
    # 17 one of 100,000. Unconverged nodes split their cluster (more kept, none lost) and are counted.
    components_max_rounds: int = 12
    embedding: EmbeddingDedupConfig = EmbeddingDedupConfig()  # video (+ text) embedding dedup; off by default
    semantic_text: SemanticTextDedupConfig = SemanticTextDedupConfig()  # caption/QA text embedding dedup; off

    def validate(self) -> None:
        self.embedding.validate()
        self.semantic_text.validate()
        if not 0 <= self.phash_max_distance <= 31:
            raise ConfigError(f"dedup.phash_max_distance ({self.phash_max_distance}) must be within 0..31")
        if self.minhash_num_perm % self.minhash_bands:
            raise ConfigError(f"dedup.minhash_num_perm ({self.minhash_num_perm}) must be a multiple of "
                              f"dedup.minhash_bands ({self.minhash_bands})")
        if not 0 < self.minhash_threshold <= 1:
            raise ConfigError(f"dedup.minhash_threshold ({self.minhash_threshold}) must be in (0, 1]")
        if self.max_bucket_pairs < 1:
            raise ConfigError(f"dedup.max_bucket_pairs ({self.max_bucket_pairs}) must be >= 1")
        if not 1 <= self.components_max_rounds <= 64:
            raise ConfigError(f"dedup.components_max_rounds ({self.components_max_rounds}) must be within 1..64 "
                              "(each round is two shuffles; 17 converge a chain of 100,000 duplicates)")


def duplicate_decisions(group: tuple[Hashable, Iterable[Member]]) -> Iterator[tuple[str, str]]:
    """One cluster (id, [member]) → (key, representative) for every member but the representative
    (`choose_representative`)."""
    _, members = group
    members = sorted(set(members))
    if len(members) < 2:
        return
    rep = choose_representative(members)
    for member in members:
        if member[0] != rep:
            yield member[0], rep


@dataclass(frozen=True)
class BucketEdges:
    """Edges found in one LSH bucket, and whether the bucket hit `max_bucket_pairs`."""
    edges: list[tuple[str, str]]
    capped: bool


def _component_stars(edges: list[tuple[T, T]]) -> list[tuple[T, T]]:
    """The same connected components as `edges`, as one star per component from its smallest node."""
    union: UnionFind[T] = UnionFind()
    for a, b in edges:
        union.union(a, b)
    return sorted((smallest, node) for node, smallest in union.components().items() if node != smallest)


def verified_hex_pairs(bucket: Iterable[str], max_distance: int, max_pairs: int) -> BucketEdges:
    """pHash values of one LSH band bucket, as 16-digit hex → verified pairs (Hamming <= max_distance), as hex.

    Over `max_pairs` verified pairs, the bucket's edges are replaced by one star per cluster (each member
    linked to its cluster's smallest hash): the same clusters, at most n-1 edges to shuffle; `capped`.
    The union-find here holds one bucket only. Hex because unsigned 64-bit ints overflow Beam's VarInt coder."""
    values = sorted({int(h, 16) for h in bucket})
    pairs = verified_pairs(values, max_distance)
    capped = len(pairs) > max_pairs
    if capped:
        pairs = _component_stars(pairs)
    return BucketEdges([(f"{a:016x}", f"{b:016x}") for a, b in pairs], capped)


# A MinHash bucket member: (key, signature, image) with image = (sha256, pHash hex) of image 0, or None
# for a text-only record.
TextMember = tuple


def images_near(a: tuple[str, str] | None, b: tuple[str, str] | None, max_distance: int) -> bool:
    """Same image bytes, or pHashes within `max_distance`. Text-only records (None) are near only each other."""
    if a is None or b is None:
        return a is None and b is None
    if a[0] and a[0] == b[0]:
        return True
    return bool(a[1]) and bool(b[1]) and (int(a[1], 16) ^ int(b[1], 16)).bit_count() <= max_distance


def _pair_aware_edges(members: list[tuple[str, tuple[str, str] | None]], max_distance: int) -> Iterator[tuple[str, str]]:
    """Members of one text group (texts near-duplicate) → edges between those that may drop each other:
    text-only records all link; image records link when their images are near (`images_near`)."""
    text_only = sorted(key for key, image in members if image is None)
    yield from zip(text_only, text_only[1:])
    with_image = sorted((key, image) for key, image in members if image is not None)
    by_sha: dict[str, list[str]] = defaultdict(list)
    by_phash: dict[str, list[str]] = defaultdict(list)
    for key, (sha, phash) in with_image:
        if sha:
            by_sha[sha].append(key)
        if phash:
            by_phash[phash].append(key)
    for keys in [*by_sha.values(), *by_phash.values()]:
        yield from zip(keys, keys[1:])
    # Distinct pHashes compared by the same pigeonhole search as the image stage (not all pairs).
    for a, b in verified_pairs(sorted(int(h, 16) for h in by_phash), max_distance):
        yield by_phash[f"{a:016x}"][0], by_phash[f"{b:016x}"][0]


def minhash_bucket_edges(members: list[TextMember], threshold: float, max_pairs: int,
                         image_max_distance: int) -> BucketEdges:
    """Pair-aware edges in one MinHash bucket.

    Texts: identical signatures are one node without comparison; distinct ones are compared (vectorised,
    estimated Jaccard >= threshold). All pairs while n(n-1)/2 <= max_pairs; otherwise the first members in
    order (anchors; at least the first) are compared with every later member while the comparisons stay
    within max_pairs, and the bucket is `capped`: a member then links only through an anchor it resembles.
    Texts linked within the bucket form text groups (transitively, inside this bucket only).
    Pairs: inside a text group, text-only records link to each other; a record with an image links only to
    records whose image is near (`images_near`: same sha256 or pHash within image_max_distance). So a
    templated caption ("Click to enlarge …") never removes a distinct image.
    """
    by_sig: dict[bytes, list[tuple[str, tuple[str, str] | None]]] = defaultdict(list)
    for key, sig, image in members:
        by_sig[np.asarray(sig, dtype=np.uint64).tobytes()].append((key, None if image is None else tuple(image)))
    groups = sorted((sorted(items), sig) for sig, items in by_sig.items())
    n = len(groups)
    text_union: UnionFind[int] = UnionFind(range(n))
    capped = n * (n - 1) // 2 > max_pairs
    if n >= 2:
        sigs = np.stack([np.frombuffer(sig, dtype=np.uint64) for _, sig in groups])
        compared = 0
        for i in range(n - 1):
            later = n - 1 - i
            if i > 0 and compared + later > max_pairs:
                break
            similarity = (sigs[i + 1:] == sigs[i]).mean(axis=1)
            compared += later
            for j in np.flatnonzero(similarity >= threshold).tolist():
                text_union.union(i, i + 1 + j)
    text_groups: dict[int, list[tuple[str, tuple[str, str] | None]]] = defaultdict(list)
    for node, smallest in text_union.components().items():
        text_groups[smallest].extend(groups[node][0])
    edges = [edge for _, items in sorted(text_groups.items()) for edge in _pair_aware_edges(items, image_max_distance)]
    return BucketEdges(edges, capped)


# --- what crosses the dedup shuffles: one small row per record -------------------------------------------------
@dataclass(frozen=True)
class DedupRow:
    """A record as the dedup stages see it: its key, what each stage compares, and what the representative rule
    reads. No image bytes, no texts, no signature (MinHash signatures meet candidate pairs by key)."""
    key: str
    content: str  # hex digest of the record's exact-dedup content, per kind (schemas.kinds); "" = nothing to compare
    image_sha: str  # sha256 of image 0, "" without one
    phash: str  # pHash of image 0 as 16 hex digits, "" without one
    pixels: int  # of image 0 (representative rule)
    image_bytes: int  # encoded bytes of image 0 (representative rule)
    text_chars: int  # characters of the text (representative rule)
    image_is_content: bool = True  # the kind's record is its image (schemas.kinds): the pHash stage compares it

    def member(self) -> Member:
        return self.key, self.pixels, self.image_bytes, self.text_chars

    def image(self) -> tuple[str, str] | None:
        """(sha256 prefix, pHash hex) of image 0, or None for a record without an image (the pair-aware rule). 16 hex
        digits of the sha256 (64 bits) name an image as surely for this purpose, at a quarter of what each MinHash
        band element carries."""
        return (self.image_sha[:16], self.phash) if self.image_sha or self.phash else None

    def __reduce__(self):
        # Pickled as its values alone (no field names): rows cross several shuffles.
        return DedupRow, (self.key, self.content, self.image_sha, self.phash, self.pixels, self.image_bytes,
                          self.text_chars, self.image_is_content)


def dedup_row(sample: Sample) -> DedupRow:
    from vlmloom.schemas.kinds import dedup_content_digest, kind_of, sample_texts

    key, pixels, image_bytes, text_chars = sample_member(sample)
    image_sha = ""
    if sample.images:
        image_sha = sample.images[0].sha256 or str(sample.signals.get("image_sha256") or "")
    elif sample.videos:
        # A video record's visual side is its clip: the pair-aware MinHash rule then drops a near-duplicate
        # caption only when the clips are identical, never a distinct clip that shares a caption.
        image_sha = sample.videos[0].sha256
    # A record with no image and no text has no content to compare: two empty records are not one record.
    has_content = (any(i.sha256 or i.uri for i in sample.images) or any(v.sha256 or v.uri for v in sample.videos)
                   or bool(sample_texts(sample)))
    return DedupRow(key, dedup_content_digest(sample) if has_content else "", image_sha,
                    str(sample.signals.get("phash") or "") if sample.images else "", pixels, image_bytes, text_chars,
                    kind_of(sample).image_is_content)


def minhash_text(sample: Sample) -> str:
    """The text MinHash compares: the record's texts as its kind declares them (schemas.kinds), in order."""
    from vlmloom.schemas.kinds import sample_texts

    return "\n".join(sample_texts(sample))


# --- decisions that never chain past the threshold -------------------------------------------------------------
def phash_distance(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def within_threshold_decisions(members: Iterable[tuple[Member, object]],
                               near: Callable[[Member, object, Member, object], bool]
                               ) -> tuple[list[tuple[str, str]], list[str]]:
    """One cluster [(member, payload)] → ([(dropped key, representative)], [chain members kept]).

    Clusters may chain (A~B, B~C), decisions may not: the representative is chosen by `representative_rank` over
    the whole cluster, and a member is dropped only when `near(member, payload, representative, its payload)`,
    i.e. it lies within the threshold of the record that is kept. The others are kept (and counted by the caller).
    """
    by_key = {}
    for member, payload in members:
        by_key.setdefault(member[0], (tuple(member), payload))
    if len(by_key) < 2:
        return [], []
    rep = choose_representative([m for m, _ in by_key.values()])
    rep_member, rep_payload = by_key[rep]
    dropped, kept = [], []
    for key in sorted(by_key):
        if key == rep:
            continue
        member, payload = by_key[key]
        if near(member, payload, rep_member, rep_payload):
            dropped.append((key, rep))
        else:
            kept.append(key)
    return dropped, kept


def phash_near(max_distance: int):
    """`near` for pHash clusters: payload = the member's pHash hex; Hamming distance <= max_distance."""
    def near(_member, phash, _rep, rep_phash) -> bool:
        return phash_distance(phash, rep_phash) <= max_distance

    return near


def edge_near(_member, neighbours, rep_member, _rep_payload) -> bool:
    """`near` for MinHash clusters: payload = the member's verified neighbours (pair-aware edges): dropped only when
    its own text (and image) was verified against the representative's."""
    return rep_member[0] in neighbours


def minhash_bucket_candidates(members: Iterable[tuple[str, str, tuple[str, str] | None]], max_pairs: int,
                              image_max_distance: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]], bool]:
    """One MinHash bucket of (key, signature digest, image) → (edges, candidate pairs, capped).

    The bucket carries keys and digests, never signatures. Members with the same signature digest have the same
    text shingles: they link at once, pair-aware (`_pair_aware_edges`). Distinct digests are candidate pairs whose
    signatures are compared later, by key: all pairs of digests while n(n-1)/2 <= max_pairs, otherwise the first
    (anchor) digests with every later one while the pairs stay within max_pairs (`capped`). Between two digests,
    the pairs named are the ones the pair-aware rule allows: text-only records (their smallest keys), and image
    records whose images are near (`images_near`)."""
    by_digest: dict[str, list[tuple[str, tuple[str, str] | None]]] = defaultdict(list)
    for key, digest, image in members:
        by_digest[digest].append((key, None if image is None else tuple(image)))
    groups = sorted(sorted(set(items)) for items in by_digest.values())
    edges = [edge for items in groups for edge in _pair_aware_edges(items, image_max_distance)]
    n = len(groups)
    capped = n * (n - 1) // 2 > max_pairs
    candidates: list[tuple[str, str]] = []
    compared = 0
    for i in range(n - 1):
        later = n - 1 - i
        if i > 0 and compared + later > max_pairs:
            break
        compared += later
        for j in range(i + 1, n):
            candidates.extend(_pair_aware_candidates(groups[i], groups[j], image_max_distance))
    return edges, sorted(set(candidates)), capped


def _pair_aware_candidates(left, right, max_distance: int) -> Iterator[tuple[str, str]]:
    """Pairs between two groups of (key, image) that may drop each other if their texts are near: the smallest
    text-only keys of each side, and image records of either side whose images are near (same sha256, or pHashes
    within max_distance by the pigeonhole search of `verified_pairs`, not all pairs)."""
    text_left = [k for k, image in left if image is None]
    text_right = [k for k, image in right if image is None]
    if text_left and text_right:
        a, b = min(text_left), min(text_right)
        yield min(a, b), max(a, b)
    sides = []
    for group in (left, right):
        by_sha: dict[str, list[str]] = defaultdict(list)
        by_phash: dict[int, list[str]] = defaultdict(list)
        for key, image in group:
            if image is None:
                continue
            if image[0]:
                by_sha[image[0]].append(key)
            if image[1]:
                by_phash[int(image[1], 16)].append(key)
        sides.append((by_sha, by_phash))
    (left_sha, left_phash), (right_sha, right_phash) = sides
    for sha in sorted(left_sha.keys() & right_sha.keys()):
        for a in left_sha[sha]:
            for b in right_sha[sha]:
                yield min(a, b), max(a, b)
    near = [(h, h) for h in left_phash.keys() & right_phash.keys()]
    for p, q in verified_pairs(sorted(left_phash.keys() | right_phash.keys()), max_distance):
        near += [(p, q), (q, p)]
    for p, q in sorted(near):
        for a in left_phash.get(p, ()):
            for b in right_phash.get(q, ()):
                yield min(a, b), max(a, b)


def signature_digest(signature) -> str:
    """16 hex digits naming a MinHash signature: equal digests, equal signatures (what a bucket groups on)."""
    import hashlib

    return hashlib.blake2b(np.asarray(signature, dtype="<u8").tobytes(), digest_size=8).hexdigest()


# --- MinHash rows packed for the shuffles ----------------------------------------------------------------------
# On Beam's local runner a grouped value lives as Python objects until its group is read: a (key, digest, (sha,
# pHash)) tuple costs ~300 bytes, and a record has one per band. The MinHash stage therefore shuffles its rows
# packed: a band bucket's members, a record's member and a signature are each one `Packed` bytes string, and
# band rows travel concatenated (many per grouped value). Packing is exact: every string comes back equal.
BAND_PREFIX_BITS = 8  # band rows are grouped by (band, the first 8 bits of its digest): 256 groups a band


class Packed(bytes):
    """Compact binary metadata a MinHash shuffle carries: signature values (or the text they are computed from,
    where it is shorter), digests, image hashes, sizes, keys; never image bytes or samples. A type of its own so
    that the graph check (tests/test_pipeline_structure.py) tells it from plain `bytes`, and pipelines/dedup.py
    gives it a coder."""
    __slots__ = ()


def _put_uint(out: bytearray, n: int) -> None:
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)


def _get_uint(buf: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        if byte < 0x80:
            return n, pos
        shift += 7


def _put_int(out: bytearray, n: int) -> None:
    _put_uint(out, n << 1 if n >= 0 else (-n << 1) - 1)  # zigzag: sizes are never negative, but stay exact


def _get_int(buf: bytes, pos: int) -> tuple[int, int]:
    n, pos = _get_uint(buf, pos)
    return (n >> 1 if not n & 1 else -((n + 1) >> 1)), pos


def _put_str(out: bytearray, text: str) -> None:
    """Lower-case hex of even length (digests, hashes) as its bytes (half the size), any other string as UTF-8;
    a length-and-flag prefix says which."""
    raw, is_hex = None, 0
    if len(text) % 2 == 0:
        try:
            raw = bytes.fromhex(text)
            is_hex = int(raw.hex() == text)
        except ValueError:
            pass
    if not is_hex:
        raw = text.encode()
    _put_uint(out, len(raw) << 1 | is_hex)
    out += raw


def _get_str(buf: bytes, pos: int) -> tuple[str, int]:
    header, pos = _get_uint(buf, pos)
    end = pos + (header >> 1)
    raw = buf[pos:end]
    return (raw.hex() if header & 1 else raw.decode()), end


def _put_image(out: bytearray, image: tuple[str, str] | None) -> None:
    if image is None:
        out.append(0)
        return
    out.append(1)
    _put_str(out, image[0])
    _put_str(out, image[1])


def _get_image(buf: bytes, pos: int) -> tuple[tuple[str, str] | None, int]:
    present, pos = buf[pos], pos + 1
    if not present:
        return None, pos
    sha, pos = _get_str(buf, pos)
    phash, pos = _get_str(buf, pos)
    return (sha, phash), pos


_VALUES, _TEXT = b"v", b"t"


def pack_signature(signature: np.ndarray, text: str | None = None) -> Packed:
    """uint32 MinHash values → their little-endian bytes (4 a slot) after a flag byte; or, where `text` (what they
    were computed from by `hashing.minhash_signature` with its default shingles and seed) is shorter in UTF-8, that
    text: `unpack_signature` computes the very same values again. A caption is ~100 bytes, 128 values 512."""
    values = np.asarray(signature, dtype="<u4").tobytes()
    if text is not None and len(encoded := text.encode()) < len(values):
        return Packed(_TEXT + encoded)
    return Packed(_VALUES + values)


def unpack_signature(packed: bytes, num_perm: int) -> np.ndarray:
    """`pack_signature` → the uint32 values (of `num_perm` slots)."""
    if packed[:1] == _TEXT:
        return minhash_signature(packed[1:].decode(), num_perm=num_perm).astype(np.uint32)
    return np.frombuffer(packed, dtype="<u4", offset=1)


KEY_GROUPS = 1024  # signatures and bucket members travel concatenated per group of keys (`key_group`)


def key_group(key: str, groups: int) -> int:
    """A record key's group, the same in every process (not Python's salted `hash`)."""
    return zlib.crc32(key.encode()) % groups


def pack_keyed(key: str, value: bytes) -> bytes:
    """(key, packed value) as one self-delimiting entry: the entries of one key group are concatenated."""
    out = bytearray()
    _put_str(out, key)
    _put_uint(out, len(value))
    return bytes(out + value)


def keyed_entries(packed: Iterable[bytes]) -> Iterator[tuple[str, Packed]]:
    """Concatenated `pack_keyed` entries → (key, packed value)."""
    for blob in packed:
        pos = 0
        while pos < len(blob):
            key, pos = _get_str(blob, pos)
            size, pos = _get_uint(blob, pos)
            yield key, Packed(blob[pos:pos + size])
            pos += size


def pack_band_digests(digest: str, band_digests: list[str]) -> Packed:
    """A signature's digest and its bands' digests: what band rows are made of (not the signature's values)."""
    out = bytearray()
    _put_str(out, digest)
    _put_uint(out, len(band_digests))
    for band_digest in band_digests:
        _put_str(out, band_digest)
    return Packed(out)


def unpack_band_digests(packed: bytes) -> tuple[str, list[str]]:
    digest, pos = _get_str(packed, 0)
    count, pos = _get_uint(packed, pos)
    band_digests = []
    for _ in range(count):
        band_digest, pos = _get_str(packed, pos)
        band_digests.append(band_digest)
    return digest, band_digests


def pack_row(row: "DedupRow") -> Packed:
    """What a MinHash record needs of its dedup row besides its key: the representative rule's sizes and image."""
    out = bytearray()
    for size in (row.pixels, row.image_bytes, row.text_chars):
        _put_int(out, size)
    _put_image(out, row.image())
    return Packed(out)


def _unpack_row(packed: bytes, pos: int = 0) -> tuple[tuple[int, int, int], tuple[str, str] | None, int]:
    sizes = []
    for _ in range(3):
        size, pos = _get_int(packed, pos)
        sizes.append(size)
    image, pos = _get_image(packed, pos)
    return (sizes[0], sizes[1], sizes[2]), image, pos


def packed_row_image(packed_row: bytes) -> tuple[str, str] | None:
    """The image (sha256 prefix, pHash) of a `pack_row` row, as `DedupRow.image()` gave it."""
    return _unpack_row(packed_row)[1]


def pack_text_member(packed_row: bytes, digest: str) -> Packed:
    """A packed row and its signature digest: what a MinHash cluster member carries besides its key."""
    out = bytearray(packed_row)
    _put_str(out, digest)
    return Packed(out)


def unpack_text_member(key: str, packed: bytes) -> tuple[Member, tuple[str, tuple[str, str] | None]]:
    """(key, `pack_text_member`) → (member, (digest, image)), as `DedupRow.member()` and `.image()` gave them."""
    sizes, image, pos = _unpack_row(packed)
    digest, _ = _get_str(packed, pos)
    return (key, *sizes), (digest, image)


def coarse_band_key(band: int, band_digest: str) -> int:
    """The grouping key of a band row: the band index and the first `BAND_PREFIX_BITS` of its digest. A group holds
    many exact buckets (`band_buckets` re-forms them): few, large grouped values instead of one per band row."""
    return band << BAND_PREFIX_BITS | int(band_digest[:(BAND_PREFIX_BITS + 3) // 4], 16) >> (-BAND_PREFIX_BITS % 4)


def pack_band_row(band_digest: str, key: str) -> bytes:
    """One band row: the band's digest (its exact bucket within the coarse group) and the key of its member.
    Self-delimiting: rows of one group are concatenated."""
    out = bytearray()
    _put_str(out, band_digest)
    _put_str(out, key)
    return bytes(out)


def band_bucket_keys(coarse_key: int, packed_rows: Iterable[bytes]) -> list[tuple[str, list[str]]]:
    """Concatenated band rows of one coarse group → its exact buckets of two or more members, as (bucket name,
    sorted keys), ordered by name; the name is the band index and its digest. A bucket of one finds nothing."""
    buckets: dict[str, list[str]] = defaultdict(list)
    for blob in packed_rows:
        pos = 0
        while pos < len(blob):
            band_digest, pos = _get_str(blob, pos)
            key, pos = _get_str(blob, pos)
            buckets[band_digest].append(key)
    band = coarse_key >> BAND_PREFIX_BITS
    return [(f"{band}:{band_digest}", sorted(keys)) for band_digest, keys in sorted(buckets.items()) if len(keys) > 1]
