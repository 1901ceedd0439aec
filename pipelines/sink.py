"""Write curated output: deterministic webdataset shards, manifest/ and rejected/ parts (schemas/formats.py).

    {"kept": PCollection[Sample], "rejected": PCollection[Rejection]}
      → shards/bBBBBB-IIIII.tar, manifest/part-BBBBB.parquet, rejected/part-BBBBB.parquet

Determinism whatever the runner or worker count, without a global plan: a record's bucket comes from its key
alone (schemas.curated.key_bucket, a range of a stable hash), a keyed shuffle brings each bucket's samples to
one worker, which orders them by key and cuts shards inside the bucket (schemas.curated.bucket_shards); a second
one brings the bucket's manifest rows and rejections together for its parts (schemas.curated.bucket_parts).
What one worker holds is one bucket, about 1/`buckets` of the output, never the corpus' keys; no side input,
no global combine. Beside its parts, each bucket writes the report's aggregates of exactly those rows
(report.ReportStats, curated.report_stats_path), which the driver merges: a bucket's figures exist iff its parts do. Every bucket id takes part in the second shuffle, so empty buckets still write their
(empty) parts. Every file is written under a hidden temporary name and renamed into
place: a killed job never leaves a half-written shard or part under a final name, and dataset readers
(pyarrow, DuckDB, HF `datasets`) skip the hidden temporaries.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from functools import partial
from typing import Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from vlmloom.pipelines import progress
from vlmloom.pipelines.report import ReportStats
from vlmloom.pipelines.shuffle import keyed, unpickled
from vlmloom.pipelines.files import BEAM_FILES
from vlmloom.schemas.config import ConfigError
from vlmloom.schemas.curated import MAX_BUCKETS, bucket_parts, bucket_shards, key_bucket, report_stats_path
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


def _key_bucket(buckets: int, key: str) -> int:
    return key_bucket(key, buckets)


def _sample_bucket(buckets: int, sample: Sample) -> int:
    return key_bucket(sample.key, buckets)


class _WriteShards(progress.CountingDoFn):
    """(bucket, [pickled Sample | pending dedup decision]) → the bucket's shards under the output directory; yields
    (bucket, manifest rows) and (bucket, Rejection) for the samples the decisions drop (pipelines/dedup.py: the
    decisions, made on metadata, meet their samples here, in the grouping the samples need anyway)."""

    def __init__(self, out_dir: str, config: OutputConfig, lineage=None):
        self._dir = out_dir
        self._cfg = config
        self._lineage = lineage
        self._shards = Metrics.counter("write", "shards")
        self._samples = Metrics.counter("write", "samples")

    def setup(self):
        super().setup()
        from vlmloom.pipelines.dedup import DecisionApplier

        self._applier = DecisionApplier(*self._lineage) if self._lineage is not None else None

    def process(self, item):
        bucket, values = item
        rejections: list[Rejection] = []
        samples = self._applier.apply(values, rejections) if self._applier else unpickled(values)
        rows: list[dict] = []
        nshards = 0
        for relative, data in bucket_shards(bucket, samples, rows, samples_per_shard=self._cfg.samples_per_shard,
                                            bytes_per_shard=self._cfg.bytes_per_shard):
            write_atomic(join(self._dir, *relative.split("/")), data)
            nshards += 1
        self._shards.inc(nshards)
        self._samples.inc(len(rows))
        log.debug("wrote bucket %d: %d samples in %d shards", bucket, len(rows), nshards)
        yield bucket, rows
        for rejection in rejections:
            yield bucket, rejection


class _WriteParts(beam.DoFn):
    """(bucket, [None | Rejection | [manifest row]]) → the bucket's manifest and rejected parts, then its report
    aggregates (report.ReportStats of exactly the rows written); yields the bucket. (None is the bucket's id
    marker: it makes buckets without samples or rejections reach here too.)"""

    def __init__(self, out_dir: str):
        self._dir = out_dir

    def process(self, item):
        bucket, values = item
        rows: list[dict] = []
        rejections: list[Rejection] = []
        for value in values:
            if isinstance(value, Rejection):
                rejections.append(value)
            elif value is not None:
                rows.extend(value)
        for relative, data in bucket_parts(bucket, rows, rejections):
            write_atomic(join(self._dir, *relative.split("/")), data)
        stats = ReportStats().add(rows, (dict(r.__dict__) for r in rejections))
        write_atomic(report_stats_path(self._dir, bucket, BEAM_FILES), stats.to_json())
        yield bucket


class WriteCurated(beam.PTransform):
    """{"kept", "rejected"} → shards/, manifest/, rejected/ under `output_dir`, and each bucket's report
    aggregates (curated.report_stats_path, for the driver's report.json); returns the buckets written.
    `pending`: dedup decisions (pipelines.dedup.PendingDecisions) to apply to the kept samples in their bucket."""

    def __init__(self, output_dir: str, config: OutputConfig, pending=None):
        super().__init__()
        self._dir = output_dir
        self._cfg = config
        self._pending = pending

    def expand(self, outputs):
        samples, rejected = outputs["kept"], outputs["rejected"]
        buckets = self._cfg.buckets
        # The samples reach their bucket's writer through a GroupByKey of their own: a Flatten with the other
        # inputs would be materialised by the local runner (every sample encoded and decoded once more). The
        # light rest (manifest rows, rejections, bucket ids) meets in a second grouping that writes the parts.
        kept = samples | "KeptByBucket" >> keyed(partial(_sample_bucket, buckets), int)
        lineage = None
        if self._pending is not None:  # the dedup decisions join their samples here, once
            lineage = (self._pending.lineage, self._pending.later)
            decisions = self._pending.values(partial(_key_bucket, buckets), "DecisionsByBucket")
            kept = (kept, decisions) | "KeptAndDecisions" >> beam.Flatten().with_output_types(Tuple[int, bytes])
        rows = (kept
                | "GroupByBucket" >> beam.GroupByKey()
                | "WriteShards" >> beam.ParDo(_WriteShards(self._dir, self._cfg, lineage)))
        ids = samples.pipeline | "BucketIds" >> beam.Create([(b, None) for b in range(buckets)], reshuffle=False)
        dropped = rejected | "RejectedByBucket" >> beam.Map(lambda r: (key_bucket(r.key, buckets), r))
        return ((ids, rows, dropped)
                | "PartsByBucket" >> beam.Flatten()
                | "GroupPartsByBucket" >> beam.GroupByKey()
                | "WriteParts" >> beam.ParDo(_WriteParts(self._dir)))
