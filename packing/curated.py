"""Read a curated directory (schemas/formats.py) back into `Sample`s, streaming its tars in shard order, through
the layout's one reader (schemas/curated.py).

DIR/shards/*.tar → Iterator[Sample] (with image bytes). A directory without `_SUCCESS` is refused:
it is either still being written or its job failed.
"""
from __future__ import annotations

import os
from typing import Iterator

from vlmloom.schemas import curated
from vlmloom.schemas.curated import iter_shard_samples
from vlmloom.schemas.records import Sample

__all__ = ["CuratedDirError", "curated_shards", "iter_curated_samples", "iter_shard_samples"]


class CuratedDirError(ValueError):
    pass


def curated_shards(directory: str) -> list[str]:
    if not os.path.isdir(directory):
        raise CuratedDirError(f"{directory}: not a directory")
    if not curated.is_finished(directory):
        raise CuratedDirError(f"{directory}: no {os.path.basename(curated.success_path(directory))}; "
                              "the curate job did not finish (re-run it)")
    return curated.shard_paths(directory)


def iter_curated_samples(directory: str) -> Iterator[Sample]:
    """Every sample of a curated directory, in shard then member order."""
    for shard in curated_shards(directory):
        yield from iter_shard_samples(shard)
