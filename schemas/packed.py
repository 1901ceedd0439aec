"""Packed-shard format: what `vlmloom pack` writes and the trainer reads.

A packed directory::

    DIR/shards/00000.tar ...  webdataset; one entry per packed sequence, key f"{index:09d}":
        KEY.input_ids.npy      int32 [L]      token ids, padded with pad_id after the last sample
        KEY.labels.npy         int32 [L]      -100 where no loss (prompt, image tokens, padding)
        KEY.position_ids.npy   int32 [4, L]   row 0: text positions restarting at 0 per sample;
                                              rows 1-3: GLM-4.1V M-RoPE (t, h, w) ids per sample
                                              (what Glm4vModel.get_rope_index gives for it alone)
        KEY.seq_lens.npy       int32 [n]      lengths of the n samples, in order; sum <= L
        KEY.image_grid_thw.npy int32 [m, 3]   (t, h, w) patch grid per image, in token order
        KEY.img_000.jpg ...                   encoded image bytes, in token order (m members)
        KEY.json               {"sample_keys": [...], "sources": [...], "num_tokens": int}
    DIR/manifest.parquet      one row per packed sequence (PACKED_MANIFEST_SCHEMA)
    DIR/pack_report.json      fill efficiency, dropped by reason, histograms, recipe + hash, shares
    DIR/_SUCCESS
"""
from __future__ import annotations

import pyarrow as pa

IGNORE_INDEX = -100
POSITION_ROWS = 4  # [text, t, h, w]

PACKED_MANIFEST_SCHEMA = pa.schema([
    ("key", pa.string()), ("shard", pa.string()), ("num_samples", pa.int32()), ("num_tokens", pa.int32()),
    ("num_label_tokens", pa.int32()), ("num_images", pa.int32()), ("attention_cost", pa.int64()),
    ("sample_keys", pa.list_(pa.string())), ("sources", pa.list_(pa.string())),
])
