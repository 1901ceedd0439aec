"""decode_sample / decode_text: every reason code on small in-memory images, and the measured signals."""
from __future__ import annotations

import hashlib
import io
import struct
import zlib

import imagehash
import numpy as np
import pytest
from PIL import Image

from vlmloom.curation.decode import DecodeConfig, TextDecodeError, decode_sample, decode_text
from vlmloom.schemas.config import ConfigError, build_config
from vlmloom.schemas.records import ImageRef, Sample


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kwargs)
    return out.getvalue()


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def sample_with(*images: bytes | None, kind: str = "caption") -> Sample:
    return Sample(key="k", source="s", source_id="1", kind=kind, images=[ImageRef(bytes=b) for b in images])


def png_with_declared_size(width: int, height: int) -> bytes:
    """A valid 8x8 PNG whose IHDR claims width x height (CRC fixed, so only the size is a lie)."""
    data = bytearray(encode(noise(8, 8), "PNG"))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    return bytes(data)


def jpeg_with_orientation(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", quality=90, exif=exif.tobytes())


def judge(*images: bytes | None, kind: str = "caption", **config):
    sample = sample_with(*images, kind=kind)
    return sample, decode_sample(sample, DecodeConfig(**config))


# --- kept images and their signals ------------------------------------------------------------------
def test_png_fills_image_ref_and_signals():
    image = noise(120, 80)
    data = encode(image, "PNG")
    sample, verdict = judge(data)
    assert verdict.keep and verdict.reason is None
    ref = sample.images[0]
    assert (ref.width, ref.height, ref.format) == (120, 80, "png")
    assert ref.sha256 == hashlib.sha256(data).hexdigest()
    assert ref.bytes == data  # bytes are kept untouched when there is nothing to rotate
    gray = np.asarray(image.convert("L"), dtype=np.float64)
    expected = {
        "width": 120, "height": 80, "image_sha256": ref.sha256,
        "phash": str(imagehash.phash(image)),
        "pixel_std": pytest.approx(gray.std(), abs=1e-3),
    }
    assert verdict.signals == expected
    assert sample.signals == {}  # signals reach the sample only through Verdict.merge_into
    assert verdict.merge_into(sample, "decode").signals == verdict.signals
    assert len(verdict.signals["phash"]) == 16 and int(verdict.signals["phash"], 16) >= 0


def test_jpeg_format_and_phash_toggle():
    sample, verdict = judge(encode(noise(64, 64), "JPEG"), phash=False)
    assert verdict.keep
    assert sample.images[0].format == "jpeg"
    assert "phash" not in verdict.signals and verdict.signals["width"] == 64


def test_solid_image_has_zero_pixel_std():
    _, verdict = judge(encode(Image.new("RGB", (100, 100), (200, 10, 10)), "PNG"))
    assert verdict.keep and verdict.signals["pixel_std"] == 0.0


def test_palette_and_alpha_images_are_measured_in_rgb():
    image = noise(70, 90).convert("P")
    _, verdict = judge(encode(image, "PNG"))
    assert verdict.keep and verdict.signals["phash"] == str(imagehash.phash(image.convert("RGB")))
    _, verdict = judge(encode(noise(70, 90).convert("RGBA"), "WEBP", lossless=True))
    assert verdict.keep and verdict.signals["width"] == 70


def blocks(width: int, height: int) -> Image.Image:
    """Flat colour blocks: survive JPEG re-encoding well enough to compare pixels."""
    image = Image.new("RGB", (width, height), (255, 255, 255))
    image.paste((200, 0, 0), (0, 0, width // 2, height // 2))
    image.paste((0, 0, 200), (width // 2, height // 2, width, height))
    return image


def test_exif_orientation_is_applied_and_reencoded():
    image = blocks(40, 20)
    data = jpeg_with_orientation(image, 6)  # 6 = rotate 90 degrees clockwise to display
    sample, verdict = judge(data)
    ref = sample.images[0]
    assert verdict.keep
    assert (ref.width, ref.height, ref.format) == (20, 40, "jpeg")
    assert ref.bytes != data and ref.sha256 == hashlib.sha256(ref.bytes).hexdigest()
    assert verdict.signals["image_sha256"] == ref.sha256
    stored = Image.open(io.BytesIO(ref.bytes))
    assert stored.size == (20, 40) and stored.getexif().get(0x0112, 1) == 1
    # The stored pixels are the displayed orientation: compare with PIL's own transpose of the original.
    expected = np.asarray(image.transpose(Image.Transpose.ROTATE_270), dtype=np.int16)
    assert np.abs(np.asarray(stored.convert("RGB"), dtype=np.int16) - expected).mean() < 10  # the wrong rotation is ~66 off


def test_exif_orientation_1_keeps_bytes():
    data = jpeg_with_orientation(noise(40, 20), 1)
    sample, verdict = judge(data)
    assert verdict.keep and sample.images[0].bytes == data and sample.images[0].width == 40


def test_every_image_is_decoded_but_signals_come_from_image_0():
    first, second = encode(noise(30, 60, seed=1), "PNG"), encode(noise(90, 45, seed=2), "JPEG")
    sample, verdict = judge(first, second)
    assert verdict.keep
    assert [(r.width, r.height, r.format) for r in sample.images] == [(30, 60, "png"), (90, 45, "jpeg")]
    assert sample.images[1].sha256 == hashlib.sha256(second).hexdigest()
    assert verdict.signals["width"] == 30 and verdict.signals["image_sha256"] == sample.images[0].sha256


def test_samples_without_images():
    _, verdict = judge(kind="qa")
    assert verdict.keep and verdict.signals == {}
    for kind in ("caption", "ocr", "grounding", "gui"):
        _, verdict = judge(kind=kind)
        assert (verdict.keep, verdict.reason) == (False, "no_image")


# --- every reason code ------------------------------------------------------------------------------
def test_empty_bytes():
    for data in (b"", None):
        _, verdict = judge(data)
        assert (verdict.keep, verdict.reason) == (False, "empty_bytes")
        assert "image 0" in verdict.detail


def test_image_too_large_bytes():
    data = encode(noise(32, 32), "PNG")
    _, verdict = judge(data, max_bytes=100)
    assert verdict.reason == "image_too_large_bytes"
    assert verdict.detail == f"image 0: {len(data)} bytes > max_bytes 100"


def test_unidentified_image():
    rng = np.random.default_rng(3)
    _, verdict = judge(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
    assert verdict.reason == "unidentified_image"
    eps = encode(Image.new("RGB", (8, 8)), "EPS")  # PIL can read EPS, via Ghostscript: not from untrusted bytes
    _, verdict = judge(eps)
    assert verdict.reason == "unidentified_image" and verdict.detail.startswith("image 0: not a supported image format")


def test_declared_size_over_max_pixels_is_rejected_before_decoding():
    # 9000x9000 = 81M pixels: under PIL's own warning limit (~89M), over ours (64M); pixels are never decoded
    _, verdict = judge(png_with_declared_size(9000, 9000))
    assert verdict.reason == "decompression_bomb"
    assert verdict.detail == "image 0: declared 9000x9000 = 81000000 pixels > max_pixels 64000000"
    _, verdict = judge(encode(noise(100, 100), "PNG"), max_pixels=9999)
    assert verdict.reason == "decompression_bomb" and "100x100 = 10000 pixels" in verdict.detail


def test_pil_decompression_bomb_error_is_a_reason_not_a_crash():
    # 100000 x 100000 exceeds 2 x PIL.Image.MAX_IMAGE_PIXELS: PIL raises in open(), before our check
    _, verdict = judge(png_with_declared_size(100_000, 100_000))
    assert verdict.reason == "decompression_bomb"


def test_truncated_image():
    data = encode(noise(64, 64), "JPEG")
    _, verdict = judge(data[: len(data) // 2])
    assert verdict.reason == "truncated_image" and verdict.detail.startswith("image 0: OSError: image file is truncated")


def test_decode_error_on_corrupt_pixel_data():
    data = encode(noise(64, 64), "PNG")
    idat = data.index(b"IDAT")
    corrupt = data[: idat + 14] + b"\x00" * 50 + data[idat + 64:]
    _, verdict = judge(corrupt)
    assert verdict.reason == "decode_error" and "broken data stream" in verdict.detail


def test_aspect_ratio_too_large():
    _, verdict = judge(encode(Image.new("RGB", (300, 1)), "PNG"))
    assert verdict.reason == "aspect_ratio_too_large"
    assert verdict.detail == "image 0: aspect ratio 300.0 (300x1) > max_aspect_ratio 100.0"
    _, verdict = judge(encode(noise(300, 4), "PNG"))
    assert verdict.keep  # 75 <= 100: the stricter limit belongs to the heuristic filter


def test_detail_names_the_failing_image():
    sample, verdict = judge(encode(noise(16, 16), "PNG"), b"not an image at all")
    assert verdict.reason == "unidentified_image" and verdict.detail.startswith("image 1:")


# --- text and config --------------------------------------------------------------------------------
def test_decode_text():
    assert decode_text(None) is None
    assert decode_text("plain".encode()) == "plain"
    assert decode_text("\ufeffhallo Köln".encode("utf-8")) == "hallo Köln"
    assert decode_text("".encode()) == ""
    with pytest.raises(TextDecodeError, match="invalid UTF-8 at byte 3"):
        decode_text(b"abc\xff\xfedef")
    with pytest.raises(ValueError):  # TextDecodeError is a ValueError
        decode_text("é".encode("latin-1"))


def test_decode_config_validation():
    assert build_config(DecodeConfig, {"max_pixels": 1000}).max_pixels == 1000
    with pytest.raises(ConfigError, match="decode.max_pixels"):
        build_config(DecodeConfig, {"max_pixels": 0})
    with pytest.raises(ConfigError, match="Pillow's own limit"):
        build_config(DecodeConfig, {"max_pixels": 10**12})
    with pytest.raises(ConfigError, match="max_aspect_ratio"):
        build_config(DecodeConfig, {"max_aspect_ratio": 0.5})
    with pytest.raises(ConfigError, match="unknown key"):
        build_config(DecodeConfig, {"max_pixel": 1})
