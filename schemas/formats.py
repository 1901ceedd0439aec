"""On-disk formats: the curated-output directory and the packed-shard directory, with their versions.

Curated output (`vlmloom curate ... --output DIR`)::

    DIR/shards/00000.tar ...   webdataset; per sample: KEY.json (the Sample without image bytes),
                               KEY.txt (training text, empty if none), KEY.jpg / KEY.png ... (image 0,
                               original bytes), KEY.1.jpg ... (further images); members sorted by key,
                               mtime 0; each shard holds samples of one member layout (manifest `layout`);
                               members and manifest rows: curated.py, tars: tars.py
    DIR/manifest.parquet       one row per kept sample (MANIFEST_SCHEMA)
    DIR/rejected/*.parquet     one row per dropped record (records.REJECTION_SCHEMA; `fields`: structured values)
    DIR/report.json            funnel per stage, counters, config, format version
    DIR/_SUCCESS               written last; readers refuse a directory without it

Packed output (`vlmloom pack ... --output DIR`): see `packed.py`.
"""
from __future__ import annotations

import pyarrow as pa

CURATED_FORMAT_VERSION = 1
PACKED_FORMAT_VERSION = 1

SHARDS_DIR = "shards"
MANIFEST_FILE = "manifest.parquet"
REJECTED_DIR = "rejected"
REPORT_FILE = "report.json"
REPORT_HTML_FILE = "report.html"
SUCCESS_FILE = "_SUCCESS"

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
    return f"{index:05d}.tar"


def image_member_name(key: str, index: int, fmt: str) -> str:
    ext = IMAGE_EXTENSIONS.get(fmt.lower(), fmt.lower() or "bin")
    return f"{key}.{ext}" if index == 0 else f"{key}.{index}.{ext}"


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
