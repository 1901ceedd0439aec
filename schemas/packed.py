"""Packed-shard format: what `vlmloom pack` writes and the trainer reads (`vlmloom.packing.reader.PackedDataset`).

A packed directory::

    DIR/shards/00000.tar ...  webdataset (schemas/tars.py writer, members sorted per entry); one entry per packed
                              sequence, key f"{index:09d}" (index = position in the written order):
        KEY.input_ids.npy      int32 [L]      token ids; after the last sample, pad_id (= <|endoftext|>)
        KEY.labels.npy         int32 [L]      = input_ids where trained, -100 elsewhere (prompt, image tokens,
                                              [gMASK]<sop>, padding). NOT shifted: the model shifts by one.
        KEY.position_ids.npy   int32 [4, L]   row 0: text positions restarting at 0 per sample;
                                              rows 1-3: GLM-4.1V M-RoPE (t, h, w) ids per sample
                                              (what Glm4vModel.get_rope_index gives for it alone);
                                              padding: every row counts 0, 1, … (its own block)
        KEY.seq_lens.npy       int32 [n]      lengths of the n samples, in order; sum <= L (padding excluded)
        KEY.image_grid_thw.npy int32 [m, 3]   (t, h, w) patch grid per image, in token order
        KEY.img_000.jpg ...                   encoded image bytes, in token order (m members; .png etc. as stored)
        KEY.video_grid_thw.npy int32 [v, 3]   (t frame pairs, h, w) per video, in token order   } only in entries
        KEY.video_frame_indices.npy int32 [Σ2t] each video's sampled frame indices, concatenated } with videos
        KEY.vid_000.bin ...                   the videos' encoded bytes, in token order                }
        KEY.json               {"sample_keys": [...], "sources": [...], "num_tokens": int}
                              (a long document split into parts, packing/split.py: DOC#p0, DOC#p1, … = part_key)
    DIR/manifest.parquet      one row per packed sequence (PACKED_MANIFEST_SCHEMA), sorted by key
    DIR/rejected.parquet      samples that were not packed (records.REJECTION_SCHEMA, stage "pack")
    DIR/pack_report.json      fill efficiency, dropped by reason, histograms, recipe + hash, realised shares
    DIR/pack_report.html      the same as charts, self-contained (packing/report_html.py)
    DIR/tokenizer/            the tokenizer the ids belong to (`AutoTokenizer.from_pretrained`)
    DIR/_SUCCESS              written last; readers refuse a directory without it

Rank layout: with `balance.world_size = W`, sequence p belongs to rank p % W and rank r's shards are the files
with index % W == r, so a reader with the same W gives every rank its own step-aligned stream.

The paths of this layout are composed here only (`packing/pack.py` writes through them; `PackedDataset`,
`vlmloom trace` and `vlmloom inspect` read through them), on any filesystem (files.py):
    shards_dir(dir), shard_path(dir, name), shard_paths(dir), manifest_path(dir), rejected_path(dir),
    report_path(dir), report_html_path(dir), tokenizer_dir(dir), success_path(dir), is_finished(dir)
    read_manifest(dir) → Arrow table; read_rejections(dir) → rows; read_report(dir) → dict | None
    entry_members(dir, shard, index, key, extensions) → the members of one packed entry
"""
from __future__ import annotations

import dataclasses
import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vlmloom.schemas import formats
from vlmloom.schemas.files import LOCAL_FILES, Files, read_json
from vlmloom.schemas.records import RecordError
from vlmloom.schemas.tars import iter_tar_groups

IGNORE_INDEX = -100
REJECTED_FILE = "rejected.parquet"  # samples pack left out (records.REJECTION_SCHEMA, stage "pack")
REPORT_FILE = "pack_report.json"
REPORT_HTML_FILE = "pack_report.html"  # charts of pack_report.json (packing/report_html.py)
TOKENIZER_DIR = "tokenizer"  # the tokenizer the ids belong to, as the report's "tokenizer.dir" names it
POSITION_ROWS = 4  # [text, t, h, w]

PART_SEPARATOR = "#p"  # a split document's part i is packed as f"{key}#p{i}"; curated keys hold no "#" (make_key)


def part_key(key: str, index: int) -> str:
    """The packed sample key of part `index` of the document `key` (packing/split.py)."""
    return f"{key}{PART_SEPARATOR}{index}"


def document_key(key: str) -> str:
    """The curated key a packed sample key belongs to: a part's document, else the key itself."""
    head, sep, tail = key.rpartition(PART_SEPARATOR)
    return head if sep and head and tail.isdigit() else key


PACKED_MANIFEST_SCHEMA = pa.schema([
    ("key", pa.string()), ("shard", pa.string()), ("num_samples", pa.int32()), ("num_tokens", pa.int32()),
    ("num_label_tokens", pa.int32()), ("num_images", pa.int32()), ("attention_cost", pa.int64()),
    ("sample_keys", pa.list_(pa.string())), ("sources", pa.list_(pa.string())),
])


@dataclass
class PackedRecord:
    """One packed sequence: what the packer assembles, the shard reader decodes and the trainer's collator
    takes (as `to_dict()`, the dict `PackedDataset` yields). Arrays as in the member table above."""
    key: str
    input_ids: np.ndarray  # int32 [L]
    labels: np.ndarray | None  # int32 [L]; None: pre-training records whose labels the collator derives
    position_ids: np.ndarray  # int32 [4, L]
    seq_lens: np.ndarray  # int32 [n]
    image_grid_thw: np.ndarray  # int32 [m, 3]
    images: list[bytes] = field(default_factory=list)  # m encoded images, in token order
    image_formats: list[str] = field(default_factory=list)  # their formats, when known (the writer needs them)
    sample_keys: list[str] = field(default_factory=list)  # the packed samples' keys, when known
    sources: list[str] = field(default_factory=list)  # their sources, when known
    # videos (packing/video.py): grids, sampled frame indices (2t per video, concatenated) and encoded bytes
    video_grid_thw: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int32))
    video_frame_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    videos: list[bytes] = field(default_factory=list)

    def validate(self) -> "PackedRecord":
        """Shapes agree with each other; errors name the record key and the field."""
        n = len(self.input_ids)
        checks = [
            ("labels", self.labels is None or self.labels.shape == (n,), f"shape (L,) = ({n},)"),
            ("position_ids", self.position_ids.shape == (POSITION_ROWS, n), f"shape ({POSITION_ROWS}, {n})"),
            ("seq_lens", int(self.seq_lens.sum()) <= n, f"a sum <= L = {n}"),
            ("image_grid_thw", self.image_grid_thw.reshape(-1, 3).shape[0] == len(self.images),
             f"one (t, h, w) row per image ({len(self.images)})"),
            ("video_grid_thw", self.video_grid_thw.reshape(-1, 3).shape[0] == len(self.videos)
             and len(self.video_frame_indices) == 2 * int(self.video_grid_thw.reshape(-1, 3)[:, 0].sum()),
             f"one (t, h, w) row per video ({len(self.videos)}) and 2t frame indices each"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise RecordError(f"packed record {self.key!r}: field {name!r} must have {expected}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


# --- the directory layout -----------------------------------------------------------------------
def shards_dir(directory: str, files: Files = LOCAL_FILES) -> str:
    return files.join(directory, formats.SHARDS_DIR)


def shard_name(index: int) -> str:
    """The file name of packed shard `index`."""
    return formats.shard_name(index)


def shard_path(directory: str, shard: str, files: Files = LOCAL_FILES) -> str:
    """The path of shard `shard` (a manifest row's `shard`, a file name)."""
    return files.join(directory, formats.SHARDS_DIR, shard)


def shard_paths(directory: str, files: Files = LOCAL_FILES) -> list[str]:
    """Every shard of the directory, in index order."""
    return files.glob(files.join(directory, formats.SHARDS_DIR, "*.tar"))


def manifest_path(directory: str, files: Files = LOCAL_FILES) -> str:
    return files.join(directory, formats.MANIFEST_FILE)


def rejected_path(directory: str, files: Files = LOCAL_FILES) -> str:
    return files.join(directory, REJECTED_FILE)


def report_path(directory: str, files: Files = LOCAL_FILES) -> str:
    return files.join(directory, REPORT_FILE)


def report_html_path(directory: str, files: Files = LOCAL_FILES) -> str:
    return files.join(directory, REPORT_HTML_FILE)


def tokenizer_dir(directory: str, files: Files = LOCAL_FILES) -> str:
    return files.join(directory, TOKENIZER_DIR)


def success_path(directory: str, files: Files = LOCAL_FILES) -> str:
    return files.join(directory, formats.SUCCESS_FILE)


def is_finished(directory: str, files: Files = LOCAL_FILES) -> bool:
    """Has `vlmloom pack` finished writing `directory` (its `_SUCCESS` written last)?"""
    return files.exists(success_path(directory, files))


# --- reading ----------------------------------------------------------------------------------
def _read_parquet(path: str, files: Files) -> pa.Table:
    with files.open(path) as fh:
        return pq.read_table(io.BytesIO(fh.read()))


def read_manifest(directory: str, files: Files = LOCAL_FILES) -> pa.Table:
    """manifest.parquet (PACKED_MANIFEST_SCHEMA) as an Arrow table, one row per packed sequence."""
    return _read_parquet(manifest_path(directory, files), files)


def read_rejections(directory: str, files: Files = LOCAL_FILES) -> list[dict[str, Any]]:
    """The samples pack left out (records.REJECTION_SCHEMA rows); [] for a directory without the table."""
    path = rejected_path(directory, files)
    return _read_parquet(path, files).to_pylist() if files.exists(path) else []


def read_report(directory: str, files: Files = LOCAL_FILES) -> dict[str, Any] | None:
    """pack_report.json, or None when the directory has none."""
    return read_json(report_path(directory, files), files)


def entry_members(directory: str, shard: str, index: int, key: str, extensions: tuple[str, ...],
                  files: Files = LOCAL_FILES) -> dict[str, bytes]:
    """The members `extensions` (e.g. ("labels.npy", "seq_lens.npy")) of entry `index` of `shard`, whose key the
    manifest says is `key`; the other members and entries are passed over unread. Raises RecordError when the
    shard disagrees with the manifest (the directory was changed after `vlmloom pack` wrote it)."""
    suffixes = tuple(f".{ext}" for ext in extensions)

    def read(tar, info):
        return tar.extractfile(info).read() if info.name.endswith(suffixes) else None

    with files.open(shard_path(directory, shard, files)) as fh:
        for entry_key, members in iter_tar_groups(fh, skip=index, read=read):
            if entry_key != key:
                raise RecordError(f"{shard}: entry {index} is {entry_key!r}, the manifest says {key!r}; "
                                  "the packed directory was changed after `vlmloom pack` wrote it")
            return {ext: data for ext, data in members.items() if data is not None}
    raise RecordError(f"{shard}: no entry {index}; the packed directory is incomplete")
