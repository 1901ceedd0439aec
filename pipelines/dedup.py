"""Deduplication stages: exact content hash, near-duplicate images (pHash) and texts (MinHash).

All three shuffle only small metadata (keys, hashes, sizes), never image bytes:
  1. candidate edges: records sharing an LSH band bucket (pHash: pigeonhole bands over *distinct*
     hash values, so a bucket of 100k identical hashes is a single node; MinHash: b bands of r rows),
     verified by Hamming distance / estimated Jaccard;
  2. connected components of the edge graph with a union-find combiner (transitive clusters);
  3. per component, one representative by a deterministic rule; every other member becomes a
     Rejection whose detail names the representative. The decisions reach the records as a side input
     and are routed by the one RouteDoFn of pipelines/stages.py (counters, lineage, dead letters).
The per-group logic (verification, representatives, `DedupConfig`) is in curation/neardup.py.
The union-find runs in one combiner: memory grows with the number of *duplicated* nodes, which is
what a laptop-to-Dataflow corpus of up to a few hundred million records keeps well under a worker's RAM.
"""
from __future__ import annotations

from functools import partial
from typing import Any

import apache_beam as beam

from vlmloom.curation import hashing, neardup
from vlmloom.curation.base import Verdict
from vlmloom.curation.neardup import DedupConfig
from vlmloom.pipelines.stages import KEPT, REJECTED, Fixed, route
from vlmloom.schemas.config import config_hash
from vlmloom.schemas.records import Sample

EXACT_STAGE, PHASH_STAGE, MINHASH_STAGE = "exact_dedup", "near_dup_image", "near_dup_text"


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


def _duplicate_verdict(reason: str, sample: Sample, decisions: dict[str, str]) -> tuple[Sample, Verdict]:
    rep = decisions.get(sample.key)
    return sample, (Verdict.ok() if rep is None else Verdict.drop(reason, f"duplicate of {rep}", duplicate_of=rep))


class _DedupTransform(beam.PTransform):
    """Base of the dedup stages: decisions {key: representative} are routed through the one RouteDoFn
    (pipelines/stages.py), with a dead-letter output like every other stage."""

    def __init__(self, *, config_hash_: str = "", max_error_ratio: float = 0.05):
        super().__init__()
        self._hash, self._max_error_ratio = config_hash_, max_error_ratio

    def _route(self, samples, decisions, stage: str, reason: str):
        kept, rejected = route(samples, "Route", stage, Fixed(partial(_duplicate_verdict, reason)), self._hash,
                               max_error_ratio=self._max_error_ratio, side_inputs=[beam.pvalue.AsDict(decisions)])
        return {KEPT: kept, REJECTED: rejected | "MergeRejected" >> beam.Flatten()}


class ExactDedup(_DedupTransform):
    """Identical image bytes (sha256 of image 0) or, for image-less records, identical text."""

    def expand(self, samples):
        def content_key(sample: Sample):
            if sample.images and sample.images[0].sha256:
                yield "img:" + sample.images[0].sha256, (sample.key, _pixels(sample))
            elif sample.text:
                yield "txt:" + hashing.sha256_hex(sample.text.encode("utf-8")), (sample.key, _text_len(sample))

        decisions = (samples | "ContentKey" >> beam.FlatMap(content_key)
                     | "GroupByContent" >> beam.GroupByKey()
                     | "Decide" >> beam.FlatMap(neardup.duplicate_decisions))
        return self._route(samples, decisions, EXACT_STAGE, "exact_duplicate")


class PhashNearDedup(_DedupTransform):
    """pHash Hamming <= k, transitively; keep the largest image (then the smallest key) per cluster."""

    def __init__(self, max_distance: int, max_bucket_pairs: int, **route_options):
        super().__init__(**route_options)
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
                 | "VerifyPairs" >> beam.FlatMap(lambda bucket: neardup.verified_hex_pairs(bucket[1], k))
                 | "Components" >> beam.CombineGlobally(UnionFindCombineFn()))
        decisions = (by_hash
                     | "ToCluster" >> beam.FlatMap(
                         lambda kv, roots: [(roots.get(kv[0], kv[0]), m) for m in kv[1]], beam.pvalue.AsSingleton(roots))
                     | "GroupByCluster" >> beam.GroupByKey()
                     | "Decide" >> beam.FlatMap(neardup.duplicate_decisions))
        return self._route(samples, decisions, PHASH_STAGE, "near_duplicate_image")


class MinhashNearDedup(_DedupTransform):
    """Near-duplicate texts by MinHash LSH; keep the longest text (then the smallest key) per cluster."""

    def __init__(self, config: DedupConfig, **route_options):
        super().__init__(**route_options)
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
                 | "VerifyPairs" >> beam.FlatMap(lambda kv: neardup.minhash_bucket_edges(list(kv[1]), cfg.minhash_threshold,
                                                                                   cfg.max_bucket_pairs))
                 | "Components" >> beam.CombineGlobally(UnionFindCombineFn()))
        decisions = (sigs
                     | "ToCluster" >> beam.FlatMap(
                         lambda item, roots: [(roots[item[0]], (item[0], item[2]))] if item[0] in roots else [],
                         beam.pvalue.AsSingleton(roots))
                     | "GroupByCluster" >> beam.GroupByKey()
                     | "Decide" >> beam.FlatMap(neardup.duplicate_decisions))
        return self._route(samples, decisions, MINHASH_STAGE, "near_duplicate_text")


def dedup_stages(config: DedupConfig, max_error_ratio: float = 0.05) -> list[tuple[str, Any]]:
    options = {"config_hash_": config_hash(config), "max_error_ratio": max_error_ratio}
    stages: list[tuple[str, Any]] = []
    if config.exact:
        stages.append((EXACT_STAGE, ExactDedup(**options)))
    if config.phash:
        stages.append((PHASH_STAGE, PhashNearDedup(config.phash_max_distance, config.max_bucket_pairs, **options)))
    if config.minhash:
        stages.append((MINHASH_STAGE, MinhashNearDedup(config, **options)))
    return stages
