"""The curated-directory layout (formats.py) written in one place: a Sample's tar members, its member layout,
its manifest row, a key's bucket, a bucket's files (`bucket_files`), and `write_curated_dir` for local
directories written without Beam (tests, benchmarks, the demo). `pipelines/sink.py` writes the same buckets
from a Beam job.

    Sample → sample_members(...) [(KEY.json, ...), (KEY.txt, ...), (KEY.jpg, ...)] → manifest_row(...)
    key → key_bucket(key, N) → bucket_files(bucket, samples, rejections) → shards/bBBBBB-IIIII.tar ...,
        manifest/part-BBBBB.parquet, rejected/part-BBBBB.parquet
    [Sample] → write_curated_dir(dir, samples) → every bucket's files + dir/_SUCCESS

And the one reader of the layout (every tool goes through it: report, report.html, inspect, trace, pack), on
any filesystem (files.py: local by default, Beam's FileSystems from pipelines/):
    shard_paths(dir) / shard_path(dir, shard) → iter_shard_samples(path or file) → Sample (with image bytes)
    read_sample_json(dir, shard, key)          one sample's JSON, its images left unread
    part_paths(dir, MANIFEST | REJECTED) → iter_parts / rows_for_keys / read_rows / part_row_counts
    read_manifest(dir), read_rejections(dir), read_report(dir), is_finished(dir)
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
from typing import Any, BinaryIO, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from vlmloom.schemas import formats
from vlmloom.schemas.files import LOCAL_FILES, Files, read_json
from vlmloom.schemas.records import REJECTION_SCHEMA, RecordError, Rejection, Sample
from vlmloom.schemas.tars import iter_tar_groups, tar_bytes

MANIFEST, REJECTED = formats.MANIFEST_DIR, formats.REJECTED_DIR  # the directory's two tables
TABLE_SCHEMAS = {MANIFEST: formats.MANIFEST_SCHEMA, REJECTED: REJECTION_SCHEMA}


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
    yield manifest_part(bucket, rows)
    yield rejected_part(bucket, rejections)


def manifest_part(bucket: int, rows: Iterable[dict]) -> tuple[str, bytes]:
    rows = sorted(rows, key=lambda r: r["key"])
    return f"{formats.MANIFEST_DIR}/{formats.part_name(bucket)}", _parquet_bytes(rows, formats.MANIFEST_SCHEMA)


def rejected_part(bucket: int, rejections: Iterable[Rejection]) -> tuple[str, bytes]:
    rejected = sorted((dict(r.__dict__) for r in rejections), key=rejection_sort_key)
    return f"{formats.REJECTED_DIR}/{formats.part_name(bucket)}", _parquet_bytes(rejected, REJECTION_SCHEMA)


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
    make_local_dirs(directory)
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


def make_local_dirs(directory: str) -> None:
    """The sub-directories a local curated directory's files go into (object stores need none)."""
    for sub in (formats.SHARDS_DIR, MANIFEST, REJECTED):
        os.makedirs(os.path.join(directory, sub), exist_ok=True)


# --- reading ----------------------------------------------------------------------------------
def is_finished(directory: str, files: Files = LOCAL_FILES) -> bool:
    """Has the job that writes `directory` finished (its `_SUCCESS` written last)?"""
    return files.exists(files.join(directory, formats.SUCCESS_FILE))


def success_path(directory: str, files: Files = LOCAL_FILES) -> str:
    return files.join(directory, formats.SUCCESS_FILE)


def report_path(directory: str, files: Files = LOCAL_FILES) -> str:
    """DIR/report.json."""
    return files.join(directory, formats.REPORT_FILE)


def report_html_path(directory: str, files: Files = LOCAL_FILES) -> str:
    """DIR/report.html."""
    return files.join(directory, formats.REPORT_HTML_FILE)


def read_report(directory: str, files: Files = LOCAL_FILES) -> dict[str, Any] | None:
    """report.json of a curated directory, or None when it has none."""
    return read_json(report_path(directory, files), files)


def report_stats_dir(directory: str, files: Files = LOCAL_FILES) -> str:
    """Where a running job leaves each bucket's report aggregates (formats.REPORT_STATS_DIR, transient)."""
    return files.join(directory, formats.REPORT_STATS_DIR)


def report_stats_path(directory: str, bucket: int, files: Files = LOCAL_FILES) -> str:
    return files.join(report_stats_dir(directory, files), formats.report_stats_name(bucket))


def shard_path(directory: str, shard: str, files: Files = LOCAL_FILES) -> str:
    """The path of shard `shard` (a manifest row's `shard`, a file name)."""
    return files.join(directory, formats.SHARDS_DIR, shard)


def shard_paths(directory: str, files: Files = LOCAL_FILES) -> list[str]:
    """Every shard of the directory, in name (= bucket, then shard) order."""
    return _visible(files.glob(files.join(directory, formats.SHARDS_DIR, "*.tar")))


def bucket_shard_paths(directory: str, bucket: int, files: Files = LOCAL_FILES) -> list[str]:
    """The shards of one bucket, in shard order."""
    pattern = formats.curated_shard_name(bucket, 0).rsplit("-", 1)[0] + "-*.tar"
    return _visible(files.glob(files.join(directory, formats.SHARDS_DIR, pattern)))


def bucket_part_path(directory: str, table: str, bucket: int, files: Files = LOCAL_FILES) -> str:
    """The part of `table` (MANIFEST or REJECTED) that bucket `bucket` writes (every bucket writes one)."""
    return files.join(directory, table, formats.part_name(bucket))


def shard_label(shard: str) -> str:
    """How a shard is named to a person: its path relative to the directory."""
    return f"{formats.SHARDS_DIR}/{shard}"


def _visible(paths: list[str]) -> list[str]:
    # a writer's temporary (".NAME.tmp-...") or a marker ("_SUCCESS") is never part of a table
    return sorted(p for p in paths if not posixpath.basename(p).startswith((".", "_")))


def _json_or_span(tar, info) -> bytes | tuple[int, int]:
    """A member's bytes when it is the sample's JSON, else where its bytes lie in the (uncompressed) shard."""
    return tar.extractfile(info).read() if info.name.endswith(".json") else (info.offset_data, info.size)


def iter_shard_samples(shard: str | BinaryIO, spans: bool = False) -> Iterator[Sample]:
    """The samples of one shard (a path or an open binary file), in member order, with their image bytes:
    the inverse of `sample_members`. A shard that does not match its JSON raises RecordError naming the key.
    `spans` (a local shard path): images and videos are left where they lie in the shard (`ImageRef.span`), not
    read; whoever needs them reads them (`load_bytes`, checked against their sha256)."""
    name = shard if isinstance(shard, str) else getattr(shard, "name", "shard")
    if spans and not isinstance(shard, str):
        raise ValueError("iter_shard_samples(spans=True) takes a local shard path")
    for key, members in iter_tar_groups(shard, read=_json_or_span if spans else None):
        if "json" not in members:
            raise RecordError(f"record {key!r}: shard {os.path.basename(str(name))} has no {key}.json")
        images: dict[int, bytes] = {}
        videos: dict[int, bytes] = {}
        for ext, data in members.items():
            parts = ext.split(".")
            if ext in ("json", "txt"):
                continue
            if len(parts) == 2 and parts[0][:1] == "v" and parts[0][1:].isdigit():  # KEY.v0.mp4 (formats.py)
                videos[int(parts[0][1:])] = data
            elif len(parts) == 1:
                images[0] = data
            elif len(parts) == 2 and parts[0].isdigit():
                images[int(parts[0])] = data
        image_values, video_values = [images[i] for i in sorted(images)], [videos[i] for i in sorted(videos)]
        sample = Sample.from_json(members["json"].decode("utf-8"), None if spans else image_values,
                                  None if spans else video_values)
        if len(images) != len(sample.images):
            raise RecordError(f"record {key!r}: field 'images' lists {len(sample.images)}, shard holds {len(images)}")
        if spans:
            for ref, (offset, size) in zip([*sample.images, *sample.videos], [*image_values, *video_values]):
                ref.span = (name, offset, size)
        yield sample


def read_sample_json(directory: str, shard: str, key: str, files: Files = LOCAL_FILES) -> dict[str, Any] | None:
    """The Sample JSON of `key` from its shard (the manifest names it), no image bytes read; None if absent."""
    wanted = f"{key}.json"

    def read(tar, info):
        return tar.extractfile(info).read() if info.name == wanted else None

    with files.open(shard_path(directory, shard, files)) as fh:
        for member_key, members in iter_tar_groups(fh, read=read):
            if member_key == key and members.get("json"):
                return json.loads(members["json"].decode("utf-8"))
    return None


def part_paths(directory: str, table: str, files: Files = LOCAL_FILES) -> list[str]:
    """The parts of `table` (MANIFEST or REJECTED), in part (= bucket) order."""
    if table not in TABLE_SCHEMAS:
        raise ValueError(f"unknown curated table {table!r}: one of {sorted(TABLE_SCHEMAS)}")
    return _visible(files.glob(files.join(directory, table, "*.parquet")))


def read_part(path: str, columns: list[str] | None = None, files: Files = LOCAL_FILES) -> pa.Table:
    """One part as an Arrow table (`columns`: only these)."""
    with files.open(path) as fh:
        return pq.read_table(io.BytesIO(fh.read()), columns=columns)


def part_row_counts(directory: str, table: str, files: Files = LOCAL_FILES) -> tuple[int, int]:
    """(rows, parts) of `table`, from the Parquet footers alone (no row read)."""
    paths = part_paths(directory, table, files)
    rows = 0
    for path in paths:
        with files.open(path) as fh:
            rows += pq.ParquetFile(io.BytesIO(fh.read())).metadata.num_rows
    return rows, len(paths)


def iter_parts(directory: str, table: str, columns: list[str] | None = None,
               files: Files = LOCAL_FILES) -> Iterator[list[dict[str, Any]]]:
    """The rows of each part of `table`, one part at a time (a reader holds one bucket, never the corpus)."""
    for path in part_paths(directory, table, files):
        yield read_part(path, columns, files).to_pylist()


def rows_for_keys(directory: str, table: str, keys: set[str], columns: list[str] | None = None,
                  files: Files = LOCAL_FILES) -> list[dict[str, Any]]:
    """The rows of `table` whose key is in `keys`, reading only those keys' buckets' parts (a key's bucket is
    key_bucket of the key and the part count: every bucket writes its part). A directory with parts missing:
    every part is searched."""
    paths = part_paths(directory, table, files)
    names = [posixpath.basename(p) for p in paths]
    if names == [formats.part_name(b) for b in range(len(paths))]:
        paths = [paths[b] for b in sorted({key_bucket(k, len(paths)) for k in keys})]
    found = []
    for path in paths:
        found += [row for row in read_part(path, columns, files).to_pylist() if row["key"] in keys]
    return found


def read_rows(directory: str, table: str, files: Files = LOCAL_FILES) -> list[dict[str, Any]]:
    """Every row of `table` at once, in part order. For tools and tests on small outputs; the report and
    report.html stream (`iter_parts`) or use the job's aggregates."""
    tables = [read_part(p, None, files) for p in part_paths(directory, table, files)]
    return pa.concat_tables(tables or [TABLE_SCHEMAS[table].empty_table()]).to_pylist()


def read_manifest(directory: str, files: Files = LOCAL_FILES) -> list[dict[str, Any]]:
    """The kept samples' manifest rows (formats.MANIFEST_SCHEMA)."""
    return read_rows(directory, MANIFEST, files)


def read_rejections(directory: str, files: Files = LOCAL_FILES) -> list[dict[str, Any]]:
    """Every dropped record's row (records.REJECTION_SCHEMA)."""
    return read_rows(directory, REJECTED, files)
