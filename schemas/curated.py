"""The curated-directory layout (formats.py) written in one place: a Sample's tar members, its member layout,
its manifest row, a key's bucket, a bucket's files (`bucket_files`), and `write_curated_dir` for local
directories written without Beam (tests, benchmarks, the demo). `pipelines/sink.py` writes the same buckets
from a Beam job.

    Sample → sample_members(...) [(KEY.json, ...), (KEY.txt, ...), (KEY.jpg, ...)] → manifest_row(...)
    key → key_bucket(key, N) → bucket_files(bucket, samples, rejections) → shards/bBBBBB-IIIII.tar ...,
        manifest/part-BBBBB.parquet, rejected/part-BBBBB.parquet
    [Sample] → write_curated_dir(dir, samples) → every bucket's files + dir/_SUCCESS
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from vlmloom.schemas import formats
from vlmloom.schemas.records import REJECTION_SCHEMA, Rejection, Sample
from vlmloom.schemas.tars import tar_bytes


def member_names(sample: Sample) -> list[str]:
    # KEY.txt is always written (empty without text) so that samples of a kind share one member layout.
    names = [f"{sample.key}.json", f"{sample.key}.txt"]
    return names + [formats.image_member_name(sample.key, i, image.format or "jpeg")
                    for i, image in enumerate(sample.images) if image.has_bytes] + [
        formats.video_member_name(sample.key, i, video.format) for i, video in enumerate(sample.videos)
        if video.has_bytes]


def sample_members(sample: Sample) -> list[tuple[str, bytes]]:
    """The tar members of one sample, in member_names order. Images held only as a span are read from their
    input file here, checked against the sha256 decode recorded (ImageRef.load_bytes)."""
    data = [sample.to_json().encode("utf-8"), (sample.training_text() or "").encode("utf-8")]
    data += [image.load_bytes() for image in sample.images if image.has_bytes]
    data += [video.load_bytes() for video in sample.videos if video.has_bytes]
    return list(zip(member_names(sample), data))


def member_layout(sample: Sample) -> str:
    """The member extensions of a sample, e.g. "json,txt,jpg" or "json,txt,jpg,1.png"."""
    return ",".join(name.split(".", 1)[1] for name in member_names(sample))


def manifest_row(sample: Sample, shard: str) -> dict:
    """The sample's row of manifest.parquet (formats.MANIFEST_SCHEMA); `shard` is the tar's file name."""
    return {
        "key": sample.key, "source": sample.source, "source_id": sample.source_id, "kind": sample.kind,
        "shard": shard, "layout": member_layout(sample), "num_images": len(sample.images),
        "width": sample.images[0].width if sample.images else sample.videos[0].width if sample.videos else 0,
        "height": sample.images[0].height if sample.images else sample.videos[0].height if sample.videos else 0,
        "text_chars": len(sample.training_text() or ""),
        "signals": json.dumps(sample.signals, sort_keys=True, default=str),
    }


MAX_BUCKETS = 100_000  # bucket numbers are written with 5 digits (formats.curated_shard_name)


def key_bucket(key: str, buckets: int) -> int:
    """The hash-range bucket of `key` among `buckets`: the first 8 bytes of sha256(key) scaled to 0..buckets-1.

    Depends on the key alone (not on Python's per-process hash seed, the runner or the other keys), so every
    worker places every sample the same way without a global plan, and buckets get near-equal shares.
    """
    return (int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") * buckets) >> 64


def plan_shards(sizes: Iterable[tuple[str, int, str]], samples_per_shard: int, bytes_per_shard: int) -> dict[str, int]:
    """(key, bytes, layout) of one bucket → {key: shard index in the bucket}, in (layout, key) order.

    A shard holds one member layout only: readers that infer columns from the first samples
    (HF `datasets`' webdataset builder) need every sample of a tar to have the same members.
    Shards close on sample count, byte size or a layout change.
    """
    plan: dict[str, int] = {}
    shard, count, nbytes, layout = 0, 0, 0, None
    for key, size, lay in sorted(sizes, key=lambda x: (x[2], x[0])):
        if count and (count >= samples_per_shard or nbytes + size > bytes_per_shard or lay != layout):
            shard, count, nbytes = shard + 1, 0, 0
        plan[key] = shard
        layout = lay
        count += 1
        nbytes += size
    return plan


def estimated_size(sample: Sample) -> int:
    """Bytes a sample adds to its shard, near enough to cut shards by size (no encoding needed)."""
    return sum(img.nbytes for img in sample.images) + len(sample.text or "") * 2 + 2048


def _parquet_bytes(rows: list[dict], schema: pa.Schema) -> bytes:
    buf = io.BytesIO()
    if rows:
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf, compression="zstd")
    else:  # the schema and no row group: HF `datasets` refuses a row group of 0 rows ("BatchSize must be > 0")
        pq.ParquetWriter(buf, schema, compression="zstd").close()
    return buf.getvalue()


def rejection_sort_key(row: dict) -> tuple:
    return tuple(row[name] or "" for name in ("stage", "key", "reason", "detail", "source", "source_id", "fields"))


def bucket_files(bucket: int, samples: Iterable[Sample], rejections: Iterable[Rejection], *,
                 samples_per_shard: int, bytes_per_shard: int) -> Iterator[tuple[str, bytes]]:
    """One bucket's files of a curated directory, as (path relative to the directory, bytes):
    its shards, then manifest/part-BBBBB.parquet and rejected/part-BBBBB.parquet (written even when empty,
    so every bucket's part exists and readers see the schema). Shards are produced one at a time.

    The one implementation of the bucket layout (`bucket_shards` then `bucket_parts`): the Beam sink and
    write_curated_dir both use it, so a bucket's bytes depend only on its samples and rejections, never on
    arrival order.
    """
    rows: list[dict] = []
    yield from bucket_shards(bucket, samples, rows, samples_per_shard=samples_per_shard,
                             bytes_per_shard=bytes_per_shard)
    yield from bucket_parts(bucket, rows, rejections)


def bucket_shards(bucket: int, samples: Iterable[Sample], rows: list[dict], *,
                  samples_per_shard: int, bytes_per_shard: int) -> Iterator[tuple[str, bytes]]:
    """The bucket's shards, (relative path, tar bytes) one at a time, in key order inside (layout, size) cuts;
    appends each written sample's manifest row to `rows`."""
    by_key: dict[str, Sample] = {}
    for sample in samples:
        if sample.key in by_key:
            raise ValueError(f"record {sample.key!r}: two samples with one key in bucket {bucket}; keys must be unique")
        by_key[sample.key] = sample
    plan = plan_shards(((k, estimated_size(s), member_layout(s)) for k, s in by_key.items()),
                       samples_per_shard, bytes_per_shard)
    shards: dict[int, list[Sample]] = {}
    for key in sorted(plan):
        shards.setdefault(plan[key], []).append(by_key[key])
    for index in sorted(shards):
        name = formats.curated_shard_name(bucket, index)
        yield f"{formats.SHARDS_DIR}/{name}", tar_bytes([m for s in shards[index] for m in sample_members(s)])
        rows += [manifest_row(s, name) for s in shards[index]]


def bucket_parts(bucket: int, rows: Iterable[dict], rejections: Iterable[Rejection]) -> Iterator[tuple[str, bytes]]:
    """The bucket's manifest part (its samples' rows, by key) and rejected part, each written even when empty."""
    rows = sorted(rows, key=lambda r: r["key"])
    yield f"{formats.MANIFEST_DIR}/{formats.part_name(bucket)}", _parquet_bytes(rows, formats.MANIFEST_SCHEMA)
    rejected = sorted((dict(r.__dict__) for r in rejections), key=rejection_sort_key)
    yield f"{formats.REJECTED_DIR}/{formats.part_name(bucket)}", _parquet_bytes(rejected, REJECTION_SCHEMA)


def write_curated_dir(directory: str, samples: list[Sample], per_shard: int = 50, *, buckets: int = 4,
                      rejections: Iterable[Rejection] = (), bytes_per_shard: int = 256 * 2**20) -> str:
    """Write `samples` as a finished curated directory in the layout the Beam sink writes (local only):
    `buckets` hash-range buckets, shards of at most `per_shard` samples inside each."""
    samples_by_bucket: dict[int, list[Sample]] = {b: [] for b in range(buckets)}
    rejections_by_bucket: dict[int, list[Rejection]] = {b: [] for b in range(buckets)}
    for sample in samples:
        samples_by_bucket[key_bucket(sample.key, buckets)].append(sample)
    for rejection in rejections:
        rejections_by_bucket[key_bucket(rejection.key, buckets)].append(rejection)
    for sub in (formats.SHARDS_DIR, formats.MANIFEST_DIR, formats.REJECTED_DIR):
        os.makedirs(os.path.join(directory, sub), exist_ok=True)
    for bucket in range(buckets):
        for relative, data in bucket_files(bucket, samples_by_bucket[bucket], rejections_by_bucket[bucket],
                                           samples_per_shard=per_shard, bytes_per_shard=bytes_per_shard):
            path = os.path.join(directory, relative)
            tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
    open(os.path.join(directory, formats.SUCCESS_FILE), "w").close()
    return directory
