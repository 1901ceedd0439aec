"""Packed records → model batches, and the data loader with exact resume.

A record is the dict `vlmloom.packing.reader.PackedDataset` yields (see `schemas/packed.py`): input_ids [L],
labels [L], position_ids [4, L], seq_lens [n], image_grid_thw [m, 3], images (encoded bytes, token order).
`PackedCollator` turns a list of records into tensors: input_ids / targets (B, L), position_ids (4, B, L),
mm_token_type_ids (B, L), pixel_values / image_grid_thw from `Glm4vImageProcessorPil`. Any iterable of such
records can feed the loop (RLCS plugs its own source in); `state_dict`/`load_state_dict` on it make resume exact.
"""
from __future__ import annotations

import io
import multiprocessing
import os
from typing import Any, Iterable

import numpy as np
import torch

from vlmloom.schemas.packed import IGNORE_INDEX


def shifted_targets(labels: np.ndarray, seq_lens: np.ndarray) -> np.ndarray:
    """Next-token targets of one packed row: targets[t] = labels[t+1], but -100 where t+1 starts a new sample.

    labels: int [L]; seq_lens: int [n] (sum <= L). Returns int64 [L]. The last token of a sample must not learn
    to predict the first token of the next one: that would make the packed loss differ from the unpacked one.
    """
    targets = np.full(labels.shape[0], IGNORE_INDEX, dtype=np.int64)
    targets[:-1] = labels[1:]
    ends = np.cumsum(seq_lens.astype(np.int64)) - 1  # last index of each sample
    targets[ends[ends < labels.shape[0]]] = IGNORE_INDEX
    return targets


def check_text_positions(key: str, text_positions: np.ndarray, seq_lens: np.ndarray) -> None:
    """Row 0 of the position ids must be 0..s-1 for every sample: transformers derives the block-diagonal mask
    (or the varlen boundaries) from it, so anything else would let samples attend to each other."""
    starts = np.concatenate([[0], np.cumsum(seq_lens)[:-1]]).astype(np.int64)
    expected = np.arange(int(seq_lens.sum()), dtype=np.int64) - np.repeat(starts, seq_lens)
    if not np.array_equal(text_positions[: len(expected)], expected):
        raise ValueError(f"record {key}: position_ids[0] must restart at 0 for each of the {len(seq_lens)} samples "
                         f"(seq_lens {seq_lens.tolist()}); packed samples would attend across each other")


def pretrain_labels(input_ids: np.ndarray, seq_lens: np.ndarray, ignore_ids: Iterable[int]) -> np.ndarray:
    """Labels for records that carry none: every token of every sample except image/video tokens and padding."""
    labels = input_ids.astype(np.int64).copy()
    labels[np.isin(input_ids, list(ignore_ids))] = IGNORE_INDEX
    labels[int(seq_lens.sum()):] = IGNORE_INDEX
    return labels


class PackedCollator:
    """list[record] → batch dict of tensors for `CausalLMLoss.forward` (all rows must share one length)."""

    def __init__(self, model_config: Any, *, image_processor: Any = None, check_grids: bool = True,
                 derive_labels: bool = True):
        self.image_token_id = int(model_config.image_token_id)
        self.video_token_id = int(model_config.video_token_id)
        self.ignore_ids = {model_config.image_token_id, model_config.image_start_token_id,
                           model_config.image_end_token_id, model_config.video_token_id,
                           model_config.video_start_token_id, model_config.video_end_token_id}
        self.merge = int(model_config.vision_config.spatial_merge_size) ** 2
        self.video_start_id = int(model_config.video_start_token_id)
        self.video_end_id = int(model_config.video_end_token_id)
        self.image_processor = image_processor or default_image_processor()
        self.check_grids = check_grids
        self.derive_labels = derive_labels  # pretrain: records without labels learn every text token

    def __call__(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        lengths = {len(r["input_ids"]) for r in records}
        if len(lengths) != 1:
            raise ValueError(f"records of one batch must share a length, got {sorted(lengths)} "
                             f"(keys {[r['key'] for r in records]})")
        input_ids, targets, positions, mm_types = [], [], [], []
        images, stored_grids, seq_lens = [], [], []
        for r in records:
            ids = np.asarray(r["input_ids"])
            lens = np.asarray(r["seq_lens"], dtype=np.int64)
            labels = r.get("labels")
            if labels is None and not self.derive_labels:
                raise ValueError(f"record {r['key']}: no labels; SFT trains only on the spans the packer labelled")
            labels = pretrain_labels(ids, lens, self.ignore_ids) if labels is None else np.asarray(labels)
            pos = np.asarray(r["position_ids"])
            if pos.shape != (4, ids.shape[0]):
                raise ValueError(f"record {r['key']}: position_ids has shape {pos.shape}, expected (4, {ids.shape[0]})")
            check_text_positions(r["key"], pos[0], lens)
            grid = np.asarray(r.get("image_grid_thw", np.zeros((0, 3))), dtype=np.int64).reshape(-1, 3)
            video_grid = np.asarray(r.get("video_grid_thw", np.zeros((0, 3))), dtype=np.int64).reshape(-1, 3)
            n_image_tokens = int((ids == self.image_token_id).sum())  # video frames use <|image|> too (GLM-4.1V)
            if n_image_tokens != int(grid.prod(axis=1).sum() + video_grid.prod(axis=1).sum()) // self.merge:
                raise ValueError(f"record {r['key']}: {n_image_tokens} image tokens but image_grid_thw {grid.tolist()} "
                                 f"needs {int(grid.prod(axis=1).sum()) // self.merge}")
            if len(r.get("images", [])) != len(grid):
                raise ValueError(f"record {r['key']}: {len(r.get('images', []))} images but {len(grid)} grids")
            input_ids.append(ids.astype(np.int64))
            targets.append(shifted_targets(labels, lens))
            positions.append(pos.astype(np.int64))
            # as Glm4vProcessor.create_mm_token_type_ids: an <|image|> inside <|begin_of_video|>…<|end_of_video|>
            # is video (2), elsewhere image (1)
            in_video = np.cumsum(ids == self.video_start_id) > np.cumsum(ids == self.video_end_id)
            mm_types.append(np.where(ids == self.image_token_id, np.where(in_video, 2, 1), 0).astype(np.int64))
            images += list(r.get("images", []))
            stored_grids.append(grid)
            seq_lens.append(lens)
        batch: dict[str, Any] = {
            "input_ids": torch.from_numpy(np.stack(input_ids)),
            "targets": torch.from_numpy(np.stack(targets)),
            "position_ids": torch.from_numpy(np.stack(positions, axis=1)),  # (4, B, L)
            "mm_token_type_ids": torch.from_numpy(np.stack(mm_types)),
            "pixel_values": None,
            "image_grid_thw": None,
        }
        if any(len(r.get("videos") or []) for r in records):
            batch["pixel_values"], batch["image_grid_thw"], batch["video_grid_thw"] = self._visual_blocks(records)
        elif images:
            pixel_values, grid = self._process_images(images)
            stored = np.concatenate(stored_grids)
            if self.check_grids and not np.array_equal(grid, stored):
                keys = [r["key"] for r in records]
                raise ValueError(f"records {keys}: image processor grids {grid.tolist()} != stored image_grid_thw "
                                 f"{stored.tolist()}; pack and train with the same image processor settings")
            batch["pixel_values"] = torch.from_numpy(pixel_values)
            batch["image_grid_thw"] = torch.from_numpy(stored)
        batch["stats"] = batch_stats(seq_lens, batch["targets"], int(batch["input_ids"].numel()),
                                     num_patches=0 if batch["image_grid_thw"] is None
                                     else int(batch["image_grid_thw"].prod(-1).sum()))
        return batch

    def _visual_blocks(self, records: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images and videos of a batch as one token-ordered list of vision blocks: (pixel_values, one (t, h, w) row
        per block, video_grid_thw). A video's frame pair is the block (1, h, w) — exactly the rows and grids
        `Glm4vModel.get_video_features` hands the vision tower from pixel_values_videos / video_grid_thw — so every
        block goes through `pixel_values`: Glm4v's forward counts all <|image|> tokens for images and for videos
        alike, and cannot take both kinds in one batch."""
        from vlmloom.packing.video import frame_pair_grids, video_pixel_values

        images = [b for r in records for b in r.get("images", [])]
        image_rows: list[np.ndarray] = []
        if images:
            pixel_values, grid = self._process_images(images)
            stored = np.concatenate([np.asarray(r.get("image_grid_thw", np.zeros((0, 3))), np.int64).reshape(-1, 3)
                                     for r in records])
            if self.check_grids and not np.array_equal(grid, stored):
                raise ValueError(f"records {[r['key'] for r in records]}: image processor grids {grid.tolist()} != "
                                 f"stored image_grid_thw {stored.tolist()}")
            image_rows = np.split(pixel_values, np.cumsum(stored.prod(axis=1))[:-1])
        pairs: list[tuple[np.ndarray, np.ndarray]] = []  # (rows, (1, h, w)) per frame pair, batch/token order
        video_grids = []
        for r in records:
            grids = np.asarray(r.get("video_grid_thw", np.zeros((0, 3))), np.int64).reshape(-1, 3)
            indices = np.asarray(r.get("video_frame_indices", np.zeros(0)), np.int64)
            at = 0
            for data, g in zip(r.get("videos") or [], grids):
                rows = video_pixel_values(data, indices[at:at + 2 * int(g[0])].tolist(), g)
                at += 2 * int(g[0])
                pairs += list(zip(np.split(rows, int(g[0])), frame_pair_grids(g[None])))
                video_grids.append(g)
        blocks, block_grids = [], []
        image_iter, pair_iter = iter(zip(image_rows, np.concatenate(
            [np.asarray(r.get("image_grid_thw", np.zeros((0, 3))), np.int64).reshape(-1, 3) for r in records]))), \
            iter(pairs)
        for r in records:
            ids = np.asarray(r["input_ids"])
            is_image = ids == self.image_token_id
            in_video = np.cumsum(ids == self.video_start_id) > np.cumsum(ids == self.video_end_id)
            starts = np.flatnonzero(is_image & ~np.r_[False, is_image[:-1]])
            for start in starts:
                rows, g = next(pair_iter) if in_video[start] else next(image_iter)
                blocks.append(rows)
                block_grids.append(g)
        return (torch.from_numpy(np.concatenate(blocks).astype(np.float32)),
                torch.from_numpy(np.asarray(block_grids, np.int64).reshape(-1, 3)),
                torch.from_numpy(np.asarray(video_grids, np.int64).reshape(-1, 3)))

    def _process_images(self, images: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        from PIL import Image

        pil = []
        for data in images:
            with Image.open(io.BytesIO(data)) as im:
                pil.append(im.convert("RGB"))
        out = self.image_processor(images=pil, return_tensors="np")
        return np.asarray(out["pixel_values"], dtype=np.float32), np.asarray(out["image_grid_thw"], dtype=np.int64)


def batch_stats(seq_lens: list[np.ndarray], targets: torch.Tensor, capacity: int, *,
                num_patches: int) -> dict[str, float]:
    """Token counts of a batch for metrics: real tokens, label tokens, padding, Σ s² (attention cost), patches."""
    lens = np.concatenate(seq_lens).astype(np.int64)
    tokens = int(lens.sum())
    return {"tokens": tokens, "label_tokens": int((targets != IGNORE_INDEX).sum()), "capacity": capacity,
            "samples": int(len(lens)), "sum_sq_len": float((lens.astype(np.float64) ** 2).sum()),
            "patches": num_patches}


def default_image_processor() -> Any:
    """`Glm4vImageProcessorPil` with GLM-4.1V's defaults (what the packer's vision.py mirrors)."""
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

    return Glm4vImageProcessorPil()


def load_image_processor(path: str) -> Any:
    """`Glm4vImageProcessorPil` from a directory with preprocessor_config.json, or the defaults for ""."""
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

    if path and os.path.isfile(os.path.join(path, "preprocessor_config.json")):
        return Glm4vImageProcessorPil.from_pretrained(path)
    return default_image_processor()


def packed_source(paths: list[str], *, shuffle_buffer: int, seed: int, rank: int, world_size: int, epochs: int) -> Any:
    """The packed-shard reader over `paths` (directories or shards) for this rank."""
    from vlmloom.packing.reader import PackedDataset

    if not paths:
        raise ValueError("data: no packed directories given (set `data` or pass --data DIR)")
    return PackedDataset(paths, shuffle_buffer=shuffle_buffer, seed=seed, rank=rank, world_size=world_size,
                         epochs=epochs or None)  # the reader repeats forever with epochs=None


def make_loader(source: Any, collator: PackedCollator, *, micro_batch: int, num_workers: int = 0) -> Any:
    """A torchdata `StatefulDataLoader` over `source` (an IterableDataset of records): its state_dict holds the
    source's state, so a checkpoint resumes at the next unseen batch."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    if not isinstance(source, torch.utils.data.Dataset):
        if num_workers > 0:
            # each worker process would iterate its own copy of the whole iterable: every record num_workers times
            raise ValueError(f"num_workers={num_workers} needs a source that splits itself over loader workers "
                             f"(a torch IterableDataset such as PackedDataset); this {type(source).__name__} "
                             f"does not: set num_workers=0")
        source = _IterableSource(source)
    # Workers start by forkserver, not fork: the trainer's process holds threads by then (the process group's,
    # DeepSpeed's, tqdm's monitor), and a fork while one of them holds a lock leaves the worker stuck (a CI run of
    # `vlmloom train` with 2 workers hung there). The reward pool (rewards/pool.py) starts its workers the same way.
    context = None
    if num_workers > 0:
        context = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    return StatefulDataLoader(source, batch_size=micro_batch, collate_fn=collator, num_workers=num_workers,
                              drop_last=True, persistent_workers=False, multiprocessing_context=context)


class _IterableSource(torch.utils.data.IterableDataset):
    """Any iterable of records as an IterableDataset; resume is exact only if it has state_dict/load_state_dict."""

    def __init__(self, records: Iterable[dict[str, Any]]):
        self.records = records

    def __iter__(self):
        return iter(self.records)

    def state_dict(self) -> dict[str, Any]:
        return self.records.state_dict() if hasattr(self.records, "state_dict") else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if hasattr(self.records, "load_state_dict"):
            self.records.load_state_dict(state)
