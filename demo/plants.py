"""Planted problems: near-duplicate image variants, one bad record per reason code, near-duplicate captions.

Part of the demo corpus (`vlmloom.demo.corpus`); every output is a function of the seeded `random.Random` passed in.
"""
from __future__ import annotations

import random
import struct
import zlib

import numpy as np
from PIL import Image, ImageEnhance

from vlmloom.demo.common import (PHASH_NEAR_MAX, REENCODE_QUALITY, DemoRecord, decode_image, encode_image, phash_bits,
                                 seeded_rng, with_article)
from vlmloom.demo.documents import CITIES
from vlmloom.demo.gui import PEOPLE
from vlmloom.demo.scenes import SKIES, random_scene, render_scene, scene_caption

# Reason codes the curation stages must emit for the planted bad records (expected.json "bad_records").
EMPTY_BYTES = "empty_bytes"
TRUNCATED_IMAGE = "truncated_image"
UNIDENTIFIED_IMAGE = "unidentified_image"
DECOMPRESSION_BOMB = "decompression_bomb"
ASPECT_RATIO_TOO_LARGE = "aspect_ratio_too_large"
TEXT_NOT_UTF8 = "text_not_utf8"
CAPTION_EMPTY = "caption_empty"
UNSAFE_MEMBER_PATH = "unsafe_member_path"
NEAR_SOLID_IMAGE = "near_solid_image"
IMAGE_TOO_SMALL = "image_too_small"
BAD_RECORD_REASONS = (
    EMPTY_BYTES, TRUNCATED_IMAGE, UNIDENTIFIED_IMAGE, DECOMPRESSION_BOMB, ASPECT_RATIO_TOO_LARGE,
    TEXT_NOT_UTF8, CAPTION_EMPTY, UNSAFE_MEMBER_PATH, NEAR_SOLID_IMAGE, IMAGE_TOO_SMALL,
)
UNSAFE_SOURCE_ID = "../evil"  # the key of the record whose tar members escape the extraction directory


VARIANT_KINDS = ("resize", "reencode", "crop", "brightness")


def variant_bytes(image: Image.Image, how: str, rng: random.Random, strength: float) -> bytes:
    """One near-duplicate of `image`; `strength` in (0, 1] scales the change (lowered when pHash drifts too far)."""
    w, h = image.size
    if how == "resize":
        f = 1.0 - rng.uniform(0.2, 0.5) * strength
        return encode_image(image.resize((max(16, int(w * f)), max(16, int(h * f))), Image.Resampling.LANCZOS), "jpg")
    if how == "reencode":
        return encode_image(image, "jpg", quality=REENCODE_QUALITY)
    if how == "crop":
        l, t, r, b = (rng.uniform(0.01, 0.04) * strength for _ in range(4))
        return encode_image(image.crop((int(w * l), int(h * t), w - int(w * r), h - int(h * b))), "jpg")
    if how == "brightness":
        return encode_image(ImageEnhance.Brightness(image).enhance(1.0 + 0.1 * strength), "jpg")
    raise ValueError(f"unknown variant kind {how!r}; known: {', '.join(VARIANT_KINDS)}")


def close_variant(image: Image.Image, how: str, rng: random.Random) -> tuple[bytes, Image.Image]:
    target = phash_bits(image)
    for strength in (1.0, 0.6, 0.3, 0.1):
        data = variant_bytes(image, how, rng, strength)
        decoded = decode_image(data)
        if bin(phash_bits(decoded) ^ target).count("1") <= PHASH_NEAR_MAX:
            return data, decoded
    return data, decoded


# ----------------------------------------------------------------------------------------------
# Bad records
# ----------------------------------------------------------------------------------------------
def bomb_png() -> bytes:
    """A valid 16x16 PNG whose IHDR claims 30000x30000: Pillow refuses it on open (> 2x MAX_IMAGE_PIXELS)."""
    data = bytearray(encode_image(Image.new("RGB", (16, 16), (200, 30, 30)), "png"))
    ihdr = 8  # after the PNG signature: length(4) "IHDR"(4) width(4) height(4) ...
    data[ihdr + 8: ihdr + 16] = struct.pack(">II", 30000, 30000)
    crc = zlib.crc32(bytes(data[ihdr + 4: ihdr + 8 + 13])) & 0xFFFFFFFF
    data[ihdr + 8 + 13: ihdr + 8 + 17] = struct.pack(">I", crc)
    return bytes(data)


def planted_bad_records(seed: int) -> list[tuple[DemoRecord, str]]:
    rng = seeded_rng(seed, "bad")
    good_caption = lambda: scene_caption(random_scene(rng), "en", rng).encode("utf-8")  # noqa: E731
    scene_jpeg = encode_image(render_scene(random_scene(rng), rng), "jpg")
    noise = rng.randbytes(4096)
    near_solid = Image.fromarray(np.full((256, 256, 3), (90, 140, 200), dtype=np.uint8)
                                 + np.random.default_rng(rng.randrange(2**32)).integers(0, 2, (256, 256, 3), dtype=np.uint8), "RGB")
    plan = [
        (EMPTY_BYTES, good_caption(), [("jpg", b"")]),
        (TRUNCATED_IMAGE, good_caption(), [("jpg", scene_jpeg[: int(len(scene_jpeg) * 0.6)])]),
        (UNIDENTIFIED_IMAGE, good_caption(), [("jpg", noise)]),
        (DECOMPRESSION_BOMB, good_caption(), [("png", bomb_png())]),
        (ASPECT_RATIO_TOO_LARGE, good_caption(), [("png", encode_image(Image.fromarray(np.linspace((20, 60, 200), (240, 180, 30), 300).astype(np.uint8)[None], "RGB"), "png"))]),
        (TEXT_NOT_UTF8, "Un café crème sur la table en terrasse, au soleil du matin.".encode("latin-1") + b"\xff\xfe",
         [("jpg", encode_image(render_scene(random_scene(rng), rng), "jpg"))]),
        (CAPTION_EMPTY, b"", [("jpg", encode_image(render_scene(random_scene(rng), rng), "jpg"))]),
        (UNSAFE_MEMBER_PATH, good_caption(), [("jpg", encode_image(render_scene(random_scene(rng), rng), "jpg"))]),
        (NEAR_SOLID_IMAGE, good_caption(), [("png", encode_image(near_solid, "png"))]),
        (IMAGE_TOO_SMALL, good_caption(), [("jpg", encode_image(render_scene(random_scene(rng), rng).resize((20, 20)), "jpg"))]),
    ]
    out = []
    for reason, caption, images in plan:
        meta = {"url": f"https://demo.invalid/bad/{reason}.{images[0][0]}", "status": "success"}
        out.append((DemoRecord("caption", caption, meta, images, lang=None), reason))
    return out


# ----------------------------------------------------------------------------------------------
# Benchmark
# ----------------------------------------------------------------------------------------------


# Near-duplicate captions
# ----------------------------------------------------------------------------------------------
PARAGRAPH_TEMPLATES = (
    "{name} walked past the {adj} {thing} near {city} at {time} and counted {num} {adj2} {things}.",
    "On {day} the {adj} {thing} beside the {place} looked {adj2} under {a_sky} sky.",
    "{name} wrote that {num} {things} had been {verb} in {city} since {year}.",
    "The {adj} light of {time} made every {thing} in the {place} seem {adj2}.",
    "Later {name} and {name2} {verb2} a {adj} {thing} for the {event} in {city}.",
    "Nobody in {city} remembered a {day} as {adj} as this one, {name} said after the {event}.",
    "A {adj} {thing} and {num} {adj2} {things} were left near the {place} after the {event}.",
)
ADJECTIVES = ("quiet", "bright", "dusty", "narrow", "busy", "gentle", "cold", "warm", "crooked", "tall", "faded", "golden",
              "muddy", "silent", "windy", "small", "wooden", "painted", "weathered", "crowded", "shiny", "rusty", "pale", "broad")
THINGS = {"bench": "benches", "lantern": "lanterns", "bicycle": "bicycles", "fence": "fences", "kite": "kites",
          "wagon": "wagons", "statue": "statues", "umbrella": "umbrellas", "barrel": "barrels", "ladder": "ladders",
          "basket": "baskets", "bridge": "bridges", "tractor": "tractors", "window": "windows", "well": "wells"}
TIMES = ("dawn", "noon", "dusk", "midnight", "early morning", "late afternoon", "sunrise", "twilight")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
PARAGRAPH_PLACES = ("harbour", "station", "market", "old mill", "school", "church", "orchard", "river bank", "square")
VERBS = ("repaired", "painted", "sold", "moved", "counted", "photographed", "forgotten", "rebuilt")
VERBS2 = ("carried", "decorated", "borrowed", "cleaned", "measured", "sketched")
EVENTS = ("festival", "market day", "school fair", "harvest", "concert", "bicycle race", "parade", "auction")


def paragraph(rng: random.Random) -> str:
    """About 90 words of template prose with a slot every few words, so unrelated paragraphs share few shingles."""
    def fill(template: str) -> str:
        thing = rng.choice(sorted(THINGS))
        return template.format(
            name=rng.choice(PEOPLE).split()[0], name2=rng.choice(PEOPLE).split()[0], adj=rng.choice(ADJECTIVES),
            adj2=rng.choice(ADJECTIVES), thing=thing, things=THINGS[rng.choice(sorted(THINGS))], city=rng.choice(CITIES),
            time=rng.choice(TIMES), num=rng.choice(("two", "three", "four", "five", "six", "seven", "nine", "twelve")),
            day=rng.choice(DAYS), place=rng.choice(PARAGRAPH_PLACES), a_sky=with_article(rng.choice(sorted(SKIES))),
            verb=rng.choice(VERBS), verb2=rng.choice(VERBS2), year=rng.randint(1950, 2020), event=rng.choice(EVENTS))
    return " ".join(fill(t) for t in rng.sample(PARAGRAPH_TEMPLATES, 6))


def one_word_changed(text: str, rng: random.Random) -> str:
    """`text` with one adjective (not among the first or last ten words) replaced by another."""
    words = text.split(" ")
    positions = [i for i, w in enumerate(words) if w.strip(",.") in ADJECTIVES and 10 <= i < len(words) - 10]
    i = rng.choice(positions)
    core = words[i].strip(",.")
    words[i] = words[i].replace(core, rng.choice([a for a in ADJECTIVES if a != core]))
    return " ".join(words)


# ----------------------------------------------------------------------------------------------
# Build
# ----------------------------------------------------------------------------------------------
