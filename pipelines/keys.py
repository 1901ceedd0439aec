"""One key, one sample: records read under the same key (one id twice in a JSONL file, one key in two tars of a
glob, a LLaVA file whose `id` is the image id with several questions each, ...) → `readers.resolve_shared_key`:

- byte-identical raw records (same `raw_sha256`): one is kept (smallest origin), the others are rejected
  `duplicate_key`, naming it;
- records with different content: all are kept, each under its own deterministic key (source id + raw digest),
  counted `read/renamed_key` (and `inputs/<source>/renamed_key`); `signals.renamed_from` keeps the old key.

A GroupByKey on the key: memory per key is bounded by that key's copies, no global side input, and the
decision depends only on the copies' raw content and origin, so every runner and worker count agree.
Without it a shard would hold two members of one name (webdataset refuses such tars) and which one came
first would depend on the runner.
"""
from __future__ import annotations

import apache_beam as beam
from vlmloom.curation import readers
from vlmloom.pipelines import progress
from vlmloom.pipelines.shuffle import keyed, sample_key, unpickled

KEPT, REJECTED = "kept", "rejected"
INPUTS_NAMESPACE = "inputs"  # = sources.INPUTS_NAMESPACE (per-source counts)


class _ChooseOne(progress.CountingDoFn):
    def __init__(self):
        self._dropped = progress.counter(readers.READ_STAGE, f"dropped_{readers.DUPLICATE_KEY}")
        self._renamed = progress.counter(readers.READ_STAGE, readers.RENAMED_KEY)

    def process(self, item: tuple[str, list[bytes]]):
        _, values = item
        samples = list(unpickled(values))
        if len(samples) == 1:
            yield samples[0]
            return
        kept, rejections = readers.resolve_shared_key(samples)
        for sample in kept:
            if sample.signals.get(readers.RENAMED_SIGNAL):
                self._renamed.inc()
                progress.counter(INPUTS_NAMESPACE, f"{sample.source}/{readers.RENAMED_KEY}").inc()
            yield sample
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
