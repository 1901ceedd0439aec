"""Image-token arithmetic of GLM-4.1V: image size → (t, h, w) patch grid → number of `<|image|>` tokens.

Reimplements transformers' `Glm4vImageProcessorPil` resize rule (`smart_resize`) so packing needs no pixels,
only the stored width/height: tested against the real processor (tests/test_packing_vision.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass


class ImageSizeError(ValueError):
    """The processor would refuse this image (aspect ratio ≥ 200:1, or an empty side)."""


@dataclass(frozen=True, kw_only=True)
class VisionConfig:
    """Glm4vImageProcessorPil's defaults; change them only together with the processor you train with."""
    patch_size: int = 14  # vision patch side in pixels
    merge_size: int = 2  # spatial merge: merge_size² patches → one LLM token
    temporal_patch_size: int = 2  # an image is duplicated to 2 frames
    min_pixels: int = 112 * 112  # processor size["shortest_edge"]
    max_pixels: int = 28 * 28 * 15000  # processor size["longest_edge"]

    def validate(self) -> None:
        from vlmloom.schemas.config import ConfigError

        if self.patch_size <= 0 or self.merge_size <= 0 or self.temporal_patch_size <= 0:
            raise ConfigError("vision: patch_size, merge_size and temporal_patch_size must be positive")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ConfigError(f"vision: need 0 < min_pixels ({self.min_pixels}) <= max_pixels ({self.max_pixels})")


def smart_resize(height: int, width: int, config: VisionConfig) -> tuple[int, int]:
    """The (height, width) the processor resizes to: multiples of patch×merge, pixel count within [min, max]."""
    factor = config.patch_size * config.merge_size
    frames = config.temporal_patch_size
    if height <= 0 or width <= 0:
        raise ImageSizeError(f"image size {width}x{height} has an empty side")
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > 200:
        raise ImageSizeError(f"aspect ratio {max(height, width) / min(height, width):.1f} exceeds 200")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(frames / config.temporal_patch_size) * config.temporal_patch_size
    if t_bar * h_bar * w_bar > config.max_pixels:
        beta = math.sqrt((frames * height * width) / config.max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < config.min_pixels:
        beta = math.sqrt(config.min_pixels / (frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def image_grid_thw(width: int, height: int, config: VisionConfig = VisionConfig()) -> tuple[int, int, int]:
    """(t, h, w) in vision patches, as the processor's `image_grid_thw` row for this image."""
    h, w = smart_resize(height, width, config)
    return 1, h // config.patch_size, w // config.patch_size


def num_image_tokens(grid_thw: tuple[int, int, int], config: VisionConfig = VisionConfig()) -> int:
    t, h, w = grid_thw
    return t * h * w // (config.merge_size ** 2)
