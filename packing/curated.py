"""Read a curated directory (schemas/formats.py) back into `Sample`s, streaming its tars in shard order.

DIR/shards/*.tar → Iterator[Sample] (with image bytes). A directory without `_SUCCESS` is refused:
it is either still being written or its job failed.
"""
from __future__ import annotations

import glob
import os
from typing import Iterator

from vlmloom.schemas.formats import SHARDS_DIR, SUCCESS_FILE
from vlmloom.schemas.records import RecordError, Sample
from vlmloom.schemas.tars import iter_tar_groups


class CuratedDirError(ValueError):
    pass


def curated_shards(directory: str) -> list[str]:
    if not os.path.isdir(directory):
        raise CuratedDirError(f"{directory}: not a directory")
    if not os.path.exists(os.path.join(directory, SUCCESS_FILE)):
        raise CuratedDirError(f"{directory}: no {SUCCESS_FILE}; the curate job did not finish (re-run it)")
    return sorted(glob.glob(os.path.join(directory, SHARDS_DIR, "*.tar")))


def iter_curated_samples(directory: str) -> Iterator[Sample]:
    """Every sample of a curated directory, in shard then member order."""
    for shard in curated_shards(directory):
        yield from iter_shard_samples(shard)


def iter_shard_samples(path: str) -> Iterator[Sample]:
    for key, members in iter_tar_groups(path):
        if "json" not in members:
            raise RecordError(f"record {key!r}: shard {os.path.basename(path)} has no {key}.json")
        images: dict[int, bytes] = {}
        videos: dict[int, bytes] = {}
        for ext, data in members.items():
            parts = ext.split(".")
            if ext in ("json", "txt"):
                continue
            if len(parts) == 2 and parts[0][:1] == "v" and parts[0][1:].isdigit():  # KEY.v0.mp4 (formats.py)
                videos[int(parts[0][1:])] = data
                continue
            if len(parts) == 1:
                images[0] = data
            elif len(parts) == 2 and parts[0].isdigit():
                images[int(parts[0])] = data
        sample = Sample.from_json(members["json"].decode("utf-8"), [images[i] for i in sorted(images)],
                                  [videos[i] for i in sorted(videos)])
        if len(images) != len(sample.images):
            raise RecordError(f"record {key!r}: field 'images' lists {len(sample.images)}, shard holds {len(images)}")
        yield sample
