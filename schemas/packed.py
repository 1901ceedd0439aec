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
    DIR/manifest.parquet      one row per packed sequence (PACKED_MANIFEST_SCHEMA), sorted by key
    DIR/rejected.parquet      samples that were not packed (records.REJECTION_SCHEMA, stage "pack")
    DIR/pack_report.json      fill efficiency, dropped by reason, histograms, recipe + hash, realised shares
    DIR/pack_report.html      the same as charts, self-contained (packing/report_html.py)
    DIR/tokenizer/            the tokenizer the ids belong to (`AutoTokenizer.from_pretrained`)
    DIR/_SUCCESS              written last; readers refuse a directory without it

Rank layout: with `balance.world_size = W`, sequence p belongs to rank p % W and rank r's shards are the files
with index % W == r, so a reader with the same W gives every rank its own step-aligned stream.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from vlmloom.schemas.records import RecordError

IGNORE_INDEX = -100
REJECTED_FILE = "rejected.parquet"  # samples pack left out (records.REJECTION_SCHEMA, stage "pack")
POSITION_ROWS = 4  # [text, t, h, w]

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
