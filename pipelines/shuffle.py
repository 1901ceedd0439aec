"""Samples cross the pipeline's shuffles as pickled bytes.

    samples | "ByKey" >> keyed(sample_key)           # (key, bytes), pickled where the sample was made
    ... GroupByKey / CoGroupByKey ...
    for sample in unpickled(values): ...              # in the consuming worker

The local runners (the DirectRunner's FnApiRunner, in-process or with worker processes) group in the runner's
own process, one stage at a time: every grouped value is decoded there to be filed under its key and encoded
again for the consuming bundle, serially, while the workers wait at the stage barrier. As bytes, a value is a
copy to that step; the pickling and unpickling happen in the workers, in parallel. On Dataflow, Flink and
Spark the shuffle moves values as bytes anyway: there it costs nothing but the same one pickle per value.
The bytes come only from this job's own workers (the trust of Beam's own pickling coders).
"""
from __future__ import annotations

import pickle
from typing import Any, Callable, Iterable, Iterator, Tuple

import apache_beam as beam

from vlmloom.schemas.records import Sample


def _pickled(sample: Sample, key_fn: Callable[[Sample], Any]) -> tuple[Any, bytes]:
    return key_fn(sample), pickle.dumps(sample, protocol=pickle.HIGHEST_PROTOCOL)


class KeyedSamples(beam.PTransform):
    """Sample → (key_fn(sample), pickled sample), typed so Beam codes the value as plain bytes. A transform of its
    own so that a graph walk can tell a shuffle of whole samples from other shuffles of bytes
    (tests/test_pipeline_structure.py)."""

    def __init__(self, key_fn: Callable[[Sample], Any], key_type: type = str):
        super().__init__()
        self._key_fn, self._key_type = key_fn, key_type

    def expand(self, samples):
        return samples | "Pickle" >> beam.Map(_pickled, self._key_fn).with_output_types(Tuple[self._key_type, bytes])


def keyed(key_fn: Callable[[Sample], Any], key_type: type = str) -> beam.PTransform:
    return KeyedSamples(key_fn, key_type)


def sample_key(sample: Sample) -> str:
    return sample.key


def unpickled(values: Iterable[bytes]) -> Iterator[Sample]:
    for value in values:
        yield pickle.loads(value)
