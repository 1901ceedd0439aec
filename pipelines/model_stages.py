"""Beam stages for model-backed curation: CLIP filter, concept balance, contamination, recaption, OCR, grounding,
and the image-text relevance of documents' images (`ImageRelevanceStage`, built by pipelines/documents.py).

Each stage follows the stage protocol of `pipelines/stages.py`: `PCollection[Sample]` →
``{"kept": PCollection[Sample], "rejected": PCollection[Rejection]}``. The judgment lives in
`curation/` (no Beam there); here each model runs through Beam's `RunInference` with one
`ModelHandler` per stage (the model or index is loaded once per worker in `load_model()`, and
elements are batched), then a generic decide step counts `dropped_<reason>` and routes rejects.
Unexpected errors — a failing batch in the model, a failing decision — become `quarantined_error`
Rejections, one per sample, and more than `max_error_ratio` of them fails the job.
Stages needing a global pass use Beam combiners and side inputs: concept counts (`Count.PerElement`
→ `AsDict`) and the CLIP top-fraction cutoff (a bounded score histogram, `CombineGlobally` → a scalar `AsSingleton`).

    stages = build_model_stages(build_config(ModelStagesConfig, yaml_section))
    for name, stage in stages:
        out = samples | name >> stage
        samples, rejected = out["kept"], rejected + [out["rejected"]]
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterable, Sequence

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler, RunInference

from vlmloom.curation import clip as clip_mod
from vlmloom.curation import concepts as concepts_mod
from vlmloom.curation import contamination as contamination_mod
from vlmloom.curation import grounding as grounding_mod
from vlmloom.curation import image_relevance as relevance_mod
from vlmloom.curation import ocr as ocr_mod
from vlmloom.curation import recaption as recaption_mod
from vlmloom.curation.base import Verdict
from vlmloom.curation.clip import ClipConfig, ClipScorer
from vlmloom.curation.concepts import ConceptConfig, ConceptMatcher
from vlmloom.curation.contamination import ContaminationConfig, ContaminationIndex
from vlmloom.curation.documents import DocumentConfig
from vlmloom.curation.grounding import GroundingAnnotator, GroundingConfig
from vlmloom.curation.ocr import OcrAnnotator, OcrConfig
from vlmloom.curation.recaption import RecaptionConfig, Recaptioner
from vlmloom.pipelines import progress
from vlmloom.pipelines.model_config import ModelStagesConfig, describe_disabled  # noqa: F401 (re-exported)
from vlmloom.pipelines.shuffle import keyed, unpickled
from vlmloom.pipelines.stages import KEPT, REJECTED, Decide, Fixed, format_traceback, quarantine_any, route
from vlmloom.schemas.config import ConfigError, config_hash
from vlmloom.schemas.curated import key_bucket
from vlmloom.schemas.kinds import sample_texts
from vlmloom.schemas.records import Sample, attach_bytes, release_bytes

STAGE_ORDER = ("clip", "concepts", "contamination", "recaption", "ocr", "grounding")


# --- the generic pieces -----------------------------------------------------------------------
@dataclass
class InferenceFailure:
    """Stands in for the output of a sample whose inference raised; its decide step re-raises it."""
    error: str


class SampleModelHandler(ModelHandler[Sample, tuple, Any]):
    """A ModelHandler over Samples: `load_model()` builds the stage's worker object once per worker
    process; `run_inference` calls `infer(worker, batch)` and pairs each sample with its output."""

    def __init__(self, name: str, load: Callable[[], Any], infer: Callable[[Any, list[Sample]], list[Any]],
                 batch_size: int, per_sample: bool = False):
        super().__init__()
        self._name = name
        self._load = load
        self._infer = infer
        self._batch_size = batch_size
        self._per_sample = per_sample  # the backend reads one image at a time anyway (OCR): isolate errors up front

    def load_model(self) -> Any:
        return self._load()

    def run_inference(self, batch: Sequence[Sample], model: Any, inference_args: dict | None = None) -> Iterable[tuple]:
        batch = list(batch)
        try:
            return self._run(batch, model)
        finally:  # images that lie in a local input file are held only for the model call (ImageRef.span)
            for sample in batch:
                release_bytes(sample)

    def _run(self, batch: list[Sample], model: Any) -> list[tuple]:
        if not self._per_sample:
            try:
                return list(zip(batch, self._infer_checked(model, batch)))
            except Exception:
                if len(batch) == 1:
                    raise
        # One bad sample must not take its batch-mates to the dead letters: run one by one and mark
        # only the failing ones (their decide step re-raises, so each is quarantined alone).
        return [(sample, self._infer_one(model, sample)) for sample in batch]

    def _infer_one(self, model: Any, sample: Sample) -> Any:
        try:
            return self._infer_checked(model, [sample])[0]
        except Exception as exc:
            return InferenceFailure(format_traceback(exc))

    def _infer_checked(self, model: Any, batch: list[Sample]) -> list[Any]:
        for sample in batch:
            attach_bytes(sample)  # an input file gone since decode fails this batch, then only its sample
        outputs = list(self._infer(model, batch))
        if len(outputs) != len(batch):
            raise RuntimeError(f"{self._name}: {len(outputs)} outputs for {len(batch)} samples")
        return outputs

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return {"min_batch_size": 1, "max_batch_size": self._batch_size}

    def get_num_bytes(self, batch: Sequence[Sample]) -> int:
        return sum(s.images[0].nbytes for s in batch if s.images)

    def get_metrics_namespace(self) -> str:
        return f"RunInference_{self._name}"


class ClipModelHandler(SampleModelHandler):
    def __init__(self, config: ClipConfig):
        super().__init__("clip", partial(_loaded, ClipScorer(config), "encoder"),
                         lambda scorer, batch: scorer.score_batch(batch), config.batch_size)


class ContaminationModelHandler(SampleModelHandler):
    def __init__(self, config: ContaminationConfig):
        super().__init__("contamination", partial(_build_index, config),
                         lambda index, batch: index.lookup(batch), config.batch_size)


class RecaptionModelHandler(SampleModelHandler):
    def __init__(self, config: RecaptionConfig):
        super().__init__(f"recaption_{config.backend}", partial(_recaptioner, config),
                         lambda worker, batch: worker.caption_batch(batch), config.batch_size)


class OcrModelHandler(SampleModelHandler):
    def __init__(self, config: OcrConfig):
        super().__init__(f"ocr_{config.backend}", partial(_ocr_annotator, config),
                         lambda worker, batch: worker.read_batch(batch), config.batch_size, per_sample=True)


class DetectorModelHandler(SampleModelHandler):
    def __init__(self, config: GroundingConfig):
        super().__init__(f"grounding_{config.detector_backend}", partial(_grounding_annotator, config),
                         lambda worker, batch: worker.detect_batch(batch), config.batch_size)


def _loaded(worker: Any, attribute: str) -> Any:
    getattr(worker, attribute)  # force the lazy model load inside load_model()
    return worker


def _build_index(config: ContaminationConfig) -> ContaminationIndex:
    encoder = None
    if config.check_images and config.embedding_model_path:
        encoder = clip_mod.load_encoder(config.embedding_backend, config.embedding_model_path)
    return contamination_mod.build_cached_index(config, encoder=encoder)


def _recaptioner(config: RecaptionConfig) -> Recaptioner:
    return Recaptioner(config, recaption_mod.RECAPTION_BACKENDS.get(config.backend)(config))


def _ocr_annotator(config: OcrConfig) -> OcrAnnotator:
    return OcrAnnotator(config, ocr_mod.OCR_BACKENDS.get(config.backend)(config))


def _grounding_annotator(config: GroundingConfig) -> GroundingAnnotator:
    detector = grounding_mod.DETECTOR_BACKENDS.get(config.detector_backend)(config) if config.uses_detector else None
    return GroundingAnnotator(config, detector)


def _decide(pcoll, label: str, stage: str, decide: Decide, hash_: str, decision: str, max_error_ratio: float,
            side_inputs: Sequence[Any] = (), final: bool = True):
    return route(pcoll, label, stage, Fixed(decide), hash_, decision=decision, max_error_ratio=max_error_ratio,
                 side_inputs=side_inputs, final=final)


def _split(samples, applies: Callable[[Sample], bool]):
    todo, passthrough = samples | "Route" >> beam.Partition(lambda s, _n: 0 if applies(s) else 1, 2)
    return todo, passthrough


SPREAD_KEYS = 1024  # key-hash groups the model's samples are regrouped into before an expensive model


def _spread_key(sample: Sample) -> int:
    return key_bucket(sample.key, SPREAD_KEYS)


def _spread(todo):
    """The model's samples regrouped by a hash of their key (as pickled bytes), so that every worker gets an equal
    share: the local runner hands a fused stage's input to its workers by whole buffered chunks, so a few hundred
    OCR pages arriving in one chunk were read by one of two workers (the demo's OCR: 262 s on one core). On
    cluster runners the grouping also breaks fusion, so inference scales apart from what came before."""
    return (todo | "ByKeyHash" >> keyed(_spread_key, int)
            | "GroupByKeyHash" >> beam.GroupByKey()
            | "Unpickle" >> beam.FlatMap(lambda element: unpickled(element[1])).with_output_types(Sample))


def _run_model(todo, handler: SampleModelHandler, stage: str, max_error_ratio: float):
    results, dlq = todo | "RunInference" >> RunInference(handler).with_exception_handling(
        threshold=max_error_ratio, use_subprocess=False)
    failed = [dlq.failed_inferences, *dlq.failed_preprocessing, *dlq.failed_postprocessing]
    failed = [f for f in failed if f is not None]
    quarantined = (failed | "MergeFailedInference" >> beam.Flatten()
                   | "QuarantineInference" >> beam.FlatMap(quarantine_any(stage)))
    return results, quarantined


class ModelStage(beam.PTransform):
    """Samples that `applies` → RunInference(handler) → `judge(sample, output)`; the rest pass through."""

    def __init__(self, stage: str, handler: SampleModelHandler, applies: Callable[[Sample], bool],
                 judge: Callable[[Sample, Any], Verdict], config_hash_: str, decision: str = "kept",
                 max_error_ratio: float = 0.05, final: bool = True, spread: bool = False):
        super().__init__(label=stage)
        self._stage, self._handler, self._applies, self._judge = stage, handler, applies, judge
        self._hash, self._decision, self._max_error_ratio = config_hash_, decision, max_error_ratio
        self._final, self._spread = final, spread  # spread: regroup the model's samples first (`_spread`)

    def expand(self, samples):
        todo, passthrough = _split(samples, self._applies)
        if self._spread:
            todo = _spread(todo)
        results, quarantined = _run_model(todo, self._handler, self._stage, self._max_error_ratio)
        kept, rejected = _decide(results, "Judge", self._stage, partial(_judge_pair, self._judge), self._hash,
                                 self._decision, self._max_error_ratio, final=self._final)
        return {KEPT: (kept, passthrough) | "MergeKept" >> beam.Flatten(),
                REJECTED: (*rejected, quarantined) | "MergeRejected" >> beam.Flatten()}


def _judge_pair(judge: Callable[[Sample, Any], Verdict], pair: tuple) -> tuple[Sample, Verdict]:
    sample, output = pair
    if isinstance(output, InferenceFailure):
        raise RuntimeError(f"inference failed: {output.error}")
    return sample, judge(sample, output)


# --- CLIP: threshold per sample, then an optional global top-fraction cut -----------------------
class TopFractionCutoff(beam.CombineFn):
    """Scores → the top-fraction cutoff, through a histogram of binned scores (`clip.score_histogram`):
    the accumulator holds at most 20,001 (bin, count) pairs whatever the corpus size, and merging adds
    counts, so the cutoff is the same on every runner (see curation/clip.py for why not ApproximateQuantiles)."""

    def __init__(self, fraction: float):
        self._fraction = fraction

    def create_accumulator(self):
        return {}

    def add_input(self, accumulator, score):
        b = clip_mod.score_bin(score)
        accumulator[b] = accumulator.get(b, 0) + 1
        return accumulator

    def merge_accumulators(self, accumulators):
        merged: dict[int, int] = {}
        for accumulator in accumulators:
            for b, count in accumulator.items():
                merged[b] = merged.get(b, 0) + count
        return merged

    def extract_output(self, accumulator):
        return clip_mod.cutoff_from_histogram(accumulator, self._fraction)


def _top_fraction_decide(fraction: float, sample: Sample, cutoff: float) -> tuple[Sample, Verdict | None]:
    if sample.signals.get("clip_score") is None:
        return sample, None
    return sample, clip_mod.judge_top_fraction(sample, cutoff, fraction)


class ClipStage(beam.PTransform):
    def __init__(self, config: ClipConfig, max_error_ratio: float = 0.05):
        super().__init__(label="clip")
        self._config = config
        self._max_error_ratio = max_error_ratio

    def expand(self, samples):
        config = self._config
        scorer = ClipScorer(config)
        top_fraction = 0.0 < config.top_fraction < 1.0
        scored = samples | "Score" >> ModelStage("clip", ClipModelHandler(config), scorer.applies, scorer.judge,
                                                 config_hash(config), "kept", self._max_error_ratio,
                                                 final=not top_fraction)
        if not top_fraction:
            return scored
        kept = scored[KEPT]
        cutoff = (kept
                  | "Scores" >> beam.FlatMap(lambda s: [s.signals["clip_score"]]
                                             if s.signals.get("clip_score") is not None else [])
                  | "Cutoff" >> beam.CombineGlobally(TopFractionCutoff(config.top_fraction)))
        top, rejected = _decide(kept, "TopFraction", "clip", partial(_top_fraction_decide, config.top_fraction),
                                config_hash(config), "kept", self._max_error_ratio,
                                [beam.pvalue.AsSingleton(cutoff)])
        return {KEPT: top, REJECTED: (scored[REJECTED], *rejected) | "MergeRejected" >> beam.Flatten()}


# --- image relevance: documents' images scored against their nearby text, irrelevant ones removed ----
class ImageRelevanceModelHandler(SampleModelHandler):
    """The CLIP encoder of `models.clip`, loaded once per worker; a batch of documents → per document its
    images' scores (curation/image_relevance.py calls the encoder with fixed shapes: scores do not depend on
    which documents share a batch)."""

    def __init__(self, clip: ClipConfig, window_chars: int):
        super().__init__(relevance_mod.STAGE, partial(_loaded, relevance_mod.RelevanceScorer(clip, window_chars),
                                                      "encoder"),
                         lambda scorer, batch: scorer.score_batch(batch), clip.batch_size)

    def get_num_bytes(self, batch: Sequence[Sample]) -> int:
        return sum(image.nbytes for s in batch for image in s.images)


class _RelevanceDecide:
    """(document, scores) → the document without its irrelevant images and the document rules' verdict; each
    removed image counted (`image_relevance/images_removed_irrelevant_image`). Picklable; counters per worker."""

    def __init__(self, config: DocumentConfig):
        self._config = config
        self._removed = progress.counter(relevance_mod.STAGE, f"images_removed_{relevance_mod.IRRELEVANT}")

    def __call__(self, pair: tuple) -> tuple[Sample, Verdict]:
        sample, scores = pair
        if isinstance(scores, InferenceFailure):
            raise RuntimeError(f"inference failed: {scores.error}")
        sample, verdict = relevance_mod.judge_relevance(sample, scores, self._config)
        self._removed.inc(verdict.signals["irrelevant_images_removed"])
        return sample, verdict


def _holds_images_of(kinds: tuple[str, ...], sample: Sample) -> bool:
    return sample.kind in kinds and bool(sample.images)


class ImageRelevanceStage(beam.PTransform):
    """Documents with images → RunInference (their images' scores) → irrelevant images removed, the document
    rules applied to what is left; other records and documents without images pass through."""

    def __init__(self, documents: DocumentConfig, clip: ClipConfig, max_error_ratio: float = 0.05):
        super().__init__(label=relevance_mod.STAGE)
        self._documents, self._clip, self._max_error_ratio = documents, clip, max_error_ratio

    def expand(self, samples):
        stage, ratio = relevance_mod.STAGE, self._max_error_ratio
        todo, passthrough = _split(samples, partial(_holds_images_of, self._documents.selected_kinds()))
        handler = ImageRelevanceModelHandler(self._clip, self._documents.image_text_window_chars)
        results, quarantined = _run_model(todo, handler, stage, ratio)
        hash_ = config_hash({"documents": self._documents, "clip": self._clip})
        kept, rejected = _decide(results, "Judge", stage, _RelevanceDecide(self._documents), hash_, "kept", ratio)
        return {KEPT: (kept, passthrough) | "MergeKept" >> beam.Flatten(),
                REJECTED: (*rejected, quarantined) | "MergeRejected" >> beam.Flatten()}


# --- concepts: match per sample, count globally, then decide with the counts as a side input ----
@dataclass(frozen=True)
class _MatchConcepts:
    """DecideFactory of the match step: the matcher loads once per worker; its concepts reach the sample
    as the Verdict's signals (kept, not final: the balance step decides and records lineage)."""
    config: ConceptConfig

    def __call__(self):
        matcher = ConceptMatcher.from_file(self.config.vocabulary_file)

        def decide(sample: Sample) -> tuple[Sample, Verdict | None]:
            if not self.config.applies(sample):
                return sample, None
            ids = matcher.match(" ".join(sample_texts(sample)))
            return sample, Verdict.ok(concept_ids=ids, concept_names=[matcher.concepts[i] for i in ids])

        return decide


def _concept_decide(config: ConceptConfig, sample: Sample, counts: dict) -> tuple[Sample, Verdict | None]:
    if not config.applies(sample):
        return sample, None
    return sample, concepts_mod.judge(sample, counts, config)


class ConceptBalanceStage(beam.PTransform):
    def __init__(self, config: ConceptConfig, max_error_ratio: float = 0.05):
        super().__init__(label="concepts")
        self._config = config
        self._max_error_ratio = max_error_ratio

    def expand(self, samples):
        config = self._config
        matched, unmatched = route(samples, "Match", "concepts", _MatchConcepts(config), config_hash(config),
                                   max_error_ratio=self._max_error_ratio, final=False)
        counts = (matched
                  | "ConceptIds" >> beam.FlatMap(lambda s: s.signals.get("concept_ids") or []
                                                 if config.applies(s) else [])
                  | "Count" >> beam.combiners.Count.PerElement())
        kept, rejected = _decide(matched, "Balance", "concepts", partial(_concept_decide, config),
                                 config_hash(config), "kept", self._max_error_ratio,
                                 [beam.pvalue.AsDict(counts)])
        return {KEPT: kept, REJECTED: (*unmatched, *rejected) | "MergeRejected" >> beam.Flatten()}


# --- the other stages -------------------------------------------------------------------------
def _applies_always(sample: Sample) -> bool:
    return True


def contamination_stage(config: ContaminationConfig, max_error_ratio: float = 0.05) -> ModelStage:
    return ModelStage("contamination", ContaminationModelHandler(config), _applies_always,
                      contamination_mod.judge, config_hash(config), "kept", max_error_ratio)


def recaption_stage(config: RecaptionConfig, max_error_ratio: float = 0.05) -> ModelStage:
    worker = Recaptioner(config)
    return ModelStage("recaption", RecaptionModelHandler(config), worker.applies, worker.judge,
                      config_hash(config), "recaptioned", max_error_ratio, spread=True)


def ocr_stage(config: OcrConfig, max_error_ratio: float = 0.05) -> ModelStage:
    worker = OcrAnnotator(config)
    return ModelStage("ocr", OcrModelHandler(config), worker.applies, worker.judge, config_hash(config),
                      "annotated", max_error_ratio, spread=True)


def grounding_stage(config: GroundingConfig, max_error_ratio: float = 0.05) -> ModelStage:
    worker = GroundingAnnotator(config)
    return ModelStage("grounding", DetectorModelHandler(config), worker.applies, worker.judge,
                      config_hash(config), "annotated", max_error_ratio, spread=True)


def effective(config: ModelStagesConfig) -> ModelStagesConfig:
    """Fill cross-stage defaults: contamination confirms pHash hits with the CLIP model when it has none."""
    contamination = config.contamination
    if not contamination.embedding_model_path and config.clip.enabled and config.clip.model_path:
        contamination = dataclasses.replace(contamination, embedding_model_path=config.clip.model_path,
                                            embedding_backend=config.clip.backend)
    return dataclasses.replace(config, contamination=contamination)


_BUILDERS: dict[str, Callable[[Any, float], beam.PTransform]] = {
    "clip": ClipStage,
    "concepts": ConceptBalanceStage,
    "contamination": contamination_stage,
    "recaption": recaption_stage,
    "ocr": ocr_stage,
    "grounding": grounding_stage,
}


def build_model_stage(name: str, config: ModelStagesConfig, max_error_ratio: float = 0.05) -> beam.PTransform:
    """Stage `name` (one of STAGE_ORDER) as a PTransform following the stage protocol, its section validated as
    an enabled stage (cross-stage defaults filled in by `effective`)."""
    section = getattr(effective(config), name)
    try:
        section.validate()
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}" if not str(exc).startswith(name) else str(exc)) from None
    return _BUILDERS[name](section, max_error_ratio)


def build_model_stages(config: ModelStagesConfig, max_error_ratio: float = 0.05) -> list[tuple[str, beam.PTransform]]:
    """The enabled stages in pipeline order, each a PTransform following the stage protocol."""
    return [(name, build_model_stage(name, config, max_error_ratio)) for name in STAGE_ORDER
            if getattr(config, name).enabled]
