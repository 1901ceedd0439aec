"""The MinHash stage (pipelines/dedup.py, packed shuffles) against an in-memory reference of the same rule.

The reference below follows the module docstring of pipelines/dedup.py on whole dicts, with no Beam and no packing:
band buckets → `minhash_bucket_candidates` per bucket (pair-aware, capped) → candidate pairs verified on the
signatures → union-find components → representative and the within-threshold rule (same digest or a digest pair
verified in the cluster, and images near). Random corpora with many near-duplicate texts, identical texts, short
texts, text-only and image records (shared sha256, pHashes within and beyond the distance, none), size ties, and
buckets capped by a small `max_bucket_pairs`: the decisions and both counters must be equal.
"""
import random
from collections import defaultdict

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from vlmloom.curation import hashing, neardup
from vlmloom.curation.neardup import DedupConfig, DedupRow, UnionFind
from vlmloom.pipelines.dedup import MinhashNearDedup
from vlmloom.schemas.records import ImageRef, Sample

VOCAB = [f"w{i}" for i in range(60)]


def _corpus(seed: int, n: int) -> list[Sample]:
    rng = random.Random(seed)
    bases = [[rng.choice(VOCAB) for _ in range(words)] for words in (50, 70, 160) * 2]  # 160 words: > 512 bytes
    shas = [f"{rng.getrandbits(256):064x}" for _ in range(5)]
    phash_bases = [rng.getrandbits(64) for _ in range(4)]
    keys = rng.sample(range(10**6), n)
    samples = []
    for i in range(n):
        roll = rng.random()
        words = list(rng.choice(bases))
        if roll < 0.3:
            pass  # an identical text
        elif roll < 0.8:
            for _ in range(rng.choice([1, 1, 2, 4])):  # a near-duplicate: some words changed
                words[rng.randrange(len(words))] = rng.choice(VOCAB)
        elif roll < 0.93:
            words = [rng.choice(VOCAB) for _ in range(rng.randint(14, 30))]  # a distinct text
        else:
            words = words[:rng.randint(2, 8)]  # too short to be compared
        text, key = " ".join(words), f"k{keys[i]:06d}"
        if rng.random() < 0.5:
            samples.append(Sample(key=key, source="s", source_id=key, kind="qa", text=text))
            continue
        w = rng.choice([32, 64])
        sha = rng.choice(shas + ["", f"{rng.getrandbits(256):064x}"])
        image = Sample(key=key, source="s", source_id=key, text=text,
                       images=[ImageRef(sha256=sha, width=w, height=w, bytes=bytes(rng.choice([100, 200])))])
        image.signals.update(width=w, height=w)
        if rng.random() < 0.85:
            flipped = rng.sample(range(64), rng.choice([0, 0, 1, 3, 5, 9, 20]))
            image.signals["phash"] = f"{rng.choice(phash_bases) ^ sum(1 << b for b in flipped):016x}"
        samples.append(image)
    return samples


def _reference(samples: list[Sample], cfg: DedupConfig) -> tuple[dict[str, str], int, int]:
    """{dropped key: representative}, capped buckets, chain members kept: the rule on whole dicts."""
    rows: dict[str, DedupRow] = {s.key: neardup.dedup_row(s) for s in samples}
    sigs = {}
    for s in samples:
        text = neardup.minhash_text(s)
        if len(text.split()) >= cfg.minhash_min_words or len(text) >= 4 * cfg.minhash_min_words:
            sigs[s.key] = hashing.minhash_signature(text, num_perm=cfg.minhash_num_perm).astype(np.uint32)
    digest = {key: neardup.signature_digest(sig) for key, sig in sigs.items()}
    buckets = defaultdict(list)
    for key, sig in sigs.items():
        for band in hashing.minhash_band_keys(sig, cfg.minhash_bands, cfg.minhash_num_perm // cfg.minhash_bands):
            buckets[band[0], band[1][:16]].append((key, digest[key], rows[key].image()))
    edges, candidates, capped = [], set(), 0
    for bucket in buckets.values():
        found, pairs, was_capped = neardup.minhash_bucket_candidates(bucket, cfg.max_bucket_pairs,
                                                                     cfg.phash_max_distance)
        edges += found
        candidates |= set(pairs)
        capped += was_capped
    verified = [(a, b) for a, b in sorted(candidates) if np.mean(sigs[a] == sigs[b]) >= cfg.minhash_threshold]
    union: UnionFind[str] = UnionFind()
    for a, b in edges + verified:
        union.union(a, b)
    near_digests = defaultdict(set)
    for a, b in verified:
        near_digests[a].add(digest[b])
        near_digests[b].add(digest[a])
    clusters = defaultdict(list)
    for node, label in union.components().items():
        clusters[label].append(node)
    decisions, chain_kept = {}, 0
    for nodes in clusters.values():
        pairs_in_cluster = {(digest[n], d) for n in nodes for d in near_digests[n]}
        rep = neardup.choose_representative([rows[n].member() for n in nodes])
        for node in nodes:
            if node == rep:
                continue
            texts = (digest[node] == digest[rep] or (digest[node], digest[rep]) in pairs_in_cluster
                     or (digest[rep], digest[node]) in pairs_in_cluster)
            if texts and neardup.images_near(rows[node].image(), rows[rep].image(), cfg.phash_max_distance):
                decisions[node] = rep
            else:
                chain_kept += 1
    return decisions, capped, chain_kept


def _counter(result, name: str) -> int:
    return sum(c.committed for c in result.metrics().query(MetricsFilter().with_name(name))["counters"])


@pytest.mark.parametrize("seed, n, options", [
    (0, 160, dict(minhash_threshold=0.7)),
    (1, 160, dict(minhash_threshold=0.8, max_bucket_pairs=3, phash_max_distance=4)),
    (2, 120, dict(minhash_threshold=0.6, minhash_bands=32, max_bucket_pairs=12, phash_max_distance=10)),
])
def test_minhash_decisions_equal_the_reference(seed, n, options):
    samples = _corpus(seed, n)
    cfg = DedupConfig(**options)
    expected, capped, chain_kept = _reference(samples, cfg)
    assert len(expected) > n // 6 and chain_kept > 0  # the corpus exercises drops and chains
    if cfg.max_bucket_pairs < 100:
        assert capped > 0
    p = TestPipeline()
    out = p | beam.Create(samples) | MinhashNearDedup(cfg)
    assert_that(out["rejected"] | beam.Map(lambda r: (r.key, r.detail)),
                equal_to([(key, f"duplicate of {rep}") for key, rep in expected.items()]))
    result = p.run()
    result.wait_until_finish()
    assert _counter(result, "minhash_bucket_capped") == capped
    assert _counter(result, "minhash_chain_kept") == chain_kept


def test_packing_gives_back_every_string_exactly():
    rng = random.Random(3)
    odd = ["", "ab", "AB", "a b", "0x1f", "zz", "é漢", "0" * 63, "ff" * 40, "k/ey with space"]
    for _ in range(200):
        key = rng.choice(odd + [f"k{rng.getrandbits(40):x}"])
        image = rng.choice([None, (rng.choice(odd), rng.choice(odd)), (f"{rng.getrandbits(64):016x}", "")])
        digest = rng.choice([f"{rng.getrandbits(64):016x}", rng.choice(odd)])
        row = DedupRow(key, "", image[0] if image else "", image[1] if image else "", rng.randint(-5, 10**7),
                       rng.randint(0, 10**9), rng.randint(0, 300))
        member, payload = neardup.unpack_text_member(key, neardup.pack_text_member(neardup.pack_row(row), digest))
        assert member == row.member() and payload == (digest, row.image())
        band = f"{rng.getrandbits(64):016x}"
        rows = [neardup.pack_band_row(band, key), neardup.pack_band_row(band, "~x"), neardup.pack_band_row("0a", "y")]
        assert neardup.band_bucket_keys(5 << 8 | 7, [b"".join(rows[:2]), rows[2]]) == [(f"5:{band}", sorted([key, "~x"]))]
    sig = np.arange(128, dtype=np.uint32) * np.uint32(2**25 + 7)
    assert np.array_equal(neardup.unpack_signature(neardup.pack_signature(sig), 128), sig)
    blob = b"".join(neardup.pack_keyed(key, neardup.pack_signature(sig + i)) for i, key in enumerate(["a", "é漢", "ff"]))
    assert [(key, neardup.unpack_signature(values, 128).tolist()) for key, values in neardup.keyed_entries([blob])] == [
        (key, (sig + i).tolist()) for i, key in enumerate(["a", "é漢", "ff"])]
    # A text shorter than its values travels instead of them, and gives back the very same values; a longer one not.
    for text, travels in [("a short caption of the photo, é漢 and all " * 3, True), ("long words " * 60, False)]:
        values = hashing.minhash_signature(text, num_perm=128).astype(np.uint32)
        packed = neardup.pack_signature(values, text)
        assert (text.encode() in packed, len(packed) < 513) == (travels, travels)
        assert np.array_equal(neardup.unpack_signature(packed, 128), values)
    digest, bands = neardup.unpack_band_digests(neardup.pack_band_digests("0a" * 8, ["ff" * 8, "X", ""]))
    assert (digest, bands) == ("0a" * 8, ["ff" * 8, "X", ""])
    assert neardup.coarse_band_key(3, "a7" + "0" * 14) == 3 << 8 | 0xA7
