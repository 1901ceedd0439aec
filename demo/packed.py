"""Synthetic packed sequences in the packed-shard contract, for tests and benchmarks (no tokenizer needed).

`make_sample(...)` → one sample (token ids with image placeholders, labels, 3D positions from transformers'
own `Glm4vModel.get_rope_index`, encoded images); `pack_samples(samples, seq_len)` → one packed record, the
dict `PackedDataset` yields; `pad_sample(sample, seq_len)` → the same sample alone, padded (the unpacked baseline).
"""
from __future__ import annotations

import io
import types
from typing import Any

import numpy as np
import torch

from vlmloom.schemas.packed import IGNORE_INDEX, PackedRecord
from vlmloom.trainer.data import default_image_processor


def image_grid(image_bytes: bytes, processor: Any = None) -> np.ndarray:
    """(t, h, w) patch grid that `Glm4vImageProcessorPil` gives this encoded image."""
    from PIL import Image

    processor = processor or default_image_processor()
    with Image.open(io.BytesIO(image_bytes)) as im:
        out = processor(images=[im.convert("RGB")], return_tensors="np")
    return np.asarray(out["image_grid_thw"][0], dtype=np.int32)


def random_png(rng: np.random.Generator, width: int, height: int) -> bytes:
    from PIL import Image

    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def rope_index(config: Any, input_ids: np.ndarray, image_grid_thw: np.ndarray) -> np.ndarray:
    """(3, L) M-RoPE positions of one sample, computed by transformers' `Glm4vModel.get_rope_index`."""
    from transformers.models.glm4v.modeling_glm4v import Glm4vModel

    # get_rope_index reads only `config` and `get_vision_position_ids` (which ignores self) from the model.
    shim = types.SimpleNamespace(config=config)
    shim.get_vision_position_ids = types.MethodType(Glm4vModel.get_vision_position_ids, shim)
    ids = torch.as_tensor(input_ids, dtype=torch.long)[None]
    mm_types = (ids == config.image_token_id).int()
    grid = torch.as_tensor(image_grid_thw, dtype=torch.long) if len(image_grid_thw) else None
    positions, _ = Glm4vModel.get_rope_index(shim, ids, mm_types, image_grid_thw=grid)
    return positions[:, 0].numpy().astype(np.int32)


def make_sample(config: Any, rng: np.random.Generator, *, text_tokens: int, image_sizes: list[tuple[int, int]] = (),
                prompt_tokens: int = 0, key: str = "", processor: Any = None) -> dict[str, Any]:
    """One sample: [image blocks] + text; labels on the text after the first `prompt_tokens` tokens.

    Text ids are drawn below the special-token range of `config`.
    """
    low_special = min(config.image_token_id, config.image_start_token_id, config.image_end_token_id,
                      config.video_token_id, config.video_start_token_id, config.video_end_token_id)
    merge = config.vision_config.spatial_merge_size ** 2
    ids: list[int] = []
    labels: list[int] = []
    images: list[bytes] = []
    grids: list[np.ndarray] = []
    for width, height in image_sizes:
        data = random_png(rng, width, height)
        grid = image_grid(data, processor)
        n = int(np.prod(grid)) // merge
        block = [config.image_start_token_id] + [config.image_token_id] * n + [config.image_end_token_id]
        ids += block
        labels += [IGNORE_INDEX] * len(block)
        images.append(data)
        grids.append(grid)
    text = rng.integers(1, low_special, size=text_tokens).tolist()
    ids += text
    labels += [IGNORE_INDEX if i < prompt_tokens else t for i, t in enumerate(text)]
    input_ids = np.asarray(ids, dtype=np.int32)
    grid_arr = np.stack(grids).astype(np.int32) if grids else np.zeros((0, 3), np.int32)
    positions = rope_index(config, input_ids, grid_arr)
    position_ids = np.concatenate([np.arange(len(ids), dtype=np.int32)[None], positions], axis=0)
    return {"key": key, "input_ids": input_ids, "labels": np.asarray(labels, dtype=np.int32),
            "position_ids": position_ids, "seq_lens": np.asarray([len(ids)], dtype=np.int32),
            "image_grid_thw": grid_arr, "images": images}


def pack_samples(samples: list[dict[str, Any]], seq_len: int, *, pad_id: int = 0, key: str = "") -> dict[str, Any]:
    """Concatenate samples into one packed record of length `seq_len`, padded as `vlmloom.packing.shards.assemble`
    pads: pad_id, label -100, and every position row counting 0, 1, … over the padding (its own block)."""
    total = sum(len(s["input_ids"]) for s in samples)
    if total > seq_len:
        raise ValueError(f"samples hold {total} tokens > seq_len {seq_len}")
    pad = seq_len - total
    input_ids = np.concatenate([s["input_ids"] for s in samples] + [np.full(pad, pad_id, np.int32)])
    labels = np.concatenate([s["labels"] for s in samples] + [np.full(pad, IGNORE_INDEX, np.int32)])
    pad_positions = np.tile(np.arange(pad, dtype=np.int32), (4, 1))
    position_ids = np.concatenate([s["position_ids"] for s in samples] + [pad_positions], axis=1)
    grids = [s["image_grid_thw"] for s in samples if len(s["image_grid_thw"])]
    return PackedRecord(
        key=key or "+".join(s["key"] for s in samples), input_ids=input_ids.astype(np.int32),
        labels=labels.astype(np.int32), position_ids=position_ids.astype(np.int32),
        seq_lens=np.asarray([len(s["input_ids"]) for s in samples], dtype=np.int32),
        image_grid_thw=np.concatenate(grids).astype(np.int32) if grids else np.zeros((0, 3), np.int32),
        images=[im for s in samples for im in s["images"]], sample_keys=[s["key"] for s in samples]).validate().to_dict()


def pad_sample(sample: dict[str, Any], seq_len: int, *, pad_id: int = 0) -> dict[str, Any]:
    """One sample alone in a record of length `seq_len` (the padded, unpacked baseline)."""
    return pack_samples([sample], seq_len, pad_id=pad_id, key=sample["key"])


def random_samples(config: Any, n: int, *, seed: int = 0, min_text: int = 8, max_text: int = 40,
                   image_every: int = 2, image_size: tuple[int, int] = (56, 56), processor: Any = None
                   ) -> list[dict[str, Any]]:
    """`n` samples of random text lengths; every `image_every`-th sample carries one image (0: none)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        sizes = [image_size] if image_every and i % image_every == 0 else []
        out.append(make_sample(config, rng, text_tokens=int(rng.integers(min_text, max_text + 1)),
                               image_sizes=sizes, prompt_tokens=2, key=f"s{i:05d}", processor=processor))
    return out


def greedy_pack(samples: list[dict[str, Any]], seq_len: int, *, pad_id: int = 0) -> list[dict[str, Any]]:
    """First-fit in order: consecutive samples share a record while they fit (enough for tests and benches)."""
    records, current, used = [], [], 0
    for s in samples:
        n = len(s["input_ids"])
        if current and used + n > seq_len:
            records.append(pack_samples(current, seq_len, pad_id=pad_id, key=f"p{len(records):06d}"))
            current, used = [], 0
        current.append(s)
        used += n
    if current:
        records.append(pack_samples(current, seq_len, pad_id=pad_id, key=f"p{len(records):06d}"))
    return records


class ListSource(torch.utils.data.IterableDataset):
    """In-memory stand-in for `PackedDataset`: iterates records in order, cycling `epochs` times (0 = forever),
    with the same `state_dict`/`load_state_dict` exact-resume protocol."""

    def __init__(self, records: list[dict[str, Any]], *, epochs: int = 1):
        self.records = list(records)
        self.epochs = epochs
        self._position = 0  # records yielded so far, over all epochs

    def __iter__(self):
        while self.epochs == 0 or self._position < self.epochs * len(self.records):
            record = self.records[self._position % len(self.records)]
            self._position += 1
            yield record

    def state_dict(self) -> dict[str, Any]:
        return {"position": self._position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._position = int(state["position"])
