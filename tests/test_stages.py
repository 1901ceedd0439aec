import pytest
import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from vlmloom.curation.base import Verdict
from vlmloom.pipelines.stages import QUARANTINED_REASON, ErrorBudget, JudgeStage
from vlmloom.schemas.records import Sample


class ParityJudge:
    """Keeps even ids, drops odd ids, raises on id 7 (an unexpected error)."""

    def __call__(self):
        def judge(sample):
            n = int(sample.source_id)
            if n == 7:
                raise ZeroDivisionError("boom")
            return Verdict.ok(n=n) if n % 2 == 0 else Verdict.drop("odd_id", f"id {n}")
        return judge


def _samples(n):
    return [Sample(key=f"k{i}", source="s", source_id=str(i)) for i in range(n)]


def test_judge_stage_routes_keeps_rejects_and_quarantines():
    with TestPipeline() as p:
        out = p | beam.Create(_samples(10)) | JudgeStage("parity", ParityJudge(), "h", max_error_ratio=0.5)
        assert_that(out["kept"] | "K" >> beam.Map(lambda s: (s.key, s.signals["n"], s.lineage[-1].stage)),
                    equal_to([(f"k{i}", i, "parity") for i in (0, 2, 4, 6, 8)]), label="kept")
        assert_that(out["rejected"] | "R" >> beam.Map(lambda r: (r.source_id, r.stage, r.reason)),
                    equal_to([(str(i), "parity", "odd_id") for i in (1, 3, 5, 9)]
                             + [("7", "parity", QUARANTINED_REASON)]), label="rejected")


def test_judge_stage_on_empty_input():
    with TestPipeline() as p:
        out = p | beam.Create([], reshuffle=False).with_output_types(Sample) | JudgeStage("parity", ParityJudge())
        assert_that(out["kept"], equal_to([]), label="kept")
        assert_that(out["rejected"], equal_to([]), label="rejected")


def test_quarantined_detail_names_the_error():
    with TestPipeline() as p:
        out = p | beam.Create(_samples(8)) | JudgeStage("parity", ParityJudge(), "h", max_error_ratio=0.5)
        quarantined = out["rejected"] | beam.Filter(lambda r: r.reason == QUARANTINED_REASON)
        assert_that(quarantined | beam.Map(lambda r: (r.key, r.detail)),
                    equal_to([("k7", "ZeroDivisionError: ZeroDivisionError('boom')")]))


def test_more_errors_than_the_budget_fail_the_job():
    # 1 error in 8 records: over a budget of 0.1, within one of 0.125 (the check is errors > records * ratio)
    with pytest.raises(Exception, match=r"stage parity: the number of failing elements .* exceeded threshold: "
                                        r"1 / 8 = 0\.125 > 0\.1"):
        with TestPipeline() as p:
            _ = p | beam.Create(_samples(8)) | JudgeStage("parity", ParityJudge(), "h", max_error_ratio=0.1)
    with TestPipeline() as p:
        out = p | beam.Create(_samples(8)) | JudgeStage("parity", ParityJudge(), "h", max_error_ratio=0.125)
        assert_that(out["kept"] | beam.Map(lambda s: s.key), equal_to(["k0", "k2", "k4", "k6"]))


def test_error_budget_sums_every_bundle_before_it_checks():
    """Bundles report (records, errors) pairs; the stage's totals decide, not any one bundle's share."""
    with TestPipeline() as p:  # 2 / 20 = 0.1: within a budget of 0.1, though one bundle failed half its records
        _ = p | beam.Create([(2, 1), (8, 0), (10, 1)]) | ErrorBudget("s", 0.1)
    with pytest.raises(Exception, match=r"exceeded threshold: 3 / 20 = 0\.15 > 0\.1"):
        with TestPipeline() as p:
            _ = p | beam.Create([(2, 1), (8, 1), (10, 1)]) | ErrorBudget("s", 0.1)


def test_kept_counts_add_up_over_runs_and_bundles():
    """RouteDoFn adds kept records to its counter in runs of KEPT_COUNT_RUN and at each bundle's end: none lost."""
    from apache_beam.metrics.metric import MetricsFilter

    from vlmloom.pipelines.stages import KEPT_COUNT_RUN

    n = 2 * KEPT_COUNT_RUN + 23
    pipeline = TestPipeline()
    _ = pipeline | beam.Create(_samples(n)) | JudgeStage("parity", ParityJudge(), "h", max_error_ratio=0.5)
    result = pipeline.run()
    result.wait_until_finish()
    counts = {c.key.metric.name: c.committed for c in result.metrics().query(MetricsFilter())["counters"]
              if c.key.metric.namespace == "parity"}
    evens, odds = (n + 1) // 2, n // 2
    assert counts == {"kept": evens, "dropped_odd_id": odds - 1, "dropped_quarantined_error": 1}
