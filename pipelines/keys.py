"""One key, one sample: samples read under the same key (one id twice in a JSONL file, one key in two tars of
a glob, ...) → the one `readers.choose_key_winner` keeps, plus `duplicate_key` Rejections naming it.

A GroupByKey on the key: memory per key is bounded by that key's copies, no global side input, and the
choice depends only on the copies' content and origin, so every runner and worker count keeps the same one.
Without it a shard would hold two members of one name (webdataset refuses such tars) and which one came
first would depend on the runner.
"""
from __future__ import annotations

import apache_beam as beam
from vlmloom.curation import readers
from vlmloom.pipelines import progress
from vlmloom.pipelines.shuffle import keyed, sample_key, unpickled

KEPT, REJECTED = "kept", "rejected"


class _ChooseOne(progress.CountingDoFn):
    def __init__(self):
        self._dropped = progress.counter(readers.READ_STAGE, f"dropped_{readers.DUPLICATE_KEY}")

    def process(self, item: tuple[str, list[bytes]]):
        _, values = item
        samples = list(unpickled(values))
        if len(samples) == 1:
            yield samples[0]
            return
        winner, rejections = readers.choose_key_winner(samples)
        yield winner
        for rejection in rejections:
            self._dropped.inc()
            yield beam.pvalue.TaggedOutput(REJECTED, rejection)


class UniqueKeys(beam.PTransform):
    """PCollection[Sample] → {"kept": one Sample per key, "rejected": `duplicate_key` Rejections}."""

    def expand(self, samples):
        out = (samples
               | "ByKey" >> keyed(sample_key)
               | "GroupByKey" >> beam.GroupByKey()
               | "ChooseOne" >> beam.ParDo(_ChooseOne()).with_outputs(REJECTED, main=KEPT))
        return {KEPT: out[KEPT], REJECTED: out[REJECTED]}
