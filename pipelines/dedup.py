"""Deduplication stages: exact content, near-duplicate images (pHash) and texts (MinHash), decided on metadata.

    samples | DedupDecisions(config) → (key, Decision) for every record a stage drops   (metadata shuffles only)
    samples + decisions → met once: in the sink's per-bucket writer (the decisions as a side input keyed by
    bucket), or in one keyed join (`ApplyDecisions`) when model stages follow → kept samples + Rejections
    (`exact_duplicate`, `near_duplicate_image`, `near_duplicate_text`, detail "duplicate of <representative key>")

What crosses the dedup shuffles is one `neardup.DedupRow` per record (key, content digest, image sha256 and pHash,
the sizes the representative rule reads: ~200 bytes), never a sample or an image:
  1. exact: rows grouped by their content digest (per kind: `schemas.kinds.dedup_content_digest`; a `qa` record is
     its images *and* its turns, an interleaved document all of its segments);
  2. candidate edges: records sharing an LSH band bucket (pHash: pigeonhole bands over *distinct* hash values, so
     a bucket of 100k identical hashes is a single node; MinHash: b bands of r rows), verified by Hamming
     distance / estimated Jaccard, at most `max_bucket_pairs` per bucket (counted). MinHash band rows carry a band
     digest and a key, packed (`MinhashDecisions`); the members of buckets of two or more fetch their signature
     digests and image hashes by key, and the candidate pairs their signature values (or the record's text where it
     is shorter: the values are computed again from it) (one join each);
  3. connected components of the edge graph by large-star/small-star rounds (`ConnectedComponents`,
     the per-round logic in curation/components.py): a worker holds one node's neighbourhood, never the corpus;
  4. per component, one representative by the rule shared by all three stages
     (`neardup.representative_rank`: most pixels, then most image bytes, then longest text, then smallest key);
     clusters may chain (A~B, B~C) but decisions may not: a member is dropped only when it lies within the
     threshold of the representative that is kept; the chain's farther members are kept and counted
     (`dedup/phash_chain_kept`, `dedup/minhash_chain_kept`);
  5. the survivors of one stage are the rows of the next: exact's come out of its content groups (they hold every
     row of a digest); the others' decisions are taken out of the rows by the next stage's first key join (MinHash's
     join of rows with signature digests), or by a keyed join of their own before a stage that has none.
No side input and no global combine carries per-record data (tests/test_pipeline_structure.py checks it, and that
no dedup shuffle carries a sample or bytes).

Embedding stages (off by default; `EmbeddingDecisions`, judgment in curation/embeddings.py): per record a primary
and an optional secondary unit vector, computed in a DoFn whose models load in `setup()` (batched), joined by key
with the surviving rows; random-hyperplane LSH buckets on the primary vector, `cosine_pairs` per bucket (capped:
`dedup/<stage>_bucket_capped`), then the same components, representative rule and within-threshold decisions.
  * near_dup_embedding (`dedup.embedding`): primary = video 0's frames through the CLIP image tower (mean,
    re-normalised; image 0 for image records of the listed kinds), secondary = the kind's texts through the text
    backend: dropped only when both cosines reach their thresholds with the representative's; records without
    text are judged on the visual side alone, and only against other records without text;
  * near_dup_semantic_text (`dedup.semantic_text`): primary = the kind's texts, no secondary.
Vectors cross the shuffles as float32 arrays (~2 KB a record and LSH table), never a sample or a frame.

Which records may drop which (the pair-aware rule):
  * exact: identical content digest;
  * image: pHash Hamming distance <= phash_max_distance from the representative;
  * text: MinHash estimated Jaccard >= minhash_threshold with the representative; for records with an image, a text
    pair counts only when the images are near as well (same sha256 or pHash within phash_max_distance):
    templated alt-text ("Click to enlarge") never removes a distinct image. Text-only records dedup by text
    alone, and only against other text-only records.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from typing import Any, FrozenSet, Iterable, Iterator, List, Optional, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows
from apache_beam.typehints.native_type_compatibility import convert_to_beam_type

from vlmloom.curation import components, hashing, neardup
from vlmloom.curation.embeddings import HyperplaneLsh, NearRule, RecordEmbedder, embedding_bucket_edges
from vlmloom.curation.neardup import DedupConfig, DedupRow
from vlmloom.pipelines import progress, spill
from vlmloom.pipelines.shuffle import keyed, sample_key, unpickled
from vlmloom.pipelines.stages import KEPT, REJECTED
from vlmloom.schemas.config import config_hash
from vlmloom.schemas.records import LineageEntry, Rejection, Sample
from vlmloom.schemas.signals import DEDUP_STAGES

EXACT_STAGE, PHASH_STAGE, MINHASH_STAGE, EMBEDDING_STAGE, SEMANTIC_TEXT_STAGE = DEDUP_STAGES
COUNTER_NAMESPACE = "dedup"  # dedup/minhash_bucket_capped, dedup/phash_bucket_capped, dedup/<stage>_components_unconverged
REASONS = {EXACT_STAGE: "exact_duplicate", PHASH_STAGE: "near_duplicate_image", MINHASH_STAGE: "near_duplicate_text",
           EMBEDDING_STAGE: "near_duplicate_embedding", SEMANTIC_TEXT_STAGE: "near_duplicate_semantic_text"}
# A decision: (stage, representative). Typed so that Beam codes it as plain strings.
Decision = Tuple[str, str]
Edge = Tuple[str, str]
QualityMember = Tuple[str, int, int, int]  # neardup.DedupRow.member(): what the representative rule reads
Image = Optional[Tuple[str, str]]  # neardup.DedupRow.image(): (sha256, pHash hex) of image 0, None without one
Vectors = Tuple[np.ndarray, np.ndarray]  # an embedding stage's (primary, secondary) float32 unit vectors


class ConnectedComponents(beam.PTransform):
    """Edges (a, b) → (node, label) for every node with an edge; label = the smallest node of its component.

    `max_rounds` large-star/small-star rounds are unrolled in the graph (two shuffles each); a node that has
    not converged after them keeps the smallest node it sees (its component may split: more records kept,
    none lost) and is counted as `dedup/<name>_components_unconverged`."""

    def __init__(self, name: str, max_rounds: int, node_type: Any = Any):
        super().__init__()
        self._name, self._rounds = name, max_rounds
        self._edge = Tuple[node_type, node_type]  # the dedup stages' nodes are str: their shuffles are typed

    def expand(self, edges):
        Edge = self._edge  # noqa: N806 - the element type of every step below
        current = edges | "Normalise" >> beam.FlatMap(
            lambda e: [n] if (n := components.normalised(*e)) else []).with_output_types(Edge)
        for r in range(self._rounds):
            current = (current
                       | f"Both{r}" >> beam.FlatMap(components.both_directions).with_output_types(Edge)
                       | f"ByNode{r}" >> beam.GroupByKey()
                       | f"LargeStar{r}" >> beam.FlatMapTuple(components.large_star).with_output_types(Edge)
                       | f"BySmaller{r}" >> beam.GroupByKey()
                       | f"SmallStar{r}" >> beam.FlatMapTuple(components.small_star).with_output_types(Edge))
        return (current
                | "BothFinal" >> beam.FlatMap(components.both_directions).with_output_types(Edge)
                | "ByNodeFinal" >> beam.GroupByKey()
                | "Label" >> beam.ParDo(_LabelDoFn(f"{self._name}_components_unconverged")).with_output_types(Edge))


class _LabelDoFn(beam.DoFn):
    def __init__(self, counter: str):
        self._unconverged = Metrics.counter(COUNTER_NAMESPACE, counter)

    def process(self, element):
        node, neighbours = element
        label, converged = components.star_label(node, neighbours)
        if not converged:
            self._unconverged.inc()
        yield node, label


def _typed(pcoll, hint):
    """A tagged output typed like `with_output_types` types a main output: the type its shuffles are coded by (and
    what tests/test_pipeline_structure.py checks)."""
    pcoll.element_type = convert_to_beam_type(hint)
    return pcoll


def _counted(counter_name: str):
    """BucketEdges → its edges, counting capped buckets."""
    counter = Metrics.counter(COUNTER_NAMESPACE, counter_name)

    def edges(found: neardup.BucketEdges):
        if found.capped:
            counter.inc()
        return found.edges

    return edges


def _members_by_group(label: str, grouped_members, labels, element_type, extra=None, unpack=None):
    """(node, [member]) joined with (node, label) → (label, member); a node without an edge is its own group (and
    left out when it is a group of one: it decides nothing). `extra`: (node, value) items (one node's verified
    neighbours) added to each of its members as (member, extra). `unpack(node, value)` → the members of a packed
    `grouped_members` value (default: the value is the list)."""
    def regroup(element):
        node, joined = element
        labels_of = list(joined["label"])
        label_of = min(labels_of, default=node)
        found = [member for value in joined["members"]
                 for member in (value if unpack is None else unpack(node, value))]
        if not labels_of and len(found) < 2:
            return
        for member in found:
            if extra is None:
                yield label_of, member
            else:  # member = (quality member, payload) → (quality member, (payload, near))
                yield label_of, (member[0], (member[1], frozenset(joined["extra"])))

    inputs = {"members": grouped_members, "label": labels}
    if extra is not None:
        inputs["extra"] = extra
    return (inputs | f"{label}Join" >> beam.CoGroupByKey()
            | f"{label}ToCluster" >> beam.FlatMap(regroup).with_output_types(Tuple[str, element_type]))


class _ChainCountingDecisions(beam.DoFn):
    """A cluster → (key, representative) for each member within the threshold of the representative; the others
    are kept and counted (`dedup/<stage>_chain_kept`)."""

    def __init__(self, counter: str, near_of_cluster):
        self._counter_name, self._near_of_cluster = counter, near_of_cluster

    def setup(self):
        self._chain_kept = Metrics.counter(COUNTER_NAMESPACE, self._counter_name)

    def process(self, element):
        _, members = element
        members = list(members)
        dropped, kept = neardup.within_threshold_decisions(members, self._near_of_cluster(members))
        if kept:
            self._chain_kept.inc(len(kept))
        yield from dropped


SURVIVORS = "survivors"


def _survivors(label: str, rows, decisions):
    """Rows without a decision: what the next stage reads (a keyed join of ~200-byte rows)."""
    def keep(element):
        _, joined = element
        if not joined["decision"]:
            yield from joined["row"]

    return ({"row": rows | f"{label}RowByKey" >> beam.Map(lambda r: (r.key, r)).with_output_types(Tuple[str, DedupRow]),
             "decision": decisions}
            | f"{label}Survivors" >> beam.CoGroupByKey()
            | f"{label}Rows" >> beam.FlatMap(keep).with_output_types(DedupRow))


def _by_content(row: DedupRow):
    if row.content:
        yield row.content, row
    else:  # nothing to compare: the row goes on as it is
        yield beam.pvalue.TaggedOutput(SURVIVORS, row)


def _decide_content_group(element):
    """One content digest's rows → (key, representative) for each but the representative, and the rows that stay
    (tagged `survivors`): the group already holds every row of its digest, so no keyed join is needed after it."""
    content, rows = element
    rows = list(rows)
    dropped = dict(neardup.duplicate_decisions((content, [row.member() for row in rows])))
    yield from dropped.items()
    for row in rows:
        if row.key not in dropped:
            yield beam.pvalue.TaggedOutput(SURVIVORS, row)


class ExactDecisions(beam.PTransform):
    """Rows → {"decisions": (key, representative) for every row whose content digest another, better row shares,
    "survivors": the other rows (what the next stage reads)}. The rows themselves are grouped by digest (~200 bytes
    a record, no image, no text), so the group that decides also says who stays."""

    def expand(self, rows):
        keyed_rows = rows | "ContentKey" >> beam.FlatMap(_by_content).with_outputs(SURVIVORS, main="keyed")
        decided = (_typed(keyed_rows["keyed"], Tuple[str, DedupRow])
                   | "GroupByContent" >> beam.GroupByKey()
                   | "Decide" >> beam.FlatMap(_decide_content_group).with_outputs(SURVIVORS, main="decisions"))
        survivors = ((_typed(keyed_rows[SURVIVORS], DedupRow), _typed(decided[SURVIVORS], DedupRow))
                     | "Survivors" >> beam.Flatten().with_output_types(DedupRow))
        return {"decisions": _typed(decided["decisions"], Decision), SURVIVORS: survivors}


def _phash_near_of_cluster(max_distance: int):
    near = neardup.phash_near(max_distance)
    return lambda members: near


class PhashDecisions(beam.PTransform):
    """Rows → (key, representative): pHash clusters (Hamming <= k, chained), members within k of the representative."""

    def __init__(self, max_distance: int, max_bucket_pairs: int, max_rounds: int = 12):
        super().__init__()
        self._k, self._max_pairs, self._rounds = max_distance, max_bucket_pairs, max_rounds

    def expand(self, rows):
        k, max_pairs = self._k, self._max_pairs
        # Hashes travel as 16-digit hex strings: unsigned 64-bit ints overflow Beam's VarInt coder.
        by_hash = (rows
                   | "Hash" >> beam.FlatMap(lambda r: [(r.phash, r.member())] if r.phash and r.image_is_content else [])
                   .with_output_types(Tuple[str, QualityMember])
                   | "GroupByHash" >> beam.GroupByKey())
        labels = (by_hash
                  | "Distinct" >> beam.Keys()
                  | "Bands" >> beam.FlatMap(lambda h: [(band, h) for band in neardup.phash_band_keys(int(h, 16), k)])
                  .with_output_types(Tuple[Tuple[int, int], str])
                  | "GroupByBand" >> beam.GroupByKey()
                  | "VerifyPairs" >> beam.MapTuple(lambda _, bucket: neardup.verified_hex_pairs(bucket, k, max_pairs))
                  | "CountCapped" >> beam.FlatMap(_counted("phash_bucket_capped")).with_output_types(Edge)
                  | "Components" >> ConnectedComponents(PHASH_STAGE, self._rounds, str))
        members = by_hash | "MembersList" >> beam.MapTuple(lambda h, ms: (h, [(m, h) for m in ms])).with_output_types(
            Tuple[str, List[Tuple[QualityMember, str]]])
        return (_members_by_group("Hash", members, labels, Tuple[QualityMember, str])
                | "GroupByCluster" >> beam.GroupByKey()
                | "Decide" >> beam.ParDo(_ChainCountingDecisions("phash_chain_kept", _phash_near_of_cluster(k)))
                .with_output_types(Decision))


def _signature(min_words: int, num_perm: int, bands: int):
    rows = num_perm // bands

    def signature(sample: Sample):
        text = neardup.minhash_text(sample)
        if len(text.split()) < min_words and len(text) < 4 * min_words:
            return
        # The low 32 bits of each slot: two different slots agree there by chance once in 4e9, so bands and the
        # estimated Jaccard are as good, and what the signature joins carry is halved. Packed: 512 bytes at 128.
        sig = hashing.minhash_signature(text, num_perm=num_perm).astype(np.uint32)
        # The rows' join reads only the digests (what bands group on); the values go to the pairs' join alone, or
        # the text where it is shorter (the verification computes its values again: they are the same).
        yield sample.key, neardup.pack_band_digests(neardup.signature_digest(sig), _band_digests(sig, bands, rows))
        yield beam.pvalue.TaggedOutput("values", (neardup.key_group(sample.key, neardup.KEY_GROUPS),
                                                  neardup.pack_keyed(sample.key, neardup.pack_signature(sig, text))))

    return signature


def _band_digests(signature, bands: int, rows: int) -> list[str]:
    """16 hex digits of each band's rows' digest: 64 bits name a band's values as surely, at half the bytes."""
    return [digest[:16] for _, digest in hashing.minhash_band_keys(signature, bands, rows)]


class _PackedCoder(beam.coders.Coder):
    """`neardup.Packed` as its bytes (a length prefix where nested), decoded back to `Packed`."""

    def encode(self, value):
        return bytes(value)

    def decode(self, encoded):
        return neardup.Packed(encoded)

    def is_deterministic(self):
        return True

    def to_type_hint(self):
        return neardup.Packed


beam.coders.registry.register_coder(neardup.Packed, _PackedCoder)


class _ConcatPerBundle(beam.DoFn):
    """(key, bytes) → (key, Packed concatenation): one element per key and bundle, or per `flush_bytes`, so that a
    grouping holds a few large values rather than one small object per row. Small `flush_bytes`: what waits here
    is at most keys × flush_bytes (8 MB at 4,096 band groups), however large the bundle."""

    def __init__(self, flush_bytes: int = 2048):
        self._flush_bytes = flush_bytes

    def start_bundle(self):
        self._parts: dict[Any, bytearray] = {}

    def process(self, element):
        key, value = element
        part = self._parts.setdefault(key, bytearray())
        part += value
        if len(part) >= self._flush_bytes:
            del self._parts[key]
            yield key, neardup.Packed(part)

    def finish_bundle(self):
        parts, self._parts = self._parts, {}
        for key, part in parts.items():
            yield GlobalWindows.windowed_value((key, neardup.Packed(part)))


@dataclass(frozen=True)
class _TextNear:
    """The MinHash cluster rule: a member is near the representative when their texts are (the same signature
    digest, or a digest pair verified in this cluster) and their images are (`neardup.images_near`)."""
    image_max_distance: int

    def __call__(self, members):
        verified = {(payload[0][0], d) for _, payload in members for d in payload[1]}

        def near(member, payload, rep_member, rep_payload) -> bool:
            (digest, image), _ = payload
            (rep_digest, rep_image), _ = rep_payload
            texts = digest == rep_digest or (digest, rep_digest) in verified or (rep_digest, digest) in verified
            return texts and neardup.images_near(image, rep_image, self.image_max_distance)

        return near


def _entries_named(joined, names: str, entries: str):
    """One key group's join: (key, entry, sorted names) for every packed entry (`neardup.keyed_entries`) whose key
    the `names` rows (key, name) name; nothing when none does."""
    named: dict[str, set] = {}
    for key, name in joined[names]:
        named.setdefault(key, set()).add(name)
    if not named:
        return
    for key, entry in neardup.keyed_entries(joined[entries]):
        if key in named:
            yield key, entry, sorted(named[key])


class MinhashDecisions(beam.PTransform):
    """{"rows", "samples"[, "dropped"]} → (key, representative): MinHash text clusters, pair-aware (see the module
    docstring). "dropped": the previous stage's (key, representative) decisions whose rows are still among "rows"
    (taken out in step 1's join).

    On the local runner a grouped value lives as Python objects until read, so what its shuffles hold is packed
    (`neardup.Packed`) and, where a record has many, concatenated per bundle and group (`_ConcatPerBundle`):
      1. a record's signature digest and band digests (~150 bytes) meet its surviving row by key;
      2. band rows (band digest, key: ~20 bytes, 16 a record) are grouped by band and digest prefix (4,096 groups);
         each group's exact buckets of two or more members are re-formed there;
      3. only those members fetch their digest, image hashes and sizes (joined by key group), and meet per bucket
         (`neardup.minhash_bucket_candidates`: edges, capped candidate pairs);
      4. the signature values (512 bytes at 128 slots), or the text where it is shorter (a caption: ~100 bytes; its
         values are computed again, the same), are shuffled once, to the candidate pairs that name them;
      5. components, representative and decisions as the other stages, over the members of step 3 alone (a record
         in no bucket of two decides nothing)."""

    def __init__(self, config: DedupConfig):
        super().__init__()
        self._cfg = config

    def expand(self, inputs):
        rows, samples, dropped = inputs["rows"], inputs["samples"], inputs.get("dropped")
        cfg = self._cfg
        signature = _signature(cfg.minhash_min_words, cfg.minhash_num_perm, cfg.minhash_bands)
        sigs = samples | "Signature" >> beam.FlatMap(signature).with_outputs("values", main="digests")
        digests = _typed(sigs["digests"], Tuple[str, neardup.Packed])
        store = (_typed(sigs["values"], Tuple[int, bytes])
                 | "PackSignatures" >> beam.ParDo(_ConcatPerBundle()).with_output_types(Tuple[int, neardup.Packed]))

        def with_digests(element):
            key, joined = element
            signatures, found = list(joined["sig"]), list(joined["row"])
            # no text to compare, no row, or dropped by the previous stage
            if not signatures or not found or any(True for _ in joined.get("dropped", ())):
                return
            digest, band_digests = neardup.unpack_band_digests(signatures[0])
            member = neardup.pack_text_member(found[0], digest)
            yield beam.pvalue.TaggedOutput("members", (neardup.key_group(key, neardup.KEY_GROUPS),
                                                       neardup.pack_keyed(key, member)))
            for band, band_digest in enumerate(band_digests):
                yield neardup.coarse_band_key(band, band_digest), neardup.pack_band_row(band_digest, key)

        packed_rows = rows | "PackRows" >> beam.Map(lambda r: (r.key, neardup.pack_row(r))).with_output_types(
            Tuple[str, neardup.Packed])
        # The previous stage's decisions (pHash) are taken out of the rows in this same join, not in a join of
        # their own: a row with a decision is no member here.
        join = {"row": packed_rows, "sig": digests}
        if dropped is not None:
            join["dropped"] = dropped
        joined = (join
                  | "JoinSignatures" >> beam.CoGroupByKey()
                  | "Bands" >> beam.FlatMap(with_digests).with_outputs("members", main="bands"))
        all_members = (_typed(joined["members"], Tuple[int, bytes])
                       | "PackMembers" >> beam.ParDo(_ConcatPerBundle()).with_output_types(Tuple[int, neardup.Packed]))
        bands = (_typed(joined["bands"], Tuple[int, bytes])
                 | "PackBands" >> beam.ParDo(_ConcatPerBundle()).with_output_types(Tuple[int, neardup.Packed]))

        # Band rows name keys only: the members of the buckets of two or more (few, in most corpora) fetch their
        # digests and images by key, then meet again per bucket.
        def memberships(coarse_key, packed):
            for bucket, keys in neardup.band_bucket_keys(coarse_key, packed):
                for key in keys:
                    yield neardup.key_group(key, neardup.KEY_GROUPS), (key, bucket)

        def bucket_members(element):
            for key, member, buckets in _entries_named(element[1], "bucket", "member"):
                yield beam.pvalue.TaggedOutput("members", (key, member))
                for bucket in buckets:
                    yield bucket, (key, member)

        requests = (bands
                    | "GroupByBand" >> beam.GroupByKey()
                    | "Buckets" >> beam.FlatMapTuple(memberships).with_output_types(Tuple[int, Tuple[str, str]]))
        fetched = ({"member": all_members, "bucket": requests}
                   | "FetchMembers" >> beam.CoGroupByKey()
                   | "BucketMembers" >> beam.FlatMap(bucket_members).with_outputs("members", main="buckets"))
        members = _typed(fetched["members"], Tuple[str, neardup.Packed])

        capped = Metrics.counter(COUNTER_NAMESPACE, "minhash_bucket_capped")

        def candidates(_, bucket):
            members = [(key, *neardup.unpack_text_member(key, member)[1]) for key, member in bucket]
            edges, pairs, was_capped = neardup.minhash_bucket_candidates(members, cfg.max_bucket_pairs,
                                                                         cfg.phash_max_distance)
            if was_capped:
                capped.inc()
            for edge in edges:
                yield edge
            for pair in pairs:
                yield beam.pvalue.TaggedOutput("candidates", pair)

        found = (_typed(fetched["buckets"], Tuple[str, Tuple[str, neardup.Packed]])
                 | "GroupByBucket" >> beam.GroupByKey()
                 | "Candidates" >> beam.FlatMapTuple(candidates).with_outputs("candidates", main="edges"))
        verified = (_typed(found["candidates"], Edge)
                    | "DistinctPairs" >> beam.Distinct().with_output_types(Edge)
                    | "Verify" >> _VerifyPairs(store, cfg.minhash_threshold, cfg.minhash_num_perm))
        edges = ((_typed(found["edges"], Edge), verified | "VerifiedEdges" >> beam.Map(lambda v: (v[0], v[1])).with_output_types(Edge))
                 | "AllEdges" >> beam.Flatten().with_output_types(Edge))
        labels = edges | "Components" >> ConnectedComponents(MINHASH_STAGE, cfg.components_max_rounds, str)
        # Each verified pair tells both of its members that their two digests are near (the cluster rule).
        near_digests = verified | "NearDigests" >> beam.FlatMap(
            lambda v: [(v[0], v[3]), (v[1], v[2])]).with_output_types(Tuple[str, str])
        return (_members_by_group("Key", members, labels,
                                  Tuple[QualityMember, Tuple[Tuple[str, Image], FrozenSet[str]]], extra=near_digests,
                                  unpack=lambda key, packed: [neardup.unpack_text_member(key, packed)])
                | "GroupByCluster" >> beam.GroupByKey()
                | "Decide" >> beam.ParDo(_ChainCountingDecisions("minhash_chain_kept",
                                                                 _TextNear(cfg.phash_max_distance)))
                .with_output_types(Decision))


class _VerifyPairs(beam.PTransform):
    """Candidate pairs (a, b) + packed signatures (concatenated per key group, `neardup.key_group`) → (a, b, digest
    a, digest b) for pairs whose estimated Jaccard is >= threshold. One join by key group takes each signature to the
    pairs that name its key (the signatures of records without a candidate pair go no further), one grouping by
    pair meets the two."""

    def __init__(self, store, threshold: float, num_perm: int):
        super().__init__()
        self._store, self._threshold, self._num_perm = store, threshold, num_perm

    def expand(self, pairs):
        threshold, num_perm = self._threshold, self._num_perm

        def to_pairs(element):
            for key, sig, pairs in _entries_named(element[1], "pair", "sig"):
                for pair in pairs:
                    yield pair, (key, sig)

        def verify(element):
            (a, b), found = element
            found = [(key, neardup.unpack_signature(sig, num_perm)) for key, sig in found]
            for sig_b in (sig for key, sig in found if key == b):
                for sig_a in (sig for key, sig in found if key == a):
                    if float(np.mean(sig_a == sig_b)) >= threshold:
                        yield a, b, neardup.signature_digest(sig_a), neardup.signature_digest(sig_b)

        ends = pairs | "Ends" >> beam.FlatMap(
            lambda p: [(neardup.key_group(key, neardup.KEY_GROUPS), (key, p)) for key in p]
        ).with_output_types(Tuple[int, Tuple[str, Edge]])
        return ({"pair": ends, "sig": self._store}
                | "ByKeyGroup" >> beam.CoGroupByKey()
                | "ToPairs" >> beam.FlatMap(to_pairs).with_output_types(Tuple[Edge, Tuple[str, neardup.Packed]])
                | "ByPair" >> beam.GroupByKey()
                | "Verified" >> beam.FlatMap(verify).with_output_types(Tuple[str, str, str, str]))


class _EmbedDoFn(beam.DoFn):
    """Batches of samples → (key, (primary vector, secondary vector)); the models load once per worker in setup()."""

    def __init__(self, stage: str, config):
        self._stage, self._config = stage, config

    def setup(self):
        self._embedder = RecordEmbedder(self._config)
        self._embedder.load()
        self._failed = Metrics.counter(COUNTER_NAMESPACE, f"{self._stage}_not_embedded")

    def process(self, batch):
        found = self._embedder.embed(batch)
        if len(found) < len(batch):  # undecodable frames: such a record takes no part in this stage
            self._failed.inc(len(batch) - len(found))
        for key, primary, secondary in found:
            yield key, (primary, secondary)


class _LshBuckets:
    """A primary vector → its LSH bucket keys ("table:bucket"); the hyperplanes are built once per dimension."""

    def __init__(self, bits: int, tables: int, seed: int):
        self._bits, self._tables, self._seed = bits, tables, seed
        self._planes: dict[int, tuple[HyperplaneLsh, np.ndarray]] = {}

    def __call__(self, vector: np.ndarray) -> list[str]:
        if len(vector) not in self._planes:
            lsh = HyperplaneLsh(dim=len(vector), bits=self._bits, tables=self._tables, seed=self._seed)
            self._planes[len(vector)] = (lsh, lsh.planes)
        lsh, planes = self._planes[len(vector)]
        return lsh.bucket_keys(vector, planes)

    def __getstate__(self):
        return self._bits, self._tables, self._seed

    def __setstate__(self, state):
        self.__init__(*state)


def _near_rule(rule: NearRule):
    near = lambda _member, payload, _rep, rep_payload: rule(payload, rep_payload)  # noqa: E731
    return lambda members: near


class EmbeddingDecisions(beam.PTransform):
    """(rows, samples) → (key, representative): embedding clusters (see the module docstring), for
    `dedup.embedding` (visual + text) or `dedup.semantic_text` (text alone)."""

    def __init__(self, stage: str, config, max_bucket_pairs: int, max_rounds: int = 12):
        super().__init__()
        self._stage, self._cfg, self._max_pairs, self._rounds = stage, config, max_bucket_pairs, max_rounds
        if stage == EMBEDDING_STAGE:
            self._rule = NearRule(config.visual_threshold, config.text_threshold)
        else:
            self._rule = NearRule(config.threshold)

    def expand(self, inputs):
        rows, samples = inputs
        cfg, stage, rule, max_pairs = self._cfg, self._stage, self._rule, self._max_pairs
        vectors = (samples
                   | "Applies" >> beam.Filter(RecordEmbedder(cfg).applies)
                   | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=cfg.batch_size)
                   | "Embed" >> beam.ParDo(_EmbedDoFn(stage, cfg)).with_output_types(Tuple[str, Vectors]))
        buckets_of = _LshBuckets(cfg.lsh_bits, cfg.lsh_tables, cfg.lsh_seed)

        def with_vectors(element):
            key, joined = element
            found, vecs = list(joined["row"]), list(joined["vec"])
            if not found or not vecs:
                return
            row, (primary, secondary) = found[0], vecs[0]
            yield beam.pvalue.TaggedOutput("members", (key, [(row.member(), (primary, secondary))]))
            for bucket in buckets_of(primary):
                yield bucket, (key, primary, secondary)

        joined = ({"row": rows | "RowByKey" >> beam.Map(lambda r: (r.key, r)).with_output_types(Tuple[str, DedupRow]),
                   "vec": vectors}
                  | "JoinVectors" >> beam.CoGroupByKey()
                  | "Buckets" >> beam.FlatMap(with_vectors).with_outputs("members", main="buckets"))
        members = _typed(joined["members"], Tuple[str, List[Tuple[QualityMember, Vectors]]])
        buckets = _typed(joined["buckets"], Tuple[str, Tuple[str, np.ndarray, np.ndarray]])
        labels = (buckets
                  | "GroupByBucket" >> beam.GroupByKey()
                  | "Pairs" >> beam.MapTuple(lambda _, bucket: embedding_bucket_edges(list(bucket), rule, max_pairs))
                  | "CountCapped" >> beam.FlatMap(_counted(f"{stage}_bucket_capped")).with_output_types(Edge)
                  | "Components" >> ConnectedComponents(stage, self._rounds, str))
        return (_members_by_group("Key", members, labels, Tuple[QualityMember, Vectors])
                | "GroupByCluster" >> beam.GroupByKey()
                | "Decide" >> beam.ParDo(_ChainCountingDecisions(f"{stage}_chain_kept", _near_rule(rule)))
                .with_output_types(Decision))


class DedupDecisions(beam.PTransform):
    """PCollection[Sample] → PCollection[(key, (stage, representative))]: every record a dedup stage drops, the
    stages chained on metadata (each reads the rows the previous one kept)."""

    def __init__(self, config: DedupConfig):
        super().__init__()
        self._cfg = config

    def stages(self) -> list[str]:
        cfg = self._cfg
        return [s for s, on in ((EXACT_STAGE, cfg.exact), (PHASH_STAGE, cfg.phash), (MINHASH_STAGE, cfg.minhash),
                                (EMBEDDING_STAGE, cfg.embedding.enabled),
                                (SEMANTIC_TEXT_STAGE, cfg.semantic_text.enabled)) if on]

    def expand(self, samples):
        cfg = self._cfg
        rows = samples | "Rows" >> beam.Map(neardup.dedup_row).with_output_types(DedupRow)
        decided = []
        unapplied = None  # (stage, decisions) the rows still hold rows of: taken out by the next stage's key join
        for stage in self.stages():
            if unapplied is not None and stage != MINHASH_STAGE:  # MinHash takes them out in its own join
                rows, unapplied = _survivors(unapplied[0], rows, unapplied[1]), None
            survivors = None  # the rows this stage keeps, where it knows them without a join
            if stage == EXACT_STAGE:
                exact = rows | EXACT_STAGE >> ExactDecisions()
                found, survivors = exact["decisions"], exact[SURVIVORS]
            elif stage == PHASH_STAGE:
                found = rows | PHASH_STAGE >> PhashDecisions(cfg.phash_max_distance, cfg.max_bucket_pairs,
                                                             cfg.components_max_rounds)
            elif stage == MINHASH_STAGE:
                inputs = {"rows": rows, "samples": samples, **({"dropped": unapplied[1]} if unapplied else {})}
                found = inputs | MINHASH_STAGE >> MinhashDecisions(cfg)
                unapplied = None
            else:
                found = (rows, samples) | stage >> EmbeddingDecisions(
                    stage, cfg.embedding if stage == EMBEDDING_STAGE else cfg.semantic_text, cfg.max_bucket_pairs,
                    cfg.components_max_rounds)
            decided.append(found | f"{stage}Tag" >> beam.MapTuple(
                lambda key, rep, stage=stage: (key, (stage, rep))).with_output_types(Tuple[str, Decision]))
            if survivors is not None:
                rows = survivors
            else:
                unapplied = (stage, found)
        if not decided:
            return samples.pipeline | "NoDecisions" >> beam.Create([]).with_output_types(Tuple[str, Decision])
        return decided[0] if len(decided) == 1 else decided | "AllDecisions" >> beam.Flatten()


# --- decisions meet their samples once -------------------------------------------------------------------------
DECISION_MARK = b"D"  # a grouped value that is a pickled decision, not a pickled sample (which starts b"\x80")


def _decision_value(element) -> tuple[str, bytes]:
    key, decision = element
    return key, DECISION_MARK + pickle.dumps((key, *decision), protocol=pickle.HIGHEST_PROTOCOL)


@dataclass(frozen=True)
class PendingDecisions:
    """Dedup decisions not yet applied to their samples: applied where the samples are next grouped (the sink's
    per-bucket group, or `ApplyDecisions`)."""
    decisions: Any  # PCollection[(key, (stage, representative))]
    lineage: tuple[tuple[str, str], ...]  # (stage, config hash) of the stages every kept sample passed, in order
    # Per-record stages that ran after dedup on the samples the decisions had not met yet (`renderable`): their
    # lineage entries follow dedup's, and a record they dropped is theirs (its decision finds no sample).
    later: tuple[str, ...] = ()

    def judged_by(self, stage: str) -> "PendingDecisions":
        """The same decisions, after the per-record stage `stage` ran on the samples they have not met yet."""
        return PendingDecisions(self.decisions, self.lineage, self.later + (stage,))

    def values(self, key_fn, label: str):
        """The decisions as (key_fn(key), marked bytes), to be grouped beside `keyed(...)` samples."""
        return (self.decisions
                | f"{label}Mark" >> beam.Map(_decision_value)
                | f"{label}Key" >> beam.MapTuple(lambda key, value: (key_fn(key), value)))


class DecisionApplier:
    """Grouped values (pickled samples and marked decisions, any order) → kept samples (lineage added) and
    Rejections; counts `<stage>/kept` and `<stage>/dropped_<reason>` as the RouteDoFn of every other stage does."""

    def __init__(self, lineage: tuple[tuple[str, str], ...], later: tuple[str, ...] = ()):
        self._lineage, self._later = lineage, frozenset(later)
        self._counters: dict[str, Any] = {}

    def _count(self, stage: str, name: str) -> None:
        if (stage, name) not in self._counters:
            self._counters[(stage, name)] = progress.counter(stage, name)
        self._counters[(stage, name)].inc()

    def apply(self, values: Iterable[bytes], rejections: list[Rejection],
              decisions: Iterable[bytes] = ()) -> Iterator[Sample]:
        """`values`: pickled samples, with marked decisions among them (a keyed grouping of both) or not (then
        the samples' decisions come in `decisions`, the sink's per-bucket side input)."""
        values = values if isinstance(values, list) else list(values)  # read twice: decisions first
        decided = {}
        for value in (*decisions, *(v for v in values if v[:1] == DECISION_MARK)):
            key, stage, rep = pickle.loads(value[1:])
            decided[key] = (stage, rep)
        stages = [stage for stage, _ in self._lineage]
        for sample in unpickled(v for v in values if v[:1] != DECISION_MARK):
            stage, rep = decided.get(sample.key, (None, ""))
            # dedup's entries go where dedup ran: before those of the per-record stages that judged the sample since
            at = next((i for i, e in enumerate(sample.lineage) if e.stage in self._later), len(sample.lineage))
            passed_entries = []
            for passed, hash_ in self._lineage:
                if passed == stage:
                    break
                self._count(passed, "kept")
                passed_entries.append(LineageEntry(passed, hash_, "kept"))
            sample.lineage[at:at] = passed_entries
            if stage is None:
                yield sample
                continue
            if stage not in stages:
                raise ValueError(f"dedup decision for {sample.key!r} names stage {stage!r}, not one of {stages}")
            reason = REASONS[stage]
            self._count(stage, f"dropped_{reason}")
            sample.signals["duplicate_of"] = rep
            rejections.append(Rejection.of(sample, stage, reason, f"duplicate of {rep}", {"duplicate_of": rep}))


class _ApplyDoFn(progress.CountingDoFn):
    def __init__(self, lineage, spilled_to: str | None = None):
        self._lineage = lineage
        self._spilled_to = spilled_to  # the samples are spill references (pipelines/spill.py)

    def setup(self):
        super().setup()
        self._applier = DecisionApplier(*self._lineage)
        self._reader = spill.SpillReader(self._spilled_to) if self._spilled_to else None

    def finish_bundle(self):
        if self._reader is not None:
            self._reader.close()

    def process(self, element):
        _, values = element
        if self._reader is not None:
            values = [v if v[:1] == DECISION_MARK else self._reader.load(v) for v in values]
        rejections: list[Rejection] = []
        yield from self._applier.apply(values, rejections)
        for rejection in rejections:
            yield beam.pvalue.TaggedOutput(REJECTED, rejection)


class ApplyDecisions(beam.PTransform):
    """(samples, PendingDecisions) → {"kept", "rejected"}: one keyed grouping of the samples with their decisions
    (for when a stage that needs the deduplicated samples follows; the sink applies them itself otherwise)."""

    def __init__(self, pending: PendingDecisions, spill_to: str | None = None):
        super().__init__()
        self._pending = pending
        self._spill_to = spill_to  # a local directory where the samples wait for the decisions (pipelines/spill.py)

    def expand(self, samples):
        marked = self._pending.values(lambda key: key, "Decisions")
        waiting = (samples | "ByKey" >> spill.SpilledByBucket(self._spill_to, sample_key, str, per_sample=True)
                   if self._spill_to else samples | "ByKey" >> keyed(sample_key))
        out = ((waiting, marked)
               | "Merge" >> beam.Flatten().with_output_types(Tuple[str, bytes])
               | "GroupByKey" >> beam.GroupByKey()
               | "Apply" >> beam.ParDo(_ApplyDoFn((self._pending.lineage, self._pending.later), self._spill_to))
               .with_outputs(REJECTED, main=KEPT))
        return {KEPT: out[KEPT], REJECTED: out[REJECTED]}


class Dedup(beam.PTransform):
    """The enabled dedup stages as one step of `curate`: PCollection[Sample] → {"kept": the same samples (not yet
    deduplicated), "rejected": none yet, "pending": PendingDecisions}; the caller applies the decisions where
    the samples are next grouped. `stage_names` are the stages it stands for, in order."""

    def __init__(self, config: DedupConfig):
        super().__init__()
        self._decisions = DedupDecisions(config)
        self.stage_names = self._decisions.stages()
        self._lineage = tuple((stage, config_hash(config)) for stage in self.stage_names)

    def expand(self, samples):
        decisions = samples | "Decisions" >> self._decisions
        rejected = samples.pipeline | "NoneYet" >> beam.Create([]).with_output_types(Rejection)
        return {KEPT: samples, REJECTED: rejected, "pending": PendingDecisions(decisions, self._lineage)}


class _StandaloneDedup(beam.PTransform):
    """One dedup stage on its own (tests, tools): decisions, then applied at once → {"kept", "rejected"}."""

    def __init__(self, config: DedupConfig):
        super().__init__()
        self._dedup = Dedup(config)

    def expand(self, samples):
        out = samples | "Decide" >> self._dedup
        return samples | "Apply" >> ApplyDecisions(out["pending"])


class ExactDedup(_StandaloneDedup):
    """Identical content per kind (`schemas.kinds.dedup_content_digest`)."""

    def __init__(self, **_route_options):
        super().__init__(DedupConfig(exact=True, phash=False, minhash=False))


class PhashNearDedup(_StandaloneDedup):
    """pHash Hamming <= k from the representative (clusters chain, decisions do not)."""

    def __init__(self, max_distance: int, max_bucket_pairs: int, max_rounds: int = 12, **_route_options):
        super().__init__(DedupConfig(exact=False, phash=True, minhash=False, phash_max_distance=max_distance,
                                     max_bucket_pairs=max_bucket_pairs, components_max_rounds=max_rounds))


class MinhashNearDedup(_StandaloneDedup):
    """Near-duplicate texts by MinHash LSH, pair-aware (see the module docstring)."""

    def __init__(self, config: DedupConfig, **_route_options):
        super().__init__(DedupConfig(**{**config.__dict__, "exact": False, "phash": False, "minhash": True}))


def dedup_stages(config: DedupConfig, max_error_ratio: float = 0.05) -> list[tuple[str, Any]]:
    """The dedup step of `curate`: [("dedup", Dedup)] when any stage is on (its `stage_names` say which)."""
    dedup = Dedup(config)
    return [("dedup", dedup)] if dedup.stage_names else []
