"""Batch packed sequences for Glm4vForConditionalGeneration: reader dicts → model keyword arguments.

    batch = collate_packed(items, image_token_id=tok.convert_tokens_to_ids("<|image|>"))
    out = model(**batch, use_cache=False)     # 4-row position_ids + use_cache=False keep samples apart

Images are decoded and run through transformers' `Glm4vImageProcessorPil` (pixels in token order across
the batch); its grids must equal the stored `image_grid_thw`, or the shards were packed with different
processor settings.
"""
from __future__ import annotations

import io

import numpy as np
import torch


def collate_packed(items: list[dict], *, image_token_id: int, image_processor=None) -> dict[str, torch.Tensor]:
    """input_ids/labels/mm_token_type_ids [B, L], position_ids [4, B, L], pixel_values, image_grid_thw."""
    input_ids = torch.from_numpy(np.stack([x["input_ids"] for x in items])).long()
    batch = {
        "input_ids": input_ids,
        "labels": torch.from_numpy(np.stack([x["labels"] for x in items])).long(),
        "position_ids": torch.from_numpy(np.stack([x["position_ids"] for x in items], axis=1)).long(),
        "mm_token_type_ids": (input_ids == image_token_id).long(),
    }
    images = [data for x in items for data in x["images"]]
    if images:
        from PIL import Image

        if image_processor is None:
            from transformers import Glm4vImageProcessorPil
            image_processor = Glm4vImageProcessorPil()
        pixels = image_processor([Image.open(io.BytesIO(d)).convert("RGB") for d in images], return_tensors="pt")
        stored = np.concatenate([x["image_grid_thw"] for x in items]).astype(np.int64)
        if not np.array_equal(pixels["image_grid_thw"].numpy(), stored):
            raise ValueError("image_grid_thw from the image processor differs from the packed shards: "
                             "pack with the processor's min/max pixels (packing.builder.vision)")
        batch["pixel_values"] = pixels["pixel_values"]
        batch["image_grid_thw"] = pixels["image_grid_thw"]
    return batch
