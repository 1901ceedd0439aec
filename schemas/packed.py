"""Packed-shard format: what `vlmloom pack` writes and the trainer reads (`vlmloom.packing.reader.PackedDataset`).

A packed directory::

    DIR/shards/00000.tar ...  webdataset (USTAR, members sorted per entry, mtime 0); one entry per packed
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
        KEY.json               {"sample_keys": [...], "sources": [...], "num_tokens": int}
    DIR/manifest.parquet      one row per packed sequence (PACKED_MANIFEST_SCHEMA), sorted by key
    DIR/rejected.parquet      samples that were not packed (records.REJECTION_SCHEMA, stage "pack")
    DIR/pack_report.json      fill efficiency, dropped by reason, histograms, recipe + hash, realised shares
    DIR/tokenizer/            the tokenizer the ids belong to (`AutoTokenizer.from_pretrained`)
    DIR/_SUCCESS              written last; readers refuse a directory without it

Rank layout: with `balance.world_size = W`, sequence p belongs to rank p % W and rank r's shards are the files
with index % W == r, so a reader with the same W gives every rank its own step-aligned stream.
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
