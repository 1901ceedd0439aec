"""Image-token arithmetic of GLM-4.1V: image size → (t, h, w) patch grid → number of `<|image|>` tokens.

Reimplements transformers' `Glm4vImageProcessorPil` resize rule (`smart_resize`) so packing needs no pixels,
only the stored width/height: tested against the real processor (tests/test_packing_vision.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from vlmloom.schemas.video import resized_sides


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
    return resized_sides(config.temporal_patch_size, height, width, factor=config.patch_size * config.merge_size,
                         temporal=config.temporal_patch_size, min_pixels=config.min_pixels,
                         max_pixels=config.max_pixels, error=ImageSizeError, what="image")


def image_grid_thw(width: int, height: int, config: VisionConfig = VisionConfig()) -> tuple[int, int, int]:
    """(t, h, w) in vision patches, as the processor's `image_grid_thw` row for this image."""
    h, w = smart_resize(height, width, config)
    return 1, h // config.patch_size, w // config.patch_size


def num_image_tokens(grid_thw: tuple[int, int, int], config: VisionConfig = VisionConfig()) -> int:
    t, h, w = grid_thw
    return t * h * w // (config.merge_size ** 2)
