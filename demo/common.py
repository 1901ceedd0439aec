"""Shared pieces of the demo generators: seeded randomness, image encoding, pHash/shingle distinctness, fonts, the record type.

Part of the demo corpus (`vlmloom.demo.corpus`); every output is a function of the seeded `random.Random` passed in.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import random
from dataclasses import dataclass
from typing import Any

import imagehash
import numpy as np
from datasketch import MinHash, MinHashLSH
from PIL import Image, ImageDraw, ImageFont

# pHash (imagehash.phash, 64 bits) guarantees: every planted variant is within NEAR_MAX of its parent, and
# every image meant to be distinct (clean samples, benchmark images, other planted images) is farther than
# DISTINCT_MIN from all the others, so any near-dup threshold k in [NEAR_MAX, DISTINCT_MIN) finds exactly
# the planted pairs.
PHASH_NEAR_MAX = 8
PHASH_DISTINCT_MIN = 10
JPEG_QUALITY = 90
REENCODE_QUALITY = 40

# ----------------------------------------------------------------------------------------------
# Randomness, encoding, hashing helpers
# ----------------------------------------------------------------------------------------------
def seeded_rng(seed: int, *parts: Any) -> random.Random:
    """An independent stream per (seed, purpose, index, attempt): sample i does not depend on sample i-1."""
    digest = hashlib.sha256(repr((seed, *parts)).encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def encode_image(image: Image.Image, fmt: str, quality: int = JPEG_QUALITY) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpg":
        image.convert("RGB").save(buf, format="JPEG", quality=quality, optimize=False, progressive=False)
    else:
        image.save(buf, format="PNG", compress_level=3)  # 6 costs ~50% more time for ~15% smaller files
    return buf.getvalue()


def decode_image(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def phash_bits(image: Image.Image) -> int:
    return int(str(imagehash.phash(image)), 16)


TEXT_DISTINCT_MAX_JACCARD = 0.5  # clean captions overlap less than this (word 5-gram shingles), planted pairs >= 0.8


def word_shingles(text: str) -> set[str]:
    """Word 5-grams, or character 5-grams for text without spaces between words (zh, ja)."""
    words = text.lower().split()
    if len(words) >= 8:
        return {" ".join(words[i:i + 5]) for i in range(len(words) - 4)}
    flat = "".join(words)
    return {flat[i:i + 5] for i in range(max(1, len(flat) - 4))}


class Distinct:
    """What the clean samples must keep apart, so that dedup stages find exactly the planted pairs.

    Images: `admit_images` refuses an image within PHASH_DISTINCT_MIN bits of any admitted one.
    Captions: `text_is_new` refuses a caption whose shingle Jaccard with an admitted one reaches
    TEXT_DISTINCT_MAX_JACCARD (candidates from MinHash LSH, then checked exactly; deterministic seeds).
    """

    def __init__(self) -> None:
        self._hashes = np.zeros(0, dtype=np.uint64)
        self._lsh = MinHashLSH(threshold=0.4, num_perm=64)
        self._shingles: dict[str, set[str]] = {}

    def admit_images(self, *images: Image.Image) -> bool:
        hashes = np.array([phash_bits(im) for im in images], dtype=np.uint64)
        if len(hashes) > 1 and int(np.bitwise_count(hashes[0] ^ hashes[1])) <= PHASH_DISTINCT_MIN:
            return False
        for h in hashes:
            if len(self._hashes) and int(np.bitwise_count(self._hashes ^ h).min()) <= PHASH_DISTINCT_MIN:
                return False
        self._hashes = np.concatenate([self._hashes, hashes])
        return True

    def text_is_new(self, text: bytes) -> tuple[bool, tuple[set[str], MinHash]]:
        shingles = word_shingles(text.decode("utf-8"))
        minhash = MinHash(num_perm=64, seed=1)
        minhash.update_batch([s.encode("utf-8") for s in sorted(shingles)])
        for other in self._lsh.query(minhash):
            theirs = self._shingles[other]
            if len(shingles & theirs) / len(shingles | theirs) >= TEXT_DISTINCT_MAX_JACCARD:
                return False, (shingles, minhash)
        return True, (shingles, minhash)

    def add_text(self, sketch: tuple[set[str], MinHash]) -> None:
        name = str(len(self._shingles))
        self._shingles[name] = sketch[0]
        self._lsh.insert(name, sketch[1])


@functools.lru_cache(maxsize=None)
def load_font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    names = ("DejaVuSans-Bold.ttf", "LiberationSans-Bold.ttf") if bold else ("DejaVuSans.ttf", "LiberationSans-Regular.ttf")
    for name in names:
        for path in (name, f"/usr/share/fonts/truetype/dejavu/{name}", f"/usr/share/fonts/truetype/liberation/{name}"):
            try:
                return ImageFont.truetype(path, size)
            except OSError:
                continue
    return ImageFont.load_default(size=size)  # FreeType-based since Pillow 10.1


def text_box(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, font: ImageFont.FreeTypeFont) -> list[int]:
    return [int(v) for v in draw.textbbox(xy, text, font=font)]


def with_article(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def word_count(text: str) -> int:
    return len(text.split())


# ----------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------
@dataclass(eq=False)
class DemoRecord:
    kind: str
    caption: bytes  # the KEY.txt member verbatim (planted bad records may hold invalid UTF-8 or nothing)
    meta: dict[str, Any]  # kind-specific fields of KEY.json
    images: list[tuple[str, Any]]  # (extension, bytes; a PIL image until admitted); image i>0 is KEY.i.ext
    lang: str | None = None
    source_id: str = ""  # assigned once every record exists, from a seeded permutation

    def members(self) -> list[tuple[str, bytes]]:
        key = self.source_id
        meta = {"key": key, "kind": self.kind, **self.meta}
        if "caption" not in meta:
            try:
                meta["caption"] = self.caption.decode("utf-8")
            except UnicodeDecodeError:  # the planted text_not_utf8 record: the json cannot say it
                pass
        out = [(f"{key}.txt", self.caption), (f"{key}.json", json_bytes(meta))]
        for i, (ext, data) in enumerate(self.images):
            out.append((f"{key}.{ext}" if i == 0 else f"{key}.{i}.{ext}", data))
        return out


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8")


def image_meta(key_hint: str, ext: str, data: bytes) -> dict[str, Any]:
    width, height = Image.open(io.BytesIO(data)).size
    return {"url": f"https://demo.invalid/{key_hint}.{ext}", "width": width, "height": height,
            "original_width": width, "original_height": height, "status": "success"}


# ----------------------------------------------------------------------------------------------
# Scenes and their captions
# ----------------------------------------------------------------------------------------------
