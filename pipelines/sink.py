"""Write curated output: deterministic webdataset shards, manifest/ and rejected/ parts (schemas/formats.py).

    {"kept": PCollection[Sample], "rejected": PCollection[Rejection]}
      → shards/bBBBBB-IIIII.tar, manifest/part-BBBBB.parquet, rejected/part-BBBBB.parquet

Determinism whatever the runner or worker count, without a global plan: a record's bucket comes from its key
alone (schemas.curated.key_bucket, a range of a stable hash), a keyed shuffle brings each bucket's samples to
one worker, which orders them by key, cuts shards inside the bucket (schemas.curated.bucket_shards) and writes the
bucket's manifest part; a second one brings the bucket's rejections and its rows' report aggregates together for
its rejected part (schemas.curated.rejected_part).
What one worker holds is one bucket, about 1/`buckets` of the output, never the corpus' keys; no global combine.
Dedup's decisions (records to drop, pipelines/dedup.py) reach the writer as a side input keyed by bucket, which
the runner serves one bucket at a time: a join with the samples would make the local runner hold every kept
sample twice (a Flatten is materialised there before its grouping). Beside its parts, each bucket writes the
report's aggregates of exactly those rows (report.ReportStats, curated.report_stats_path), which the driver
merges: a bucket's figures exist iff its parts do. Every bucket id takes part in the second shuffle, so empty
buckets still write their (empty) parts. Every file is written under a hidden temporary name and renamed into
place: a killed job never leaves a half-written shard or part under a final name, and dataset readers
(pyarrow, DuckDB, HF `datasets`) skip the hidden temporaries.
"""
from __future__ import annotations

import logging
import pickle
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
from vlmloom.pipelines.spill import SPILL_MODES, SpilledByBucket, read_spilled, spill_dir, spills
from vlmloom.pipelines.files import BEAM_FILES
from vlmloom.schemas.config import ConfigError
from vlmloom.schemas.curated import (MAX_BUCKETS, bucket_shards, key_bucket, manifest_part, rejected_part,
                                     report_stats_path)
from vlmloom.schemas.records import Rejection, Sample

log = logging.getLogger("vlmloom.curate")


@dataclass(frozen=True, kw_only=True)
class OutputConfig:
    samples_per_shard: int = 1000  # a shard closes at this many samples ...
    bytes_per_shard: int = 256 * 2**20  # ... or when its members reach this many bytes, whichever first
    # Hash-range buckets of keys; one worker writes one bucket at a time and holds its kept samples, so size
    # it by the expected output: about output bytes / 1 GiB (and at least the number of workers).
    buckets: int = 16
    # Kept samples wait for their bucket's writer in files under OUTPUT/.spill (pipelines/spill.py), not in the
    # runner's memory: "auto" on Beam's local runners writing a local output, "always", or "never"
    spill: str = "auto"

    def validate(self) -> None:
        if self.samples_per_shard < 1 or self.bytes_per_shard < 1:
            raise ConfigError("output.samples_per_shard and output.bytes_per_shard must be >= 1")
        if self.spill not in SPILL_MODES:
            raise ConfigError(f"output_format.spill ({self.spill!r}) must be one of {list(SPILL_MODES)}")
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


# What the parts' grouping carries, each value one compact blob (the local runner keeps grouped values as Python
# objects): the report aggregates of a bucket's manifest rows (its writer wrote the manifest part itself) | one
# pickled Rejection; b"" = the bucket's id marker
_STATS, _REJECTION = b"S", b"R"


def _packed(mark: bytes, value) -> bytes:
    return mark + pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def _rejection_by_bucket(buckets: int, rejection: Rejection) -> tuple[int, bytes]:
    return key_bucket(rejection.key, buckets), _packed(_REJECTION, rejection)


class _WriteShards(progress.CountingDoFn):
    """(bucket, [pickled Sample]) → the bucket's shards under the output directory; yields (bucket, packed manifest
    rows) and (bucket, packed Rejection) for the samples dedup's decisions drop. The decisions (pipelines/dedup.py,
    made on metadata) come as a side input keyed by bucket, fetched one bucket at a time: the samples reach this
    step through their bucket's grouping alone, never a Flatten with the decisions (the local runner would hold
    every kept sample once more to materialise one)."""

    def __init__(self, out_dir: str, config: OutputConfig, lineage=None, spilled: bool = False):
        self._dir = out_dir
        self._cfg = config
        self._lineage = lineage
        self._spilled = spilled  # the grouped values are references to spill files (pipelines/spill.py)
        self._shards = Metrics.counter("write", "shards")
        self._samples = Metrics.counter("write", "samples")

    def setup(self):
        super().setup()
        from vlmloom.pipelines.dedup import DecisionApplier

        self._applier = DecisionApplier(*self._lineage) if self._lineage is not None else None

    def process(self, item, decisions=None):
        bucket, values = item
        if self._spilled:
            values = read_spilled(spill_dir(self._dir), values)
        rejections: list[Rejection] = []
        if self._applier is not None:
            samples = self._applier.apply(values, rejections, decisions[bucket])
        else:
            samples = unpickled(values)
        rows: list[dict] = []
        nshards = 0
        for relative, data in bucket_shards(bucket, samples, rows, samples_per_shard=self._cfg.samples_per_shard,
                                            bytes_per_shard=self._cfg.bytes_per_shard):
            write_atomic(join(self._dir, *relative.split("/")), data)
            nshards += 1
        relative, data = manifest_part(bucket, rows)
        write_atomic(join(self._dir, *relative.split("/")), data)
        self._shards.inc(nshards)
        self._samples.inc(len(rows))
        log.debug("wrote bucket %d: %d samples in %d shards", bucket, len(rows), nshards)
        yield bucket, _STATS + ReportStats().add(rows, ()).to_json()
        for rejection in rejections:
            yield bucket, _packed(_REJECTION, rejection)


class _WriteParts(beam.DoFn):
    """(bucket, [b"" | packed Rejection | the kept rows' aggregates]) → the bucket's rejected part (and its empty
    manifest part when it kept nothing: its writer writes it otherwise), then its report aggregates
    (report.ReportStats of exactly the rows written); yields the bucket. (b"" is the bucket's id marker: it makes
    buckets without samples or rejections reach here too.)"""

    def __init__(self, out_dir: str):
        self._dir = out_dir

    def process(self, item):
        bucket, values = item
        stats, kept = ReportStats(), False
        rejections: list[Rejection] = []
        for value in values:
            if value[:1] == _REJECTION:
                rejections.append(pickle.loads(value[1:]))
            elif value[:1] == _STATS:
                stats.merge(ReportStats.from_json(value[1:]))
                kept = True
        parts = [rejected_part(bucket, rejections)] + ([] if kept else [manifest_part(bucket, [])])
        for relative, data in parts:
            write_atomic(join(self._dir, *relative.split("/")), data)
        stats.add((), (dict(r.__dict__) for r in rejections))
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
        spilled = spills(self._cfg.spill, samples.pipeline.options, self._dir)
        by_bucket = partial(_sample_bucket, buckets)
        kept = samples | "KeptByBucket" >> (SpilledByBucket(spill_dir(self._dir), by_bucket) if spilled
                                            else keyed(by_bucket, int))
        lineage, side = None, ()
        if self._pending is not None:  # the dedup decisions meet their samples here, once, bucket by bucket
            lineage = (self._pending.lineage, self._pending.later)
            decisions = self._pending.values(partial(_key_bucket, buckets), "DecisionsByBucket")
            side = (beam.pvalue.AsMultiMap(decisions),)
        rows = (kept
                | "GroupByBucket" >> beam.GroupByKey()
                | "WriteShards" >> beam.ParDo(_WriteShards(self._dir, self._cfg, lineage, spilled), *side)
                .with_output_types(Tuple[int, bytes]))
        ids = samples.pipeline | "BucketIds" >> beam.Create([(b, b"") for b in range(buckets)], reshuffle=False)
        dropped = rejected | "RejectedByBucket" >> beam.Map(partial(_rejection_by_bucket, buckets)).with_output_types(
            Tuple[int, bytes])
        return ((ids, rows, dropped)
                | "PartsByBucket" >> beam.Flatten().with_output_types(Tuple[int, bytes])
                | "GroupPartsByBucket" >> beam.GroupByKey()
                | "WriteParts" >> beam.ParDo(_WriteParts(self._dir)))
