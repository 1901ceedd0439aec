"""Deduplication stages: exact content hash, near-duplicate images (pHash) and texts (MinHash).

PCollection[Sample] → {"kept": samples, "rejected": Rejections (`exact_duplicate`, `near_duplicate_image`,
`near_duplicate_text`, detail "duplicate of <representative key>")}.

The decisions are computed from small metadata (keys, hashes, sizes), never image bytes:
  1. candidate edges: records sharing an LSH band bucket (pHash: pigeonhole bands over *distinct*
     hash values, so a bucket of 100k identical hashes is a single node; MinHash: b bands of r rows),
     verified by Hamming distance / estimated Jaccard, at most `max_bucket_pairs` per bucket (counted);
  2. connected components of the edge graph by large-star/small-star rounds (`ConnectedComponents`,
     the per-round logic in curation/components.py): a worker holds one node's neighbourhood, never the corpus;
  3. per component, one representative by the rule shared by all three stages
     (`neardup.representative_rank`: most pixels, then most image bytes, then longest text, then smallest key);
  4. the decisions {key: representative} meet their records in a keyed join (CoGroupByKey on the key) and are
     routed by the one RouteDoFn of pipelines/stages.py (counters, lineage, dead letters).
No side input and no global combine carries per-record data (tests/test_pipeline_structure.py checks it).

Which records may drop which (the pair-aware rule):
  * exact: identical image-0 bytes; image-less records: identical text;
  * image: pHash Hamming distance <= phash_max_distance, transitively;
  * text: MinHash estimated Jaccard >= minhash_threshold, transitively; for records with an image, a text
    edge counts only when the images are near as well (same sha256 or pHash within phash_max_distance):
    templated alt-text ("Click to enlarge") never removes a distinct image. Text-only records dedup by text
    alone, and only against other text-only records.
"""
from __future__ import annotations

from functools import partial
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from vlmloom.curation import components, hashing, neardup
from vlmloom.curation.base import Verdict
from vlmloom.curation.neardup import DedupConfig
from vlmloom.pipelines.shuffle import keyed, sample_key, unpickled
from vlmloom.pipelines.stages import KEPT, REJECTED, Fixed, route
from vlmloom.schemas.config import config_hash
from vlmloom.schemas.records import Sample
from vlmloom.schemas.signals import DEDUP_STAGES

EXACT_STAGE, PHASH_STAGE, MINHASH_STAGE = DEDUP_STAGES
COUNTER_NAMESPACE = "dedup"  # dedup/minhash_bucket_capped, dedup/phash_bucket_capped, dedup/<stage>_components_unconverged


class ConnectedComponents(beam.PTransform):
    """Edges (a, b) → (node, label) for every node with an edge; label = the smallest node of its component.

    `max_rounds` large-star/small-star rounds are unrolled in the graph (two shuffles each); a node that has
    not converged after them keeps the smallest node it sees (its component may split: more records kept,
    none lost) and is counted as `dedup/<name>_components_unconverged`."""

    def __init__(self, name: str, max_rounds: int):
        super().__init__()
        self._name, self._rounds = name, max_rounds

    def expand(self, edges):
        current = edges | "Normalise" >> beam.FlatMap(lambda e: [n] if (n := components.normalised(*e)) else [])
        for r in range(self._rounds):
            current = (current
                       | f"Both{r}" >> beam.FlatMap(components.both_directions)
                       | f"ByNode{r}" >> beam.GroupByKey()
                       | f"LargeStar{r}" >> beam.FlatMapTuple(components.large_star)
                       | f"BySmaller{r}" >> beam.GroupByKey()
                       | f"SmallStar{r}" >> beam.FlatMapTuple(components.small_star))
        return (current
                | "BothFinal" >> beam.FlatMap(components.both_directions)
                | "ByNodeFinal" >> beam.GroupByKey()
                | "Label" >> beam.ParDo(_LabelDoFn(f"{self._name}_components_unconverged")))


class _LabelDoFn(beam.DoFn):
    def __init__(self, counter: str):
        self._unconverged = Metrics.counter(COUNTER_NAMESPACE, counter)

    def process(self, element):
        node, neighbours = element
        label, converged = components.star_label(node, neighbours)
        if not converged:
            self._unconverged.inc()
        yield node, label


def _counted(counter_name: str):
    """BucketEdges → its edges, counting capped buckets."""
    counter = Metrics.counter(COUNTER_NAMESPACE, counter_name)

    def edges(found: neardup.BucketEdges):
        if found.capped:
            counter.inc()
        return found.edges

    return edges


def _members_by_group(label: str, grouped_members, labels):
    """(node, [member]) joined with (node, label) → (label, member); a node without an edge is its own group."""
    def regroup(element):
        node, joined = element
        label_of = min(joined["label"], default=node)
        for members in joined["members"]:
            for member in members:
                yield label_of, member

    return ({"members": grouped_members, "label": labels} | f"{label}Join" >> beam.CoGroupByKey()
            | f"{label}ToCluster" >> beam.FlatMap(regroup))


def _duplicate_verdict(reason: str, joined: tuple[Sample, list[str]]) -> tuple[Sample, Verdict]:
    sample, representatives = joined
    if not representatives:
        return sample, Verdict.ok()
    return sample, Verdict.drop(reason, f"duplicate of {min(representatives)}",
                                       duplicate_of=min(representatives))


def _with_decisions(element):
    _, joined = element
    for sample in unpickled(joined["sample"]):
        yield sample, sorted(joined["representative"])


class _DedupTransform(beam.PTransform):
    """Base of the dedup stages: decisions (key, representative) meet their records in a keyed join and are
    routed through the one RouteDoFn (pipelines/stages.py), with a dead-letter output like every other stage."""

    def __init__(self, *, config_hash_: str = "", max_error_ratio: float = 0.05):
        super().__init__()
        self._hash, self._max_error_ratio = config_hash_, max_error_ratio

    def _route(self, samples, decisions, stage: str, reason: str):
        by_key = samples | "ByKey" >> keyed(sample_key)
        joined = ({"sample": by_key, "representative": decisions} | "JoinDecisions" >> beam.CoGroupByKey()
                  | "WithDecisions" >> beam.FlatMap(_with_decisions))
        kept, rejected = route(joined, "Route", stage, Fixed(partial(_duplicate_verdict, reason)), self._hash,
                               max_error_ratio=self._max_error_ratio)
        return {KEPT: kept, REJECTED: rejected | "MergeRejected" >> beam.Flatten()}


class ExactDedup(_DedupTransform):
    """Identical image bytes (sha256 of image 0) or, for image-less records, identical text."""

    def expand(self, samples):
        def content_key(sample: Sample):
            if sample.images and sample.images[0].sha256:
                yield "img:" + sample.images[0].sha256, neardup.sample_member(sample)
            elif sample.text:
                yield "txt:" + hashing.sha256_hex(sample.text.encode("utf-8")), neardup.sample_member(sample)

        decisions = (samples | "ContentKey" >> beam.FlatMap(content_key)
                     | "GroupByContent" >> beam.GroupByKey()
                     | "Decide" >> beam.FlatMap(neardup.duplicate_decisions))
        return self._route(samples, decisions, EXACT_STAGE, "exact_duplicate")


class PhashNearDedup(_DedupTransform):
    """pHash Hamming <= k, transitively; the representative by `neardup.representative_rank`."""

    def __init__(self, max_distance: int, max_bucket_pairs: int, max_rounds: int = 12, **route_options):
        super().__init__(**route_options)
        self._k = max_distance
        self._max_pairs = max_bucket_pairs
        self._rounds = max_rounds

    def expand(self, samples):
        k, max_pairs = self._k, self._max_pairs
        # Hashes travel as 16-digit hex strings: unsigned 64-bit ints overflow Beam's VarInt coder.
        by_hash = (samples
                   | "Hash" >> beam.FlatMap(lambda s: [(s.signals["phash"], neardup.sample_member(s))]
                                            if s.signals.get("phash") else [])
                   | "GroupByHash" >> beam.GroupByKey())
        labels = (by_hash
                  | "Distinct" >> beam.Keys()
                  | "Bands" >> beam.FlatMap(lambda h: [(band, h) for band in neardup.phash_band_keys(int(h, 16), k)])
                  | "GroupByBand" >> beam.GroupByKey()
                  | "VerifyPairs" >> beam.MapTuple(lambda _, bucket: neardup.verified_hex_pairs(bucket, k, max_pairs))
                  | "CountCapped" >> beam.FlatMap(_counted("phash_bucket_capped"))
                  | "Components" >> ConnectedComponents(PHASH_STAGE, self._rounds))
        decisions = (_members_by_group("Hash", by_hash | "MembersList" >> beam.MapTuple(lambda h, ms: (h, list(ms))),
                                       labels)
                     | "GroupByCluster" >> beam.GroupByKey()
                     | "Decide" >> beam.FlatMap(neardup.duplicate_decisions))
        return self._route(samples, decisions, PHASH_STAGE, "near_duplicate_image")


def _image_fingerprint(sample: Sample) -> tuple[str, str] | None:
    if not sample.images:
        return None
    return (sample.images[0].sha256 or str(sample.signals.get("image_sha256") or ""),
            str(sample.signals.get("phash") or ""))


class MinhashNearDedup(_DedupTransform):
    """Near-duplicate texts by MinHash LSH, pair-aware (see the module docstring); the representative by
    `neardup.representative_rank`."""

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
            yield (sample.key, hashing.minhash_signature(text, num_perm=cfg.minhash_num_perm),
                   _image_fingerprint(sample), neardup.sample_member(sample))

        def verify(_, bucket):
            return neardup.minhash_bucket_edges(list(bucket), cfg.minhash_threshold, cfg.max_bucket_pairs,
                                                cfg.phash_max_distance)

        sigs = samples | "Signature" >> beam.FlatMap(signature)
        labels = (sigs
                  | "Bands" >> beam.FlatMap(lambda item: [(band, item[:3]) for band in
                                                          hashing.minhash_band_keys(item[1], cfg.minhash_bands, rows)])
                  | "GroupByBand" >> beam.GroupByKey()
                  | "VerifyPairs" >> beam.MapTuple(verify)
                  | "CountCapped" >> beam.FlatMap(_counted("minhash_bucket_capped"))
                  | "Components" >> ConnectedComponents(MINHASH_STAGE, cfg.components_max_rounds))
        # Only records with an edge can be duplicates: the join drops the others (no label, own group of one).
        members = sigs | "Members" >> beam.Map(lambda item: (item[0], [item[3]]))
        decisions = (_members_by_group("Key", members, labels)
                     | "GroupByCluster" >> beam.GroupByKey()
                     | "Decide" >> beam.FlatMap(neardup.duplicate_decisions))
        return self._route(samples, decisions, MINHASH_STAGE, "near_duplicate_text")


def dedup_stages(config: DedupConfig, max_error_ratio: float = 0.05) -> list[tuple[str, Any]]:
    options = {"config_hash_": config_hash(config), "max_error_ratio": max_error_ratio}
    stages: list[tuple[str, Any]] = []
    if config.exact:
        stages.append((EXACT_STAGE, ExactDedup(**options)))
    if config.phash:
        stages.append((PHASH_STAGE, PhashNearDedup(config.phash_max_distance, config.max_bucket_pairs,
                                                   config.components_max_rounds, **options)))
    if config.minhash:
        stages.append((MINHASH_STAGE, MinhashNearDedup(config, **options)))
    return stages
