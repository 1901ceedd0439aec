"""Generic Beam wrapping of curation judges, and the protocol every `curate` stage follows.

A stage is a `beam.PTransform` from `PCollection[Sample]` to a dict
``{"kept": PCollection[Sample], "rejected": PCollection[Rejection]}``. Expected drops are Rejections
with a stable reason code; unexpected exceptions are caught where the decision is made and become
Rejections with reason `quarantined_error` (the error text in `detail`), so no input is ever lost;
more than `max_error_ratio` of them fails the job (`ErrorBudget`).

Every stage routes through one DoFn, `RouteDoFn` (via `route()`): `JudgeStage` wraps any per-record judge;
dedup (pipelines/dedup.py) and model stages (pipelines/model_stages.py) compute their decisions with their
own transforms and route them the same way.
"""
from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any, Callable, Sequence, Tuple

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from vlmloom.curation.base import Verdict
from vlmloom.pipelines import progress
from vlmloom.schemas.records import Rejection, Sample

KEPT = "kept"
REJECTED = "rejected"
QUARANTINED_REASON = "quarantined_error"
DEAD_LETTER = "dead_letter"
ERRORS = "errors"  # RouteDoFn's per-bundle (records, unexpected errors), for the stage's ErrorBudget
KEPT_COUNT_RUN = 64  # RouteDoFn adds its kept records to the stage's counter this many at a time (and at bundle end)

# A judge factory is called once per worker in DoFn.setup() and returns `judge(sample) -> Verdict`.
JudgeFactory = Callable[[], Callable[[Sample], Verdict]]
# decide(element, *side_inputs) -> (sample, verdict); verdict None = pass through untouched (no count, no lineage).
Decide = Callable[..., tuple[Sample, Verdict | None]]
# Called once per worker in RouteDoFn.setup(): heavy resources (models, language id) load there, not at pickling.
DecideFactory = Callable[[], Decide]


class RouteDoFn(progress.CountingDoFn):
    """The one routing DoFn of every stage: apply a decision, merge its signals, count (`kept`, one
    `dropped_<reason>` counter per reason), record lineage, and route the sample to `kept` or a
    Rejection to `rejected`. A decision that raises quarantines its record (a `quarantined_error` Rejection);
    with `count_errors`, each bundle ends with its (records, errors) on the `errors` output, for `ErrorBudget`.

    `final=False` marks a stage's first step when a later step of the same stage decides again (CLIP's
    top fraction), so kept counts and lineage are recorded once.
    """

    def __init__(self, stage: str, make_decide: DecideFactory, config_hash: str, decision: str = "kept",
                 final: bool = True, count_errors: bool = False):
        self._stage = stage
        self._make_decide = make_decide
        self._hash = config_hash
        self._decision = decision
        self._final = final
        self._count_errors = count_errors
        self._decide: Decide | None = None
        self._kept = progress.counter(stage, "kept")
        self._counters: dict[str, Any] = {}

    def setup(self) -> None:
        super().setup()
        self._decide = self._make_decide()
        self._quarantine = quarantine_any(self._stage)

    def start_bundle(self) -> None:
        self._records, self._errors, self._kept_pending = 0, 0, 0

    def process(self, element, *side_inputs):
        self._records += 1
        try:
            out = self._route(element, side_inputs)
        except Exception as exc:  # noqa: BLE001 - an unexpected error quarantines its record, it never stops the job
            self._errors += 1
            # as Beam's dead letter: (element, (type, repr)); no traceback, which the detail never showed
            for rejection in self._quarantine((element, (type(exc), repr(exc), ""))):
                yield beam.pvalue.TaggedOutput(REJECTED, rejection)
            return
        yield out

    def _route(self, element, side_inputs):
        """The element's one output: the kept sample, or its Rejection tagged `rejected` (built whole before it is
        yielded, so that a record that fails half-way leaves no output but its quarantine)."""
        sample, verdict = self._decide(element, *side_inputs)
        if verdict is None:
            return sample
        verdict.merge_into(sample, self._stage)
        if verdict.keep:
            if self._final:
                sample.with_lineage(self._stage, self._hash, self._decision)
                # counted in runs: a Beam counter's increment costs ~10 µs, paid per record by every stage
                self._kept_pending += 1
                if self._kept_pending >= KEPT_COUNT_RUN:
                    self._count_kept()
            return sample
        reason = verdict.reason or "unspecified"
        if reason not in self._counters:
            self._counters[reason] = progress.counter(self._stage, f"dropped_{reason}")
        self._counters[reason].inc()
        return beam.pvalue.TaggedOutput(REJECTED, Rejection.of(sample, self._stage, reason, verdict.detail,
                                                                verdict.signals))

    def _count_kept(self) -> None:
        if self._kept_pending:
            self._kept.inc(self._kept_pending)
            self._kept_pending = 0

    def finish_bundle(self):
        self._count_kept()  # before the bundle ends: its counts commit with it
        super().finish_bundle()
        if self._count_errors and self._records:
            yield beam.pvalue.TaggedOutput(ERRORS, WindowedValue((self._records, self._errors), MIN_TIMESTAMP,
                                                                 (GlobalWindow(),)))


def _add_counts(counts) -> tuple[int, int]:
    records = errors = 0
    for r, e in counts:
        records, errors = records + r, errors + e
    return records, errors


@dataclass(frozen=True)
class _CheckErrors:
    stage: str
    max_error_ratio: float

    def __call__(self, counts: tuple[int, int]) -> None:
        records, errors = counts
        if errors > records * self.max_error_ratio:
            raise ValueError(f"stage {self.stage}: the number of failing elements (unexpected errors, quarantined) "
                             f"exceeded threshold: {errors} / {records} = {errors / records} > {self.max_error_ratio}")


class ErrorBudget(beam.PTransform):
    """The stage fails the job when more than `max_error_ratio` of its records raised: RouteDoFn's per-bundle
    (records, errors) pairs summed over the whole stage, then checked. What Beam's `with_exception_handling
    (threshold=...)` checks, without its two counting steps and side input per record: one pair per bundle."""

    def __init__(self, stage: str, max_error_ratio: float):
        super().__init__()
        self._stage, self._ratio = stage, max_error_ratio

    def expand(self, counts):
        return (counts
                | "Total" >> beam.CombineGlobally(_add_counts).without_defaults()
                | "Check" >> beam.Map(_CheckErrors(self._stage, self._ratio)))


@dataclass(frozen=True)
class Fixed:
    """A DecideFactory for a decide function that needs no per-worker set-up (pickles by value)."""
    decide: Decide

    def __call__(self) -> Decide:
        return self.decide


@dataclass(frozen=True)
class _JudgeDecide:
    """JudgeFactory → DecideFactory: the judge is built once per worker, then applied to each sample."""
    judge_factory: JudgeFactory

    def __call__(self) -> Decide:
        judge = self.judge_factory()
        return lambda sample: (sample, judge(sample))


def route(pcoll, label: str, stage: str, make_decide: DecideFactory, config_hash: str, *, decision: str = "kept",
          max_error_ratio: float = 0.05, side_inputs: Sequence[Any] = (), final: bool = True):
    """`pcoll | RouteDoFn(...)` → (kept, [rejected]). Unexpected exceptions become `quarantined_error`
    Rejections; more than `max_error_ratio` of them fails the job (`ErrorBudget`, unless the ratio is 1)."""
    count_errors = max_error_ratio < 1
    result = (
        pcoll
        | label >> beam.ParDo(RouteDoFn(stage, make_decide, config_hash, decision, final, count_errors),
                              *side_inputs)
        # Declaring the tagged outputs keeps Beam from warning "Tags {'rejected'} ... not declared" per stage.
        .with_output_types(Sample, **{REJECTED: Rejection, ERRORS: Tuple[int, int]})
        .with_outputs(REJECTED, ERRORS, main=KEPT)
    )
    if count_errors:
        _ = result[ERRORS] | f"{label}ErrorBudget" >> ErrorBudget(stage, max_error_ratio)
    return result[KEPT], [result[REJECTED]]


def quarantine(stage: str):
    """Turn Beam dead-letter tuples `(sample, (type, value, traceback))` into Rejection rows."""
    counter = progress.counter(stage, f"dropped_{QUARANTINED_REASON}")

    def to_rejection(bad) -> Rejection:
        element, (exc_type, exc_value, tb) = bad
        counter.inc()
        last = tb.strip().splitlines()[-1] if isinstance(tb, str) and tb.strip() else ""
        detail = f"{getattr(exc_type, '__name__', exc_type)}: {exc_value}" + (f" [{last}]" if last else "")
        if isinstance(element, Sample):
            return Rejection.of(element, stage, QUARANTINED_REASON, detail[:2000])
        return Rejection(str(element)[:200], "", "", stage, QUARANTINED_REASON, detail[:2000])

    return to_rejection


def quarantine_any(stage: str):
    """Dead-letter elements may be a Sample, a (sample, output) pair, or a whole failed batch."""
    to_rejection = quarantine(stage)

    def expand(bad) -> list[Rejection]:
        element, error = bad
        if isinstance(element, tuple) and element and isinstance(element[0], Sample):
            element = element[0]
        if isinstance(element, list):
            return [to_rejection((e[0] if isinstance(e, tuple) else e, error)) for e in element]
        return [to_rejection((element, error))]

    return expand


class JudgeStage(beam.PTransform):
    """Run `judge_factory()(sample)` on every sample; route rejects and quarantine unexpected errors."""

    def __init__(self, stage: str, judge_factory: JudgeFactory, config_hash: str = "", max_error_ratio: float = 0.05):
        super().__init__(label=stage)
        self._stage = stage
        self._factory = judge_factory
        self._config_hash = config_hash
        self._max_error_ratio = max_error_ratio

    def expand(self, samples):
        kept, rejected = route(samples, "Judge", self._stage, _JudgeDecide(self._factory), self._config_hash,
                               max_error_ratio=self._max_error_ratio)
        return {KEPT: kept, REJECTED: rejected | "MergeRejected" >> beam.Flatten()}


def format_traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()
