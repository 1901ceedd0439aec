"""Packed-shard encoding (schemas/packed.py): built samples → one packed sequence → tar members, and back.

Writes are deterministic (members sorted per entry; the tar writer of schemas/tars.py) so the same plan
gives byte-identical shards; each shard is written to a temporary name and renamed into place.
"""
from __future__ import annotations

import io
import json
import os
from typing import Iterator

import numpy as np

from vlmloom.schemas.formats import IMAGE_EXTENSIONS
from vlmloom.schemas.packed import IGNORE_INDEX, POSITION_ROWS, PackedRecord
from vlmloom.schemas.tars import TarWriter, iter_tar_groups

from .builder import BuiltSample

ARRAY_FIELDS = ("input_ids", "labels", "position_ids", "seq_lens", "image_grid_thw")
VIDEO_ARRAY_FIELDS = ("video_grid_thw", "video_frame_indices")  # written only for entries that hold videos


def assemble(samples: list[BuiltSample], seq_len: int, pad_id: int) -> dict:
    """Concatenate samples into one row of exactly `seq_len` tokens (a PackedRecord's dict; the key is given
    when the row is written).

    Padding: input_ids = pad_id, labels = -100, and every position row counts 0, 1, … over the padding,
    so the padding forms its own block that neither attends to nor is attended by the samples.
    """
    n = sum(len(s) for s in samples)
    if n > seq_len:
        raise ValueError(f"{n} tokens do not fit in seq_len {seq_len}")
    pad = seq_len - n
    input_ids = np.full(seq_len, pad_id, np.int32)
    labels = np.full(seq_len, IGNORE_INDEX, np.int32)
    position_ids = np.empty((POSITION_ROWS, seq_len), np.int32)
    at = 0
    for s in samples:
        k = len(s)
        input_ids[at:at + k] = s.input_ids
        labels[at:at + k] = s.labels
        position_ids[0, at:at + k] = np.arange(k, dtype=np.int32)
        position_ids[1:, at:at + k] = s.rope_position_ids
        at += k
    if pad:
        position_ids[:, at:] = np.arange(pad, dtype=np.int32)
    return PackedRecord(
        key="", input_ids=input_ids, labels=labels, position_ids=position_ids,
        seq_lens=np.array([len(s) for s in samples], np.int32),
        image_grid_thw=np.concatenate([s.image_grid_thw for s in samples]).astype(np.int32).reshape(-1, 3),
        images=[b for s in samples for b in s.images], image_formats=[f for s in samples for f in s.image_formats],
        sample_keys=[s.key for s in samples], sources=[s.source for s in samples],
        video_grid_thw=np.concatenate([s.video_grid_thw for s in samples]).astype(np.int32).reshape(-1, 3),
        video_frame_indices=np.concatenate([s.video_frame_indices for s in samples]).astype(np.int32),
        videos=[v for s in samples for v in s.videos]).validate().to_dict()


def entry_members(key: str, seq: dict) -> list[tuple[str, bytes]]:
    members = [(f"{key}.{name}.npy", _npy(seq[name])) for name in ARRAY_FIELDS]
    for i, (data, fmt) in enumerate(zip(seq["images"], seq["image_formats"])):
        members.append((f"{key}.img_{i:03d}.{IMAGE_EXTENSIONS.get(fmt, fmt or 'bin')}", data))
    if seq.get("videos"):  # entries without videos keep the members they always had
        members += [(f"{key}.{name}.npy", _npy(seq[name])) for name in VIDEO_ARRAY_FIELDS]
        members += [(f"{key}.vid_{i:03d}.bin", data) for i, data in enumerate(seq["videos"])]
    meta = {"sample_keys": seq["sample_keys"], "sources": seq["sources"],
            "num_tokens": int(seq["seq_lens"].sum())}
    members.append((f"{key}.json", json.dumps(meta, sort_keys=True).encode()))
    return sorted(members)


def decode_entry(key: str, members: dict[str, bytes]) -> dict:
    """Tar members of one entry ({extension: bytes}) → the reader's dict."""
    arrays = {name: np.load(io.BytesIO(members[f"{name}.npy"]), allow_pickle=False) for name in ARRAY_FIELDS}
    image_names = sorted((ext for ext in members if ext.startswith("img_")), key=lambda e: int(e[4:].split(".")[0]))
    arrays.update({name: np.load(io.BytesIO(members[f"{name}.npy"]), allow_pickle=False)
                   for name in VIDEO_ARRAY_FIELDS if f"{name}.npy" in members})
    video_names = sorted((ext for ext in members if ext.startswith("vid_")), key=lambda e: int(e[4:].split(".")[0]))
    return PackedRecord(key=key, images=[members[ext] for ext in image_names],
                        videos=[members[ext] for ext in video_names], **arrays).to_dict()


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


class ShardWriter:
    """Appends entries to one tar (schemas/tars.py's writer); `close()` renames `path.tmp` to `path`."""

    def __init__(self, path: str):
        self.path = path
        self.count = 0
        self._file = open(path + ".tmp", "wb")
        self._tar = TarWriter(self._file)

    def write(self, members: list[tuple[str, bytes]]) -> None:
        self._tar.add(members)
        self.count += 1

    def close(self) -> None:
        self._tar.close()
        self._file.close()
        os.replace(self.path + ".tmp", self.path)


def iter_tar_entries(path: str, skip: int = 0) -> Iterator[tuple[int, str, dict[str, bytes]]]:
    """(entry index, key, {extension: bytes}) per entry; skips `skip` entries without reading their payloads."""
    for index, (key, members) in enumerate(iter_tar_groups(path, skip=skip), start=skip):
        yield index, key, members
