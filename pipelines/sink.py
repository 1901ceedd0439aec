"""Write curated output: deterministic webdataset shards, manifest/ and rejected/ parts (schemas/formats.py).

    {"kept": PCollection[Sample], "rejected": PCollection[Rejection]}
      → shards/bBBBBB-IIIII.tar, manifest/part-BBBBB.parquet, rejected/part-BBBBB.parquet

Determinism whatever the runner or worker count, without a global plan: a record's bucket comes from its key
alone (schemas.curated.key_bucket, a range of a stable hash), one keyed shuffle brings each bucket's samples
and rejections to one worker, and that worker orders them by key and cuts shards inside the bucket
(schemas.curated.bucket_files). What one worker holds is one bucket, about 1/`buckets` of the output, never
the corpus' keys; no side input, no global combine. Every bucket id takes part in the shuffle, so empty
buckets still write their (empty) parts. Every file is written under a hidden temporary name and renamed into
place: a killed job never leaves a half-written shard or part under a final name, and dataset readers
(pyarrow, DuckDB, HF `datasets`) skip the hidden temporaries.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from vlmloom.schemas import formats
from vlmloom.schemas.config import ConfigError
from vlmloom.schemas.curated import MAX_BUCKETS, bucket_files, key_bucket
from vlmloom.schemas.records import Rejection, Sample

log = logging.getLogger("vlmloom.curate")


@dataclass(frozen=True, kw_only=True)
class OutputConfig:
    samples_per_shard: int = 1000  # a shard closes at this many samples ...
    bytes_per_shard: int = 256 * 2**20  # ... or when its members reach this many bytes, whichever first
    # Hash-range buckets of keys; one worker writes one bucket at a time and holds its kept samples, so size
    # it by the expected output: about output bytes / 1 GiB (and at least the number of workers).
    buckets: int = 16

    def validate(self) -> None:
        if self.samples_per_shard < 1 or self.bytes_per_shard < 1:
            raise ConfigError("output.samples_per_shard and output.bytes_per_shard must be >= 1")
        if not 1 <= self.buckets <= MAX_BUCKETS:
            raise ConfigError(f"output.buckets ({self.buckets}) must be within 1..{MAX_BUCKETS}: "
                              "about the expected output bytes / 1 GiB")


def join(*parts: str) -> str:
    return FileSystems.join(*parts)


def write_atomic(path: str, data: bytes) -> None:
    """Write to a hidden `.NAME.tmp-<uuid>` beside `path`, then rename; the final name only ever holds a
    complete file, and a leftover temporary is invisible to dataset readers and `*.tar` globs."""
    head, name = FileSystems.split(path)
    tmp = FileSystems.join(head, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
    with FileSystems.create(tmp) as fh:
        fh.write(data)
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([tmp], [path])


class _WriteBucket(beam.DoFn):
    """(bucket, [Sample | Rejection | None]) → the bucket's files under the output directory; yields their paths.
    (None is the bucket's id marker: it makes empty buckets reach here too.)"""

    def __init__(self, out_dir: str, config: OutputConfig):
        self._dir = out_dir
        self._cfg = config
        self._shards = Metrics.counter("write", "shards")
        self._samples = Metrics.counter("write", "samples")

    def process(self, item):
        bucket, values = item
        samples, rejections = [], []
        for value in values:
            if isinstance(value, Sample):
                samples.append(value)
            elif isinstance(value, Rejection):
                rejections.append(value)
        nshards = 0
        for relative, data in bucket_files(bucket, samples, rejections,
                                           samples_per_shard=self._cfg.samples_per_shard,
                                           bytes_per_shard=self._cfg.bytes_per_shard):
            path = join(self._dir, *relative.split("/"))
            write_atomic(path, data)
            nshards += relative.startswith(formats.SHARDS_DIR + "/")
            yield path
        self._shards.inc(nshards)
        self._samples.inc(len(samples))
        if samples:
            log.debug("wrote bucket %d: %d samples in %d shards", bucket, len(samples), nshards)


class WriteCurated(beam.PTransform):
    """{"kept", "rejected"} → shards/, manifest/, rejected/ under `output_dir`; returns the written paths."""

    def __init__(self, output_dir: str, config: OutputConfig):
        super().__init__()
        self._dir = output_dir
        self._cfg = config

    def expand(self, outputs):
        samples, rejected = outputs["kept"], outputs["rejected"]
        buckets = self._cfg.buckets
        # One GroupByKey over the flattened, bucket-keyed kept samples, rejections and bucket ids (a
        # CoGroupByKey would add a tagging Map per element and rebuild the groups as lists).
        ids = samples.pipeline | "BucketIds" >> beam.Create([(b, None) for b in range(buckets)])
        kept = samples | "KeptByBucket" >> beam.Map(lambda s: (key_bucket(s.key, buckets), s))
        dropped = rejected | "RejectedByBucket" >> beam.Map(lambda r: (key_bucket(r.key, buckets), r))
        return ((ids, kept, dropped)
                | "AllByBucket" >> beam.Flatten()
                | "GroupByBucket" >> beam.GroupByKey()
                | "WriteBucket" >> beam.ParDo(_WriteBucket(self._dir, self._cfg)))
