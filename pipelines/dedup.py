"""Deduplication stages: exact content hash, near-duplicate images (pHash) and texts (MinHash).

All three shuffle only small metadata (keys, hashes, sizes), never image bytes:
  1. candidate edges: records sharing an LSH band bucket (pHash: pigeonhole bands over *distinct*
     hash values, so a bucket of 100k identical hashes is a single node; MinHash: b bands of r rows),
     verified by Hamming distance / estimated Jaccard;
  2. connected components of the edge graph with a union-find combiner (transitive clusters);
  3. per component, one representative by a deterministic rule; every other member becomes a
     Rejection whose detail names the representative. The decisions reach the records as a side input.
The union-find runs in one combiner: memory grows with the number of *duplicated* nodes, which is
what a laptop-to-Dataflow corpus of up to a few hundred million records keeps well under a worker's RAM.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterable

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from vlmloom.curation import hashing, neardup
from vlmloom.schemas.config import ConfigError
from vlmloom.schemas.records import Rejection, Sample

EXACT_STAGE, PHASH_STAGE, MINHASH_STAGE = "exact_dedup", "near_dup_image", "near_dup_text"


@dataclass(frozen=True, kw_only=True)
class DedupConfig:
    exact: bool = True  # drop records whose image bytes (or, for text-only records, text) are identical
    phash: bool = True  # drop near-duplicate images
    phash_max_distance: int = 6  # Hamming distance <= this on the 64-bit pHash counts as a near duplicate
    minhash: bool = True  # drop near-duplicate captions/documents
    minhash_threshold: float = 0.8  # estimated Jaccard similarity of word 5-gram shingles
    minhash_num_perm: int = 128  # signature length; must equal bands * rows
    minhash_bands: int = 16  # LSH bands (more bands: higher recall at lower similarity)
    minhash_min_words: int = 12  # shorter texts are not text-deduplicated (short captions repeat legitimately)
    max_bucket_pairs: int = 2_000_000  # cap on verified pairs per LSH bucket; beyond it members link to bucket anchors

    def validate(self) -> None:
        if not 0 <= self.phash_max_distance <= 31:
            raise ConfigError(f"dedup.phash_max_distance ({self.phash_max_distance}) must be within 0..31")
        if self.minhash_num_perm % self.minhash_bands:
            raise ConfigError(f"dedup.minhash_num_perm ({self.minhash_num_perm}) must be a multiple of "
                              f"dedup.minhash_bands ({self.minhash_bands})")
        if not 0 < self.minhash_threshold <= 1:
            raise ConfigError(f"dedup.minhash_threshold ({self.minhash_threshold}) must be in (0, 1]")


def _pixels(sample: Sample) -> int:
    return int(sample.signals.get("width", 0)) * int(sample.signals.get("height", 0))


def _text_len(sample: Sample) -> int:
    return len(sample.text or "")


class UnionFindCombineFn(beam.CombineFn):
    """Edges (a, b) → {node: root} with root = the smallest node of its component."""

    def create_accumulator(self):
        return neardup.UnionFind()

    def add_input(self, uf, edge):
        uf.union(edge[0], edge[1])
        return uf

    def merge_accumulators(self, accumulators):
        accumulators = iter(accumulators)
        first = next(accumulators)
        for other in accumulators:
            for node, root in other.components().items():
                first.union(node, root)
        return first

    def extract_output(self, uf):
        return uf.components()


class _RouteDecisions(beam.DoFn):
    """Split samples by the {key: representative} side input into kept and rejected."""

    def __init__(self, stage: str, reason: str):
        self._stage, self._reason = stage, reason
        self._dropped = Metrics.counter(stage, f"dropped_{reason}")
        self._kept = Metrics.counter(stage, "kept")

    def process(self, sample: Sample, decisions: dict[str, str]):
        rep = decisions.get(sample.key)
        if rep is None:
            self._kept.inc()
            yield sample
        else:
            self._dropped.inc()
            yield beam.pvalue.TaggedOutput("rejected", Rejection.of(sample, self._stage, self._reason, f"duplicate of {rep}"))


def _route(samples, decisions, stage: str, reason: str):
    out = samples | "Route" >> beam.ParDo(_RouteDecisions(stage, reason), beam.pvalue.AsDict(decisions)).with_outputs(
        "rejected", main="kept")
    return {"kept": out.kept, "rejected": out.rejected}


def _decide(group: tuple[Hashable, Iterable[tuple[str, int]]], prefer: Callable[[list[tuple[str, int]]], str]):
    _, members = group
    members = sorted(set(members))
    if len(members) < 2:
        return
    rep = prefer(members)
    for key, _ in members:
        if key != rep:
            yield key, rep


class ExactDedup(beam.PTransform):
    """Identical image bytes (sha256 of image 0) or, for image-less records, identical text."""

    def expand(self, samples):
        def content_key(sample: Sample):
            if sample.images and sample.images[0].sha256:
                yield "img:" + sample.images[0].sha256, (sample.key, _pixels(sample))
            elif sample.text:
                yield "txt:" + hashing.sha256_hex(sample.text.encode("utf-8")), (sample.key, _text_len(sample))

        decisions = (samples | "ContentKey" >> beam.FlatMap(content_key)
                     | "GroupByContent" >> beam.GroupByKey()
                     | "Decide" >> beam.FlatMap(_decide, neardup.choose_representative))
        return _route(samples, decisions, EXACT_STAGE, "exact_duplicate")


class PhashNearDedup(beam.PTransform):
    """pHash Hamming <= k, transitively; keep the largest image (then the smallest key) per cluster."""

    def __init__(self, max_distance: int, max_bucket_pairs: int):
        super().__init__()
        self._k = max_distance
        self._max_pairs = max_bucket_pairs

    def expand(self, samples):
        k = self._k
        # Hashes travel as 16-digit hex strings: unsigned 64-bit ints overflow Beam's VarInt coder.
        by_hash = (samples
                   | "Hash" >> beam.FlatMap(lambda s: [(s.signals["phash"], (s.key, _pixels(s)))]
                                            if s.signals.get("phash") else [])
                   | "GroupByHash" >> beam.GroupByKey())
        roots = (by_hash
                 | "Distinct" >> beam.Keys()
                 | "Bands" >> beam.FlatMap(lambda h: [(band, h) for band in neardup.phash_band_keys(int(h, 16), k)])
                 | "GroupByBand" >> beam.GroupByKey()
                 | "VerifyPairs" >> beam.FlatMap(_verified_hex_pairs, k)
                 | "Components" >> beam.CombineGlobally(UnionFindCombineFn()))
        decisions = (by_hash
                     | "ToCluster" >> beam.FlatMap(
                         lambda kv, roots: [(roots.get(kv[0], kv[0]), m) for m in kv[1]], beam.pvalue.AsSingleton(roots))
                     | "GroupByCluster" >> beam.GroupByKey()
                     | "Decide" >> beam.FlatMap(_decide, neardup.choose_representative))
        return _route(samples, decisions, PHASH_STAGE, "near_duplicate_image")


def _verified_hex_pairs(bucket: tuple[Any, Iterable[str]], max_distance: int):
    values = sorted({int(h, 16) for h in bucket[1]})
    for a, b in neardup.verified_pairs(values, max_distance):
        yield f"{a:016x}", f"{b:016x}"


def minhash_bucket_edges(members: list[tuple[str, np.ndarray]], threshold: float, max_pairs: int):
    """Verified edges in one MinHash bucket. Identical signatures are chained without comparison; distinct
    ones are compared pairwise (vectorised) up to `max_pairs`, after which members link to the first member."""
    by_sig: dict[bytes, list[str]] = {}
    for key, sig in members:
        by_sig.setdefault(np.asarray(sig, dtype=np.uint64).tobytes(), []).append(key)
    groups = sorted((sorted(keys), sig) for sig, keys in by_sig.items())
    for keys, _ in groups:
        for a, b in zip(keys, keys[1:]):
            yield a, b
    if len(groups) < 2:
        return
    heads = [keys[0] for keys, _ in groups]
    sigs = np.stack([np.frombuffer(sig, dtype=np.uint64) for _, sig in groups])
    pairs = 0
    for i in range(len(groups) - 1):
        if pairs > max_pairs:
            break
        similarity = (sigs[i + 1:] == sigs[i]).mean(axis=1)
        pairs += len(similarity)
        for j in np.nonzero(similarity >= threshold)[0]:
            yield heads[i], heads[i + 1 + int(j)]


class MinhashNearDedup(beam.PTransform):
    """Near-duplicate texts by MinHash LSH; keep the longest text (then the smallest key) per cluster."""

    def __init__(self, config: DedupConfig):
        super().__init__()
        self._cfg = config

    def expand(self, samples):
        cfg = self._cfg
        rows = cfg.minhash_num_perm // cfg.minhash_bands

        def signature(sample: Sample):
            text = sample.text or ""
            if len(text.split()) < cfg.minhash_min_words and len(text) < 4 * cfg.minhash_min_words:
                return
            yield sample.key, hashing.minhash_signature(text, num_perm=cfg.minhash_num_perm), _text_len(sample)

        sigs = samples | "Signature" >> beam.FlatMap(signature)
        roots = (sigs
                 | "Bands" >> beam.FlatMap(lambda item: [(band, (item[0], item[1]))
                                                         for band in hashing.minhash_band_keys(item[1], cfg.minhash_bands, rows)])
                 | "GroupByBand" >> beam.GroupByKey()
                 | "VerifyPairs" >> beam.FlatMap(lambda kv: minhash_bucket_edges(list(kv[1]), cfg.minhash_threshold,
                                                                                   cfg.max_bucket_pairs))
                 | "Components" >> beam.CombineGlobally(UnionFindCombineFn()))
        decisions = (sigs
                     | "ToCluster" >> beam.FlatMap(
                         lambda item, roots: [(roots[item[0]], (item[0], item[2]))] if item[0] in roots else [],
                         beam.pvalue.AsSingleton(roots))
                     | "GroupByCluster" >> beam.GroupByKey()
                     | "Decide" >> beam.FlatMap(_decide, _prefer_longest))
        return _route(samples, decisions, MINHASH_STAGE, "near_duplicate_text")


def _prefer_longest(members: list[tuple[str, int]]) -> str:
    return min(members, key=lambda m: (-m[1], m[0]))[0]


def dedup_stages(config: DedupConfig) -> list[tuple[str, Any]]:
    stages: list[tuple[str, Any]] = []
    if config.exact:
        stages.append((EXACT_STAGE, ExactDedup()))
    if config.phash:
        stages.append((PHASH_STAGE, PhashNearDedup(config.phash_max_distance, config.max_bucket_pairs)))
    if config.minhash:
        stages.append((MINHASH_STAGE, MinhashNearDedup(config)))
    return stages
