"""The curated-directory layout (formats.py) written in one place: a Sample's tar members, its member layout,
its manifest row, and `write_curated_dir` for local directories written without Beam (tests, benchmarks,
the demo). `pipelines/sink.py` writes the same members and rows from a Beam job.

    Sample → sample_members(...) [(KEY.json, ...), (KEY.txt, ...), (KEY.jpg, ...)] → manifest_row(...)
    [Sample] → write_curated_dir(dir, samples) → dir/shards/*.tar, dir/manifest.parquet, dir/_SUCCESS
"""
from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq

from vlmloom.schemas import formats
from vlmloom.schemas.records import Sample
from vlmloom.schemas.tars import write_tar


def member_names(sample: Sample) -> list[str]:
    # KEY.txt is always written (empty without text) so that samples of a kind share one member layout.
    names = [f"{sample.key}.json", f"{sample.key}.txt"]
    return names + [formats.image_member_name(sample.key, i, image.format or "jpeg")
                    for i, image in enumerate(sample.images) if image.bytes is not None]


def sample_members(sample: Sample) -> list[tuple[str, bytes]]:
    """The tar members of one sample, in member_names order."""
    data = [sample.to_json().encode("utf-8"), (sample.training_text() or "").encode("utf-8")]
    data += [image.bytes for image in sample.images if image.bytes is not None]
    return list(zip(member_names(sample), data))


def member_layout(sample: Sample) -> str:
    """The member extensions of a sample, e.g. "json,txt,jpg" or "json,txt,jpg,1.png"."""
    return ",".join(name.split(".", 1)[1] for name in member_names(sample))


def manifest_row(sample: Sample, shard: str) -> dict:
    """The sample's row of manifest.parquet (formats.MANIFEST_SCHEMA); `shard` is the tar's file name."""
    return {
        "key": sample.key, "source": sample.source, "source_id": sample.source_id, "kind": sample.kind,
        "shard": shard, "layout": member_layout(sample), "num_images": len(sample.images),
        "width": sample.images[0].width if sample.images else 0,
        "height": sample.images[0].height if sample.images else 0,
        "text_chars": len(sample.training_text() or ""),
        "signals": json.dumps(sample.signals, sort_keys=True, default=str),
    }


def write_curated_dir(directory: str, samples: list[Sample], per_shard: int = 50) -> str:
    """Write `samples` as a finished curated directory, `per_shard` samples a tar in key order (local only)."""
    os.makedirs(os.path.join(directory, formats.SHARDS_DIR), exist_ok=True)
    samples = sorted(samples, key=lambda s: s.key)
    rows = []
    for shard_index, start in enumerate(range(0, len(samples), per_shard)):
        name = formats.shard_name(shard_index)
        chunk = samples[start:start + per_shard]
        write_tar(os.path.join(directory, formats.SHARDS_DIR, name), [m for s in chunk for m in sample_members(s)])
        rows += [manifest_row(s, name) for s in chunk]
    pq.write_table(pa.Table.from_pylist(rows, schema=formats.MANIFEST_SCHEMA),
                   os.path.join(directory, formats.MANIFEST_FILE), compression="zstd")
    open(os.path.join(directory, formats.SUCCESS_FILE), "w").close()
    return directory
