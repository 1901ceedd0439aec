"""Image-token counts equal transformers' Glm4vImageProcessorPil, over a sweep of sizes up to 200:1."""
import io

import numpy as np
import pytest
from PIL import Image

from vlmloom.packing.vision import ImageSizeError, VisionConfig, image_grid_thw, num_image_tokens

transformers = pytest.importorskip("transformers")

SWEEP = [(1, 1), (10, 10), (27, 28), (28, 28), (56, 28), (112, 112), (113, 57), (224, 224), (640, 480),
         (1920, 1080), (4000, 3000), (8000, 8000), (13000, 97), (20, 2000), (2000, 10), (5600, 28), (28, 5600),
         (2, 400), (400, 2), (7, 1400), (33, 6600), (30000, 150), (150, 30000), (3, 500)]
SWEEP += [(int(w), int(h)) for w, h in np.random.default_rng(0).integers(1, 5000, (200, 2))]


@pytest.fixture(scope="module")
def processor():
    return transformers.Glm4vImageProcessorPil()


def _reference_grid(processor, width, height, **kwargs):
    """The processor's grid from its own resize rule (raises like it does on > 200:1)."""
    from transformers.models.glm4v.image_processing_pil_glm4v import smart_resize
    size = kwargs.get("size", processor.size)
    h, w = smart_resize(num_frames=2, height=height, width=width, factor=28, temporal_factor=2,
                        min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"])
    return 1, h // 14, w // 14


@pytest.mark.parametrize("width,height", SWEEP)
def test_grid_and_count_match_processor(processor, width, height):
    try:
        expected = _reference_grid(processor, width, height)
    except ValueError:
        with pytest.raises(ImageSizeError):
            image_grid_thw(width, height)
        return
    grid = image_grid_thw(width, height)
    assert grid == expected
    assert grid[1] * grid[2] == processor.get_number_of_image_patches(height, width)
    assert num_image_tokens(grid) == grid[1] * grid[2] // 4


@pytest.mark.parametrize("width,height", [(1, 1), (30, 29), (200, 1), (400, 2), (2, 400), (401, 2), (97, 1300),
                                          (640, 480), (28, 5600), (1000, 40)])
def test_real_preprocess_on_pixels(processor, width, height):
    """Run the processor on actual images: its image_grid_thw and pixel rows agree with ours."""
    image = Image.new("RGB", (width, height), (120, 30, 200))
    try:
        out = processor([image])
    except ValueError:
        with pytest.raises(ImageSizeError):
            image_grid_thw(width, height)
        return
    grid = tuple(int(x) for x in out["image_grid_thw"][0])
    assert image_grid_thw(width, height) == grid
    assert out["pixel_values"].shape[0] == grid[0] * grid[1] * grid[2]


def test_min_max_pixels_configurable(processor):
    small = VisionConfig(min_pixels=56 * 56, max_pixels=28 * 28 * 64)
    size = {"shortest_edge": small.min_pixels, "longest_edge": small.max_pixels}
    for w, h in [(2000, 1500), (20, 20), (300, 17), (5000, 40)]:
        assert image_grid_thw(w, h, small) == _reference_grid(processor, w, h, size=size)
        image = Image.new("RGB", (w, h))
        out = processor([image], size=size)
        assert tuple(int(x) for x in out["image_grid_thw"][0]) == image_grid_thw(w, h, small)


def test_encoded_image_sizes_round_trip():
    """Width/height as PIL reports them (what the builder falls back to) feed the same rule."""
    buf = io.BytesIO()
    Image.new("RGB", (123, 45)).save(buf, format="PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).size == (123, 45)
