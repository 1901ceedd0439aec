"""One key, one sample: records read under the same key (one id twice in a JSONL file, one key in two tars of a
glob, a LLaVA file whose `id` is the image id with several questions each, ...) → `readers.shared_key_decisions`:

- byte-identical raw records (same `raw_sha256`): one is kept (smallest origin), the others are rejected
  `duplicate_key`, naming it;
- records with different content: all are kept, each under its own deterministic key (source id + raw digest),
  counted `read/renamed_key` (and `inputs/<source>/renamed_key`); `signals.renamed_from` keeps the old key.

Decided on metadata: each record's row (key, raw sha256, origin, the key it would be renamed to: ~200 bytes, never
the sample or its image bytes) is grouped by key; only records whose key others share get a decision, keyed by
(key, origin) (an origin names one raw record). The samples meet their decisions in one map, whose side input
holds those decisions only: empty for a corpus without shared keys, one small tuple per record that shares its key
(a LLaVA file: most of them) otherwise. No sample is shuffled. (On the local runners the map waits for the
decisions, and the runner would hold every read sample until then: there they wait in spill files instead,
pipelines/spill.py, and the map reads them back a run at a time.)
The decision depends only on the rows' raw content and origin, so every runner and worker count agree.
Without it a shard would hold two members of one name (webdataset refuses such tars) and which one came
first would depend on the runner.
"""
from __future__ import annotations

from typing import Tuple

import apache_beam as beam

from vlmloom.curation import readers
from vlmloom.pipelines import progress, spill
from vlmloom.schemas.records import Rejection, Sample

KEPT, REJECTED = "kept", "rejected"
INPUTS_NAMESPACE = "inputs"  # = sources.INPUTS_NAMESPACE (per-source counts)
KeyRow = Tuple[str, str, str]  # readers.SharedKeyRow: (raw sha256, origin, the key if renamed)
KeyDecision = Tuple[str, str, str, str]  # readers.SharedKeyDecision


def _decision_id(key: str, origin: str) -> str:
    return f"{key}\x00{origin}"


def _key_row(sample: Sample) -> tuple[str, KeyRow]:
    return sample.key, readers.shared_key_row(sample)


def _decide(key: str, rows) -> list[tuple[str, KeyDecision]]:
    """One key's rows → (decision id, decision) for each record that needs one (none when the key is alone)."""
    rows = list(rows)
    if len(rows) == 1:
        return []
    origins = [origin for _, origin, _ in rows]
    if len(set(origins)) != len(origins):  # the decisions are routed by origin: two records must not share one
        repeated = sorted({o for o in origins if origins.count(o) > 1})
        raise ValueError(f"key {key}: several records read from the same origin {repeated[:3]}; a reader must give "
                         "each raw record its own origin (schemas/signals.py)")
    return [(_decision_id(key, rows[index][1]), decision)
            for index, decision in readers.shared_key_decisions(rows) if decision is not None]


class _ApplyKeyDecision(progress.CountingDoFn):
    def __init__(self, spilled_to: str | None = None):
        self._dropped = progress.counter(readers.READ_STAGE, f"dropped_{readers.DUPLICATE_KEY}")
        self._renamed = progress.counter(readers.READ_STAGE, readers.RENAMED_KEY)
        self._spilled_to = spilled_to  # the samples arrive as references to runs of them (pipelines/spill.py)

    def setup(self):
        super().setup()
        self._reader = spill.SpillReader(self._spilled_to) if self._spilled_to else None

    def finish_bundle(self):
        if self._reader is not None:
            self._reader.close()

    def process(self, element, decisions: dict):
        if self._reader is None:
            yield from self._apply(element, decisions)
            return
        for sample in self._reader.samples(element):  # a run of samples that waited on disk
            yield from self._apply(sample, decisions)

    def _apply(self, sample: Sample, decisions: dict):
        decision = decisions.get(_decision_id(sample.key, str(sample.signals.get(readers.ORIGIN_SIGNAL, ""))))
        if decision is None:
            yield sample
            return
        result = readers.apply_shared_key_decision(sample, decision)
        if isinstance(result, Rejection):
            self._dropped.inc()
            yield beam.pvalue.TaggedOutput(REJECTED, result)
            return
        self._renamed.inc()
        progress.counter(INPUTS_NAMESPACE, f"{result.source}/{readers.RENAMED_KEY}").inc()
        yield result


class UniqueKeys(beam.PTransform):
    """PCollection[Sample] → {"kept": one Sample per key, "rejected": `duplicate_key` Rejections}. `spill_to`: a
    local directory where the samples wait for the decisions (pipelines/spill.py; the local runners), or None."""

    def __init__(self, spill_to: str | None = None):
        super().__init__()
        self._spill_to = spill_to

    def expand(self, samples):
        decisions = (samples
                     | "Rows" >> beam.Map(_key_row).with_output_types(Tuple[str, KeyRow])
                     | "GroupRows" >> beam.GroupByKey()
                     | "Decide" >> beam.FlatMapTuple(_decide).with_output_types(Tuple[str, KeyDecision]))
        waiting = samples | "Wait" >> spill.SpilledSamples(self._spill_to) if self._spill_to else samples
        out = (waiting
               | "Apply" >> beam.ParDo(_ApplyKeyDecision(self._spill_to), beam.pvalue.AsDict(decisions))
               .with_outputs(REJECTED, main=KEPT))
        return {KEPT: out[KEPT], REJECTED: out[REJECTED]}
