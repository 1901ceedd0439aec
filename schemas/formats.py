"""On-disk formats: the curated-output directory and the packed-shard directory, with their versions.

Curated output (`vlmloom curate ... --output DIR`)::

    DIR/shards/b00012-00003.tar ...
                               webdataset; per sample: KEY.json (the Sample without image bytes),
                               KEY.txt (training text, empty if none), KEY.jpg / KEY.png ... (image 0,
                               original bytes), KEY.1.jpg ... (further images); members sorted by key,
                               mtime 0; each shard holds samples of one member layout (manifest `layout`);
                               members, manifest rows and the bucket plan: curated.py, tars: tars.py
    DIR/manifest/part-00012.parquet ...
                               one row per kept sample (MANIFEST_SCHEMA), one part per bucket, rows sorted
                               by key; every bucket writes its part, empty or not
    DIR/rejected/part-00012.parquet ...
                               one row per dropped record (records.REJECTION_SCHEMA; `fields`: structured
                               values), one part per bucket of the record's key
    DIR/report.json            funnel per stage, counters, config, format version
    DIR/report.html            the same as one self-contained page (charts, examples, thumbnails)
    DIR/_SUCCESS               written last; readers refuse a directory without it

Buckets: a key's bucket is a range of a stable hash of the key alone (curated.key_bucket), so any worker
places any sample without a global plan. Inside a bucket, samples are ordered by (member layout, key)
and cut into shards on count, bytes or a layout change; shard `bBBBBB-IIIII.tar` is shard IIIII of bucket
BBBBB. The parts of `manifest/` and of `rejected/` each read as one table:

    pyarrow:   pq.read_table("DIR/manifest")                  (or pyarrow.dataset.dataset("DIR/manifest"))
    datasets:  load_dataset("parquet", data_files="DIR/rejected/*.parquet", split="train", streaming=True)
               (any row count), or without streaming=True for a table of at least one row: HF's non-streaming
               loader refuses every split of 0 rows ("Instruction "train" corresponds to no data", its rule
               whatever the files hold), e.g. rejected/ of a job that dropped nothing
    DuckDB:    SELECT * FROM read_parquet('DIR/manifest/*.parquet')
A part with no rows holds the schema and no row group (HF `datasets` refuses a row group of 0 rows), so every
reader above sees the columns of an empty table (tests/test_curate.py loads an all-kept output with each).

Version history:
    1  one manifest.parquet and rejected/rejected.parquet, shards 00000.tar ... planned from all keys at once
    2  hash-range buckets: shards bBBBBB-IIIII.tar, manifest/part-BBBBB.parquet, rejected/part-BBBBB.parquet
       (no step of the writer holds the whole corpus' keys)

Packed output (`vlmloom pack ... --output DIR`): see `packed.py`.

The names below are the layouts' own: only curated.py (the curated directory's one reader and writer) and
packed.py (the packed directory's) use them; every other module goes through those two
(tests/test_boundaries.py).
"""
from __future__ import annotations

import pyarrow as pa

CURATED_FORMAT_VERSION = 2
PACKED_FORMAT_VERSION = 1

SHARDS_DIR = "shards"
MANIFEST_FILE = "manifest.parquet"  # packed output (packed.py); curated output has MANIFEST_DIR
MANIFEST_DIR = "manifest"
REJECTED_DIR = "rejected"
REPORT_FILE = "report.json"
REPORT_HTML_FILE = "report.html"
SUCCESS_FILE = "_SUCCESS"
# Transient, not part of the format: each bucket's report aggregates (pipelines.report.ReportStats), written by
# the job beside the bucket's parts, merged into report.json by the driver and removed before _SUCCESS.
REPORT_STATS_DIR = ".report_stats"

IMAGE_EXTENSIONS = {"jpeg": "jpg", "png": "png", "webp": "webp", "gif": "gif", "bmp": "bmp", "tiff": "tiff"}

MANIFEST_SCHEMA = pa.schema([
    ("key", pa.string()), ("source", pa.string()), ("source_id", pa.string()), ("kind", pa.string()),
    ("shard", pa.string()),  # shard file name relative to DIR/shards
    ("layout", pa.string()),  # member extensions, e.g. "json,txt,jpg"; every shard holds one layout
    ("num_images", pa.int32()), ("width", pa.int32()), ("height", pa.int32()),
    ("text_chars", pa.int32()),
    ("signals", pa.string()),  # JSON, the same object as in the sample
])


def shard_name(index: int) -> str:
    """A packed shard's file name (packed.py)."""
    return f"{index:05d}.tar"


def curated_shard_name(bucket: int, index: int) -> str:
    """Shard `index` of `bucket` in a curated directory; names sort in bucket, then shard order."""
    return f"b{bucket:05d}-{index:05d}.tar"


def part_name(bucket: int) -> str:
    """The manifest/ and rejected/ part of `bucket`."""
    return f"part-{bucket:05d}.parquet"


def report_stats_name(bucket: int) -> str:
    """`bucket`'s file under REPORT_STATS_DIR."""
    return f"part-{bucket:05d}.json"


def image_member_name(key: str, index: int, fmt: str) -> str:
    ext = IMAGE_EXTENSIONS.get(fmt.lower(), fmt.lower() or "bin")
    return f"{key}.{ext}" if index == 0 else f"{key}.{index}.{ext}"


def video_member_name(key: str, index: int, fmt: str) -> str:
    """KEY.v0.mp4, KEY.v1.webm, ...: a video's original bytes (the `v` keeps them apart from image members)."""
    return f"{key}.v{index}.{fmt.lower() or 'bin'}"


def shard_arrow_schema(layout: str) -> pa.Schema:
    """The columns a webdataset reader sees for a shard of `layout` (manifest `layout`, e.g. "json,txt,jpg").

    For HF `datasets`, which otherwise guesses types from the first few samples (and fails on a field
    that is null there and set later):
        features = datasets.Features.from_arrow_schema(shard_arrow_schema(layout))
        for ext in layout.split(",")[2:]: features[ext] = datasets.Image()
        load_dataset("webdataset", data_files=..., features=features)
    """
    from vlmloom.schemas.records import SAMPLE_SCHEMA

    fields = [pa.field("__key__", pa.string()), pa.field("__url__", pa.string())]
    for ext in layout.split(","):
        if ext == "json":
            fields.append(pa.field("json", pa.struct(list(SAMPLE_SCHEMA))))
        elif ext == "txt":
            fields.append(pa.field("txt", pa.string()))
        else:
            fields.append(pa.field(ext, pa.binary()))
    return pa.schema(fields)
