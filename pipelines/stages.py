"""Generic Beam wrapping of curation judges, and the protocol every `curate` stage follows.

A stage is a `beam.PTransform` from `PCollection[Sample]` to a dict
``{"kept": PCollection[Sample], "rejected": PCollection[Rejection]}``. Expected drops are Rejections
with a stable reason code; unexpected exceptions are caught by Beam's `with_exception_handling`
and become Rejections with reason `quarantined_error` (the error text in `detail`), so no input is
ever lost; more than `max_error_ratio` of them fails the job.

`JudgeStage` wraps any per-record judge once; stages that shuffle or run models have their own
transforms but return the same dict.
"""
from __future__ import annotations

import traceback
from typing import Any, Callable

import apache_beam as beam
from apache_beam.metrics import Metrics

from vlmloom.curation.base import Verdict
from vlmloom.schemas.records import Rejection, Sample

KEPT = "kept"
REJECTED = "rejected"
QUARANTINED_REASON = "quarantined_error"
DEAD_LETTER = "dead_letter"

# A judge factory is called once per worker in DoFn.setup() and returns `judge(sample) -> Verdict`.
JudgeFactory = Callable[[], Callable[[Sample], Verdict]]


class _JudgeDoFn(beam.DoFn):
    def __init__(self, stage: str, judge_factory: JudgeFactory, config_hash: str):
        self._stage = stage
        self._factory = judge_factory
        self._config_hash = config_hash
        self._judge: Callable[[Sample], Verdict] | None = None
        self._kept = Metrics.counter(stage, "kept")
        self._counters: dict[str, Any] = {}

    def setup(self) -> None:
        self._judge = self._factory()

    def process(self, sample: Sample):
        verdict = self._judge(sample)
        sample.signals.update(verdict.signals)
        if verdict.keep:
            self._kept.inc()
            sample.with_lineage(self._stage, self._config_hash, "kept")
            yield sample
        else:
            reason = verdict.reason or "unspecified"
            counter = self._counters.get(reason)
            if counter is None:
                counter = self._counters[reason] = Metrics.counter(self._stage, f"dropped_{reason}")
            counter.inc()
            yield beam.pvalue.TaggedOutput(REJECTED, Rejection.of(sample, self._stage, reason, verdict.detail))


def quarantine(stage: str):
    """Turn Beam dead-letter tuples `(sample, (type, value, traceback))` into Rejection rows."""
    counter = Metrics.counter(stage, f"dropped_{QUARANTINED_REASON}")

    def to_rejection(bad) -> Rejection:
        element, (exc_type, exc_value, tb) = bad
        counter.inc()
        last = tb.strip().splitlines()[-1] if isinstance(tb, str) and tb.strip() else ""
        detail = f"{getattr(exc_type, '__name__', exc_type)}: {exc_value}" + (f" [{last}]" if last else "")
        if isinstance(element, Sample):
            return Rejection.of(element, stage, QUARANTINED_REASON, detail[:2000])
        return Rejection(str(element)[:200], "", "", stage, QUARANTINED_REASON, detail[:2000])

    return to_rejection


class JudgeStage(beam.PTransform):
    """Run `judge_factory()(sample)` on every sample; route rejects and quarantine unexpected errors."""

    def __init__(self, stage: str, judge_factory: JudgeFactory, config_hash: str = "", max_error_ratio: float = 0.05):
        super().__init__(label=stage)
        self._stage = stage
        self._factory = judge_factory
        self._config_hash = config_hash
        self._max_error_ratio = max_error_ratio

    def expand(self, samples):
        # With extra tags, Beam returns one tuple holding the main, the tagged and the dead-letter outputs.
        outputs = (
            samples
            | "Judge" >> beam.ParDo(_JudgeDoFn(self._stage, self._factory, self._config_hash))
            .with_outputs(REJECTED, main=KEPT)
            .with_exception_handling(dead_letter_tag=DEAD_LETTER, threshold=self._max_error_ratio,
                                     use_subprocess=False)
        )
        quarantined = outputs[DEAD_LETTER] | "Quarantine" >> beam.Map(quarantine(self._stage))
        rejected = (outputs[REJECTED], quarantined) | "MergeRejected" >> beam.Flatten()
        return {KEPT: outputs[KEPT], REJECTED: rejected}


def format_traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()
