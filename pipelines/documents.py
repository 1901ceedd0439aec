"""The `documents` stage: per-document rules for interleaved documents (curation/documents.py), with images
that many documents repeat (logos, ads) removed from every document that holds them.

    samples | DocumentRules(DocumentConfig())  → {"kept": ..., "rejected": ...}

Which images are repeated is a corpus-wide count: (image identity, document key) pairs — metadata, no pixels —
are grouped by identity; an identity held by more than `documents.max_repeated_image_documents` distinct
documents yields (document key, identity) removals, which meet their documents in one keyed join. Each removed
image is counted (`documents/images_removed_repeated_image`) and named in the document's `document_images_removed`
signal; the rules then judge what is left.

Images unrelated to their nearby text leave in a stage of their own, `image_relevance` (after the CLIP filter:
it runs the same model, through RunInference, on what dedup kept): `image_relevance_stage` builds it when
`models.clip` has a model and `documents.min_image_text_similarity` is not -1.
"""
from __future__ import annotations

import os
from typing import List, Tuple

import apache_beam as beam

from vlmloom.curation import documents
from vlmloom.curation.base import Verdict
from vlmloom.curation.documents import DocumentConfig, image_identity, remove_images
from vlmloom.pipelines import progress, spill
from vlmloom.pipelines.shuffle import keyed, sample_key, unpickled
from vlmloom.pipelines.stages import KEPT, REJECTED, Fixed, route
from vlmloom.schemas.records import Sample

STAGE = documents.STAGE


def _image_holders(sample: Sample, kinds: tuple[str, ...]):
    if sample.kind in kinds:
        for identity in sorted({image_identity(sample, i) for i in range(len(sample.images))} - {""}):
            yield identity, sample.key


def _removals(element, limit: int):
    identity, keys = element
    holders = sorted(set(keys))
    if len(holders) > limit:
        for key in holders:
            yield key, identity


def _nothing_removed(sample: Sample) -> tuple[Sample, list[str]]:
    return sample, []


def _with_removals(element):
    _, joined = element
    for sample in unpickled(joined["sample"]):
        yield sample, sorted(joined["remove"])


class _Decide:
    """Remove the repeated images, then apply the per-document rules (picklable; counters made per worker)."""

    def __init__(self, config: DocumentConfig):
        self._config = config
        self._kinds = config.selected_kinds()
        self._removed = progress.counter(STAGE, "images_removed_repeated_image")

    def __call__(self, element):
        sample, repeated = element
        if sample.kind not in self._kinds:
            return sample, Verdict.ok()
        wanted = set(repeated)
        indices = {i for i in range(len(sample.images)) if image_identity(sample, i) in wanted}
        if indices:
            sample = remove_images(sample, indices)
            self._removed.inc(len(indices))
        verdict = documents.judge(sample, self._config)
        verdict.signals["document_images_removed"] = len(indices)
        return sample, verdict


def _spilled_with_removals(element):
    _, joined = element
    for ref in joined["sample"]:
        yield ref, sorted(joined["remove"])


class _Unspill(beam.DoFn):
    """(spill reference, removals) → (sample, removals) for each sample the reference names, read back from where
    it waited."""

    def __init__(self, directory: str):
        self._dir = directory

    def setup(self):
        self._reader = spill.SpillReader(self._dir)

    def finish_bundle(self):
        self._reader.close()

    def process(self, element):
        ref, repeated = element  # a document's own reference, or a run of other records (nothing to remove)
        for sample in self._reader.samples(ref):
            yield sample, repeated


class DocumentRules(beam.PTransform):
    """`spill`: output_format.spill's mode: on the local runners the samples wait for the removals on disk."""

    def __init__(self, config: DocumentConfig, *, config_hash_: str = "", max_error_ratio: float = 0.05,
                 spill_mode: str = "never", output: str = ""):
        super().__init__()
        self._config, self._hash, self._max_error_ratio = config, config_hash_, max_error_ratio
        self._spill_mode, self._output = spill_mode, output

    def expand(self, samples):
        # Only documents take part: other records pass around the stage's join untouched.
        kinds = self._config.selected_kinds()
        documents_, others = samples | "SplitDocuments" >> beam.Partition(
            lambda sample, _: 0 if sample.kind in kinds else 1, 2)
        limit = self._config.max_repeated_image_documents
        # The records that wait for the removals (a corpus-wide count): the others wait for the documents' join in
        # a Flatten, which the local runner materialises; there they wait on disk (pipelines/spill.py): the join
        # carries a reference per document, the Flatten one per run of other records.
        wait = (os.path.join(samples.pipeline.local_tempdir, "documents-wait") if limit and spill.spills(
            self._spill_mode, samples.pipeline.options, self._output) else None)
        if limit:
            removals = (documents_ | "ImageHolders" >> beam.FlatMap(_image_holders, kinds)
                        | "GroupByImage" >> beam.GroupByKey()
                        | "Repeated" >> beam.FlatMap(_removals, limit))
            if wait:
                waiting = documents_ | "ByKey" >> spill.SpilledByBucket(wait, sample_key, str, per_sample=True)
                joined = ({"sample": waiting, "remove": removals}
                          | "JoinRemovals" >> beam.CoGroupByKey()
                          | "WithRemovals" >> beam.FlatMap(_spilled_with_removals).with_output_types(
                              Tuple[bytes, List[str]]))
                others_waiting = (others | "OthersWait" >> spill.SpilledSamples(wait)
                                  | "Others" >> beam.Map(lambda ref: (ref, [])).with_output_types(
                                      Tuple[bytes, List[str]]))
                routed = ((joined, others_waiting) | "WithOthers" >> beam.Flatten()
                          | "Unspill" >> beam.ParDo(_Unspill(wait)))
            else:
                joined = ({"sample": documents_ | "ByKey" >> keyed(sample_key), "remove": removals}
                          | "JoinRemovals" >> beam.CoGroupByKey()
                          | "WithRemovals" >> beam.FlatMap(_with_removals).with_output_types(Tuple[Sample, List[str]]))
        else:
            joined = documents_ | "NoRemovals" >> beam.Map(_nothing_removed).with_output_types(Tuple[Sample, List[str]])
        if not wait:
            # Every record is routed (kept counts and lineage like every stage); only documents are judged.
            passing = others | "Others" >> beam.Map(_nothing_removed).with_output_types(Tuple[Sample, List[str]])
            routed = (joined, passing) | "WithOthers" >> beam.Flatten()
        kept, rejected = route(routed, "Route", STAGE, Fixed(_Decide(self._config)), self._hash,
                               max_error_ratio=self._max_error_ratio)
        return {KEPT: kept, REJECTED: rejected | "MergeRejected" >> beam.Flatten()}


def image_relevance_stage(stage, config, max_error_ratio: float = 0.05):
    """The curate stage builder (pipelines/stage_registry.StageBuilder) of image_relevance: an ImageRelevanceStage
    (pipelines/model_stages.py) over the CLIP model of `config.models.clip`, or None when it is off: no CLIP model
    configured (models.clip.enabled with models.clip.model_path), or documents.min_image_text_similarity is -1."""
    documents_config, clip = config.documents, config.models.clip
    if documents_config.min_image_text_similarity == -1 or not (clip.enabled and clip.model_path):
        return None
    from vlmloom.pipelines.model_stages import ImageRelevanceStage  # Beam ML + torch: only when needed

    return ImageRelevanceStage(documents_config, clip, max_error_ratio)
