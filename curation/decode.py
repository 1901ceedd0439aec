"""Decode and validate a sample's images (and raw text): the first curation stage after reading.

Sample with encoded `images[i].bytes` → Verdict. Each image is decoded once; on the way it fills
`ImageRef.sha256/width/height/format`, applies the EXIF orientation (re-encoding the bytes when that
changes the pixels), and for image 0 records the signals later stages read: `width`, `height`,
`phash` (16 hex chars), `pixel_std` (grayscale std-dev) and `image_sha256`.
Bad input never raises: it becomes a drop with a stable reason code and a detail naming the image.
"""
from __future__ import annotations

import functools
import io
from dataclasses import dataclass, field

import imagehash
import numpy as np
from PIL import Image, ImageOps, ImageStat, UnidentifiedImageError

from vlmloom.curation.base import Verdict
from vlmloom.curation.hashing import sha256_hex
from vlmloom.curation.video import VideoConfig, validate_video_sample
from vlmloom.schemas.config import ConfigError
from vlmloom.schemas.kinds import kind_of
from vlmloom.schemas.records import ImageRef, Sample

STAGE = "decode"
# Raster formats seen in image-text corpora. Anything else (EPS runs Ghostscript, PSD, PDF, ...) is
# `unidentified_image`: parsing rare formats from untrusted bytes buys risk, not data.
# (MPO, multi-picture JPEG, is recognised through the JPEG opener.)
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "JPEG2000", "ICO", "PPM", "TGA")
_EXIF_ORIENTATION = 0x0112
_JPEG_QUALITY = 95  # re-encode quality after an EXIF rotation: visually lossless, ~1.5x the bytes of q75


class TextDecodeError(ValueError):
    """Raw text bytes that are not valid UTF-8."""


@dataclass(frozen=True, kw_only=True)
class DecodeConfig:
    max_pixels: int = 64_000_000  # decompression-bomb guard on the declared width*height, checked before decoding pixels
    max_bytes: int = 64 * 2**20  # encoded images larger than this many bytes are rejected
    max_aspect_ratio: float = 100.0  # hard limit on long side / short side; the heuristic filter has a stricter one
    phash: bool = True  # compute the 64-bit pHash of image 0 while it is decoded (signals["phash"])
    video: VideoConfig = field(default_factory=VideoConfig)  # limits for video records (curation/video.py)

    def validate(self) -> None:
        if self.max_pixels < 1:
            raise ConfigError(f"decode.max_pixels ({self.max_pixels}) must be >= 1; the default is 64000000")
        # PIL refuses images above 2 * Image.MAX_IMAGE_PIXELS on its own; a higher limit here cannot take effect.
        pil_limit = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else None
        if pil_limit is not None and self.max_pixels > pil_limit:
            raise ConfigError(
                f"decode.max_pixels ({self.max_pixels}) exceeds Pillow's own limit ({pil_limit}): "
                f"lower decode.max_pixels, or raise PIL.Image.MAX_IMAGE_PIXELS in the worker setup"
            )
        if self.max_bytes < 1:
            raise ConfigError(f"decode.max_bytes ({self.max_bytes}) must be >= 1; the default is {64 * 2**20}")
        if self.max_aspect_ratio < 1.0:
            raise ConfigError(
                f"decode.max_aspect_ratio ({self.max_aspect_ratio}) must be >= 1.0 (long side / short side); "
                "the default is 100.0"
            )
        self.video.validate()


_UTF16_32_BOMS = ((b"\x00\x00\xfe\xff", "utf-32-be"), (b"\xff\xfe\x00\x00", "utf-32-le"),
                  (b"\xfe\xff", "utf-16-be"), (b"\xff\xfe", "utf-16-le"))


def decode_text(raw: bytes | None) -> str | None:
    """Text bytes → str without a leading BOM; None stays None. UTF-8 (with or without BOM), or UTF-16/32 when
    a BOM says so (Windows tools write those). Raises TextDecodeError on anything else (latin-1, garbage)."""
    if raw is None:
        return None
    if isinstance(raw, str):
        return raw[1:] if raw.startswith("\ufeff") else raw
    raw = bytes(raw)
    for bom, encoding in _UTF16_32_BOMS:
        if raw.startswith(bom):
            try:
                return raw[len(bom):].decode(encoding)
            except UnicodeDecodeError as exc:
                raise TextDecodeError(f"invalid {encoding} after its BOM at byte {exc.start + len(bom)}: "
                                      f"{exc.reason}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = exc.object[exc.start:exc.start + 4]
        raise TextDecodeError(f"invalid UTF-8 at byte {exc.start} ({bad!r}): {exc.reason}") from None


class _Drop(Exception):
    """Internal: one image failed; carries the reason code and detail for the Verdict."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _aspect_ratio(width: int, height: int) -> float:
    return max(width, height) / max(1, min(width, height))


def _reencode(image: Image.Image, source_format: str, original: Image.Image) -> tuple[bytes, str]:
    """Encode a transposed image: JPEG sources as JPEG q95 (keeping ICC/EXIF), anything else as lossless PNG."""
    out = io.BytesIO()
    icc = original.info.get("icc_profile")
    if source_format in ("jpeg", "mpo") and image.mode in ("L", "RGB", "CMYK"):
        extra = {"icc_profile": icc} if icc else {}
        exif = image.getexif()  # exif_transpose already dropped the orientation tag
        if len(exif):
            extra["exif"] = exif.tobytes()
        image.save(out, format="JPEG", quality=_JPEG_QUALITY, **extra)
        return out.getvalue(), "jpeg"
    image.save(out, format="PNG", **({"icc_profile": icc} if icc else {}))
    return out.getvalue(), "png"


@functools.lru_cache(maxsize=1)
def _openers() -> tuple[str, ...]:
    """IMAGE_FORMATS this Pillow build can open (AVIF and JPEG2000 depend on optional codecs)."""
    Image.init()
    return tuple(f for f in IMAGE_FORMATS if f in Image.OPEN)


def _decode_one(ref: ImageRef, index: int, config: DecodeConfig, measure: bool) -> dict:
    """Decode image `index` in place (fills sha256/size/format, may replace bytes); returns signals if `measure`."""
    encoded = _checked_bytes(ref, index, config)
    image = _open(encoded, index)
    with image:
        _check_header(image, index, config)
        _load_pixels(image, index)
        pixels, data, fmt = _apply_orientation(image, encoded, index)
        if data is not encoded:  # re-encoded upright: the input file no longer holds the sample's bytes
            ref.span = None
        ref.bytes = data
        ref.sha256 = sha256_hex(data)
        ref.width, ref.height = pixels.size
        ref.format = fmt
        return _measure(pixels, ref, index, config) if measure else {}


def _checked_bytes(ref: ImageRef, index: int, config: DecodeConfig) -> bytes:
    """The image's encoded bytes (read from its span when only that is held), size-checked before reading."""
    if ref.nbytes > config.max_bytes:
        raise _Drop("image_too_large_bytes", f"image {index}: {ref.nbytes} bytes > max_bytes {config.max_bytes}")
    try:
        data = ref.load_bytes()
    except OSError as exc:  # the input file vanished, shrank or changed since it was read
        raise _Drop("read_error", f"image {index}: {type(exc).__name__}: {exc}") from None
    if not data:
        where = f" (uri={ref.uri})" if ref.uri else ""
        raise _Drop("empty_bytes", f"image {index}: no encoded bytes{where}")
    return data


def _open(data: bytes, index: int) -> Image.Image:
    """Parse the header only (no pixels yet)."""
    try:
        return Image.open(io.BytesIO(data), formats=_openers())
    except UnidentifiedImageError:
        raise _Drop(
            "unidentified_image", f"image {index}: not a supported image format ({len(data)} bytes, starts {data[:8]!r})"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _Drop("decompression_bomb", f"image {index}: {exc}") from None
    except OSError as exc:
        reason = "truncated_image" if "truncated" in str(exc).lower() else "decode_error"
        raise _Drop(reason, f"image {index}: {type(exc).__name__}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any header parse failure is a decode error, never a crash
        raise _Drop("decode_error", f"image {index}: {type(exc).__name__}: {exc}") from None


def _check_header(image: Image.Image, index: int, config: DecodeConfig) -> None:
    """Size limits on the declared header size, before any pixel is decoded: a bomb never allocates."""
    width, height = image.size
    if width * height > config.max_pixels:
        raise _Drop(
            "decompression_bomb",
            f"image {index}: declared {width}x{height} = {width * height} pixels > max_pixels {config.max_pixels}",
        )
    if width < 1 or height < 1:
        raise _Drop("decode_error", f"image {index}: declared size {width}x{height}")
    ratio = _aspect_ratio(width, height)
    if ratio > config.max_aspect_ratio:
        raise _Drop(
            "aspect_ratio_too_large",
            f"image {index}: aspect ratio {ratio:.1f} ({width}x{height}) > max_aspect_ratio {config.max_aspect_ratio}",
        )


def _load_pixels(image: Image.Image, index: int) -> None:
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _Drop("decompression_bomb", f"image {index}: {exc}") from None
    except OSError as exc:
        reason = "truncated_image" if "truncated" in str(exc).lower() else "decode_error"
        raise _Drop(reason, f"image {index}: {type(exc).__name__}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - corrupt pixel data of any kind is a decode error
        raise _Drop("decode_error", f"image {index}: {type(exc).__name__}: {exc}") from None


def _apply_orientation(image: Image.Image, data: bytes, index: int) -> tuple[Image.Image, bytes, str]:
    """(upright pixels, their encoded bytes, format): re-encoded only when EXIF says the image is rotated."""
    fmt = (image.format or "").lower()
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - an unreadable EXIF block is ignored, like browsers do
        orientation = 1
    if orientation not in (2, 3, 4, 5, 6, 7, 8):
        return image, data, fmt
    try:
        pixels = ImageOps.exif_transpose(image)
        data, fmt = _reencode(pixels, fmt, image)
    except Exception as exc:  # noqa: BLE001
        raise _Drop("decode_error", f"image {index}: EXIF orientation {orientation}: {exc}") from None
    return pixels, data, fmt


def to_rgb8(image: Image.Image) -> Image.Image:
    """Any mode → 8-bit RGB with the full range kept. `convert("RGB")` clips high-bit-depth modes (I;16, I, F)
    to white, so distinct 16-bit images would measure and hash alike: scale them to 0..255 first."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            low, high = (0.0, 1.0) if values.size and values.min() >= 0 and values.max() <= 1 else \
                (float(np.nanmin(values)) if values.size else 0.0, float(np.nanmax(values)) if values.size else 1.0)
        else:  # 16-bit samples (I;16*, or I holding 16-bit PNG data); wider integers are rescaled by their range
            low, high = (0.0, 65535.0) if values.size and values.min() >= 0 and values.max() <= 65535 else \
                (float(values.min()), float(values.max()))
        scaled = np.nan_to_num((values - low) * (255.0 / max(high - low, 1e-12)), nan=0.0)
        gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    return image.convert("RGB")


def _measure(pixels: Image.Image, ref: ImageRef, index: int, config: DecodeConfig) -> dict:
    try:
        gray = to_rgb8(pixels).convert("L")
        signals = {
            "width": ref.width,
            "height": ref.height,
            "pixel_std": round(float(ImageStat.Stat(gray).stddev[0]), 4),
            "image_sha256": ref.sha256,
        }
        if config.phash:
            signals["phash"] = str(imagehash.phash(gray))
    except Exception as exc:  # noqa: BLE001
        raise _Drop("decode_error", f"image {index}: measuring pixels: {type(exc).__name__}: {exc}") from None
    return signals


def decode_sample(sample: Sample, config: DecodeConfig) -> Verdict:
    """Decode every image of `sample` once; keep it, or drop it with the first failing image's reason.

    A sample with fewer images than its kind requires (`Kind.min_images` in the kinds table) is `no_image`.
    Measured signals (image 0) are returned in the Verdict (`Verdict.merge_into` records them on the sample).
    """
    video_signals: dict = {}
    if sample.videos or kind_of(sample).render == "video":  # probe + validate each video (curation/video.py)
        reason, detail, video_signals = validate_video_sample(sample, config.video)
        if reason:
            return Verdict.drop(reason, detail)
        if not sample.images:
            return Verdict.ok(**video_signals)
    required = kind_of(sample).min_images
    if len(sample.images) < required:
        return Verdict.drop("no_image", f"kind {sample.kind!r} needs {required} image(s), the sample has "
                                        f"{len(sample.images)}")
    if not sample.images:
        return Verdict.ok()
    signals: dict = {}
    for index, ref in enumerate(sample.images):
        try:
            measured = _decode_one(ref, index, config, measure=index == 0)
        except _Drop as drop:
            return Verdict.drop(drop.reason, drop.detail)
        if index == 0:
            signals = measured
    return Verdict.ok(**{**video_signals, **signals})
