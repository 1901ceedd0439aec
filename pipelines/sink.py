"""Write curated output: deterministic webdataset shards, manifest.parquet and rejected/ (schemas/formats.py).

Members and manifest rows come from schemas/curated.py, tars from schemas/tars.py.
Determinism whatever the runner or worker count: shard membership is planned from the *sorted* list
of kept keys (with their sizes), members inside a shard are sorted by key, and tar headers carry no
time or owner. Every file is written to a temporary name and renamed into place, so a killed job
never leaves a half-written shard under a final name.
"""
from __future__ import annotations

import io
import logging
import uuid
from dataclasses import dataclass

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from vlmloom.schemas import formats
from vlmloom.schemas.config import ConfigError
from vlmloom.schemas.curated import manifest_row, member_layout, sample_members
from vlmloom.schemas.records import REJECTION_SCHEMA, Sample
from vlmloom.schemas.tars import tar_bytes

log = logging.getLogger("vlmloom.curate")


@dataclass(frozen=True, kw_only=True)
class OutputConfig:
    samples_per_shard: int = 1000  # a shard closes at this many samples ...
    bytes_per_shard: int = 256 * 2**20  # ... or when its members reach this many bytes, whichever first

    def validate(self) -> None:
        if self.samples_per_shard < 1 or self.bytes_per_shard < 1:
            raise ConfigError("output.samples_per_shard and output.bytes_per_shard must be >= 1")


def join(*parts: str) -> str:
    return FileSystems.join(*parts)


def write_atomic(path: str, data: bytes) -> None:
    """Write to `path.tmp-<uuid>` then rename; the final name only ever holds a complete file."""
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with FileSystems.create(tmp) as fh:
        fh.write(data)
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([tmp], [path])


def estimated_size(sample: Sample) -> int:
    return sum(len(img.bytes or b"") for img in sample.images) + len(sample.text or "") * 2 + 2048


def plan_shards(sizes: list[tuple[str, int, str]], config: OutputConfig) -> dict[str, int]:
    """(key, bytes, layout) → {key: shard index}, in (layout, key) order.

    A shard holds one member layout only: readers that infer columns from the first samples
    (HF `datasets`' webdataset builder) need every sample of a tar to have the same members.
    Shards close on sample count, byte size or a layout change.
    """
    plan: dict[str, int] = {}
    shard, count, nbytes, layout = 0, 0, 0, None
    for key, size, lay in sorted(sizes, key=lambda x: (x[2], x[0])):
        if count and (count >= config.samples_per_shard or nbytes + size > config.bytes_per_shard or lay != layout):
            shard, count, nbytes = shard + 1, 0, 0
        plan[key] = shard
        layout = lay
        count += 1
        nbytes += size
    return plan


class _WriteShard(beam.DoFn):
    def __init__(self, shards_dir: str):
        self._dir = shards_dir
        self._shards = Metrics.counter("write", "shards")
        self._samples = Metrics.counter("write", "samples")

    def process(self, item: tuple[int, list[Sample]]):
        index, samples = item
        samples = sorted(samples, key=lambda s: s.key)
        name = formats.shard_name(index)
        members: list[tuple[str, bytes]] = []
        for sample in samples:
            members.extend(sample_members(sample))
        write_atomic(join(self._dir, name), tar_bytes(members))
        log.info("wrote shard %s: %d samples", name, len(samples))
        self._shards.inc()
        self._samples.inc(len(samples))
        for sample in samples:
            yield manifest_row(sample, name)


def write_table(path: str, table: pa.Table) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    write_atomic(path, buf.getvalue())


class WriteCurated(beam.PTransform):
    """{"kept", "rejected"} → shards/, manifest.parquet, rejected/rejected.parquet under `output_dir`."""

    def __init__(self, output_dir: str, config: OutputConfig):
        super().__init__()
        self._dir = output_dir
        self._cfg = config

    def expand(self, outputs):
        samples, rejected = outputs["kept"], outputs["rejected"]
        cfg, out_dir = self._cfg, self._dir
        plan = (samples
                | "Sizes" >> beam.Map(lambda s: (s.key, estimated_size(s), member_layout(s)))
                | "AllSizes" >> beam.combiners.ToList()
                | "Plan" >> beam.Map(plan_shards, cfg))
        manifest = (samples
                    | "AssignShard" >> beam.Map(lambda s, plan: (plan[s.key], s), beam.pvalue.AsSingleton(plan))
                    | "GroupByShard" >> beam.GroupByKey()
                    | "WriteShard" >> beam.ParDo(_WriteShard(join(out_dir, formats.SHARDS_DIR))))
        (manifest
         | "AllManifestRows" >> beam.combiners.ToList()
         | "WriteManifest" >> beam.Map(lambda rows: write_table(
             join(out_dir, formats.MANIFEST_FILE),
             pa.Table.from_pylist(sorted(rows, key=lambda r: r["key"]), schema=formats.MANIFEST_SCHEMA))))
        (rejected
         | "RejectionRows" >> beam.Map(lambda r: r.__dict__.copy())
         | "AllRejections" >> beam.combiners.ToList()
         | "WriteRejected" >> beam.Map(lambda rows: write_table(
             join(out_dir, formats.REJECTED_DIR, "rejected.parquet"),
             pa.Table.from_pylist(sorted(rows, key=lambda r: (r["stage"], r["key"], r["reason"], r["detail"])),
                                  schema=REJECTION_SCHEMA))))
        return manifest
