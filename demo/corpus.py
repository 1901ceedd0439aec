"""Deterministic, offline demo corpus with planted problems, for demos and end-to-end tests of curation.

`build_demo_corpus(out_dir, DemoCorpusConfig(...))` writes::

    out_dir/tars/00000.tar ...     img2dataset-style webdataset: KEY.jpg|KEY.png (+ KEY.1.jpg), KEY.txt, KEY.json
    out_dir/manifest.parquet       byte-identical copies of ~10% of the clean tar samples, as a Parquet manifest
    out_dir/images/ID.jpg|png      image files for the manifest rows that carry `image_path` instead of bytes
    out_dir/benchmark/items.parquet  ~30 benchmark items (item_id, question, answer, image_bytes)
    out_dir/expected.json          what every curation stage should find (see `build_demo_corpus`)

Content is rendered with Pillow from seeded generators: landscape scenes and charts with captions in seven
languages that name what was drawn, OCR documents and receipts with line boxes, GUI screens with element boxes,
math/chart QA with verifiable answers and GLM-4.1V-style reasoning messages, and interleaved documents. On top
of the clean samples it plants exact duplicates, near-duplicate images (resize, re-encode, crop, brightness,
and chains of them), near-duplicate captions, benchmark contamination and one bad record per reason code.

Every output byte is a function of the config, the Pillow/pyarrow versions and the TrueType font found
(DejaVu Sans when installed): tars have sorted members, mtime 0 and uid/gid 0, JPEGs a fixed quality.

    python -m vlmloom.curation.demo_corpus OUT_DIR [NUM_SAMPLES] [SEED]
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import random
import struct
import sys
import tarfile
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any

import imagehash
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasketch import MinHash, MinHashLSH
from PIL import Image, ImageDraw, ImageEnhance, ImageFont

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

# pHash (imagehash.phash, 64 bits) guarantees: every planted variant is within NEAR_MAX of its parent, and
# every image meant to be distinct (clean samples, benchmark images, other planted images) is farther than
# DISTINCT_MIN from all the others, so any near-dup threshold k in [NEAR_MAX, DISTINCT_MIN) finds exactly
# the planted pairs.
PHASH_NEAR_MAX = 8
PHASH_DISTINCT_MIN = 10
JPEG_QUALITY = 90
REENCODE_QUALITY = 40
TAR_DIR = "tars"
IMAGES_DIR = "images"
BENCHMARK_DIR = "benchmark"
MANIFEST_FILE = "manifest.parquet"
EXPECTED_FILE = "expected.json"
BENCHMARK_FILE = "items.parquet"

MANIFEST_COLUMNS = pa.schema([
    ("id", pa.string()), ("image_bytes", pa.binary()), ("image_path", pa.string()),
    ("caption", pa.string()), ("kind", pa.string()), ("meta", pa.string()),
])
BENCHMARK_COLUMNS = pa.schema([
    ("item_id", pa.string()), ("question", pa.string()), ("answer", pa.string()), ("image_bytes", pa.binary()),
])


@dataclass(frozen=True, kw_only=True)
class DemoCorpusConfig:
    num_samples: int = 2000  # clean base samples, before planted duplicates, contamination and bad records; >= 50
    seed: int = 0  # any int; same config -> byte-identical output
    samples_per_tar: int = 500  # records (KEY groups) per tar shard; >= 1

    def __post_init__(self) -> None:
        if self.num_samples < 50:
            raise ValueError(f"demo_corpus.num_samples ({self.num_samples}) < 50: the planted duplicates, "
                             "contamination and bad records need at least 50 clean samples; raise num_samples")
        if self.samples_per_tar < 1:
            raise ValueError(f"demo_corpus.samples_per_tar ({self.samples_per_tar}) must be >= 1")


# ----------------------------------------------------------------------------------------------
# Randomness, encoding, hashing helpers
# ----------------------------------------------------------------------------------------------
def _rng(seed: int, *parts: Any) -> random.Random:
    """An independent stream per (seed, purpose, index, attempt): sample i does not depend on sample i-1."""
    digest = hashlib.sha256(repr((seed, *parts)).encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _encode(image: Image.Image, fmt: str, quality: int = JPEG_QUALITY) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpg":
        image.convert("RGB").save(buf, format="JPEG", quality=quality, optimize=False, progressive=False)
    else:
        image.save(buf, format="PNG", compress_level=3)  # 6 costs ~50% more time for ~15% smaller files
    return buf.getvalue()


def _decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def _phash(image: Image.Image) -> int:
    return int(str(imagehash.phash(image)), 16)


TEXT_DISTINCT_MAX_JACCARD = 0.5  # clean captions overlap less than this (word 5-gram shingles), planted pairs >= 0.8


def _shingles(text: str) -> set[str]:
    """Word 5-grams, or character 5-grams for text without spaces between words (zh, ja)."""
    words = text.lower().split()
    if len(words) >= 8:
        return {" ".join(words[i:i + 5]) for i in range(len(words) - 4)}
    flat = "".join(words)
    return {flat[i:i + 5] for i in range(max(1, len(flat) - 4))}


class _Distinct:
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
        hashes = np.array([_phash(im) for im in images], dtype=np.uint64)
        if len(hashes) > 1 and int(np.bitwise_count(hashes[0] ^ hashes[1])) <= PHASH_DISTINCT_MIN:
            return False
        for h in hashes:
            if len(self._hashes) and int(np.bitwise_count(self._hashes ^ h).min()) <= PHASH_DISTINCT_MIN:
                return False
        self._hashes = np.concatenate([self._hashes, hashes])
        return True

    def text_is_new(self, text: bytes) -> tuple[bool, tuple[set[str], MinHash]]:
        shingles = _shingles(text.decode("utf-8"))
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
def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    names = ("DejaVuSans-Bold.ttf", "LiberationSans-Bold.ttf") if bold else ("DejaVuSans.ttf", "LiberationSans-Regular.ttf")
    for name in names:
        for path in (name, f"/usr/share/fonts/truetype/dejavu/{name}", f"/usr/share/fonts/truetype/liberation/{name}"):
            try:
                return ImageFont.truetype(path, size)
            except OSError:
                continue
    return ImageFont.load_default(size=size)  # FreeType-based since Pillow 10.1


def _text_box(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, font: ImageFont.FreeTypeFont) -> list[int]:
    return [int(v) for v in draw.textbbox(xy, text, font=font)]


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _word_count(text: str) -> int:
    return len(text.split())


# ----------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------
@dataclass(eq=False)
class _Record:
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
        out = [(f"{key}.txt", self.caption), (f"{key}.json", _json_bytes(meta))]
        for i, (ext, data) in enumerate(self.images):
            out.append((f"{key}.{ext}" if i == 0 else f"{key}.{i}.{ext}", data))
        return out


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8")


def _image_meta(key_hint: str, ext: str, data: bytes) -> dict[str, Any]:
    width, height = Image.open(io.BytesIO(data)).size
    return {"url": f"https://demo.invalid/{key_hint}.{ext}", "width": width, "height": height,
            "original_width": width, "original_height": height, "status": "success"}


# ----------------------------------------------------------------------------------------------
# Scenes and their captions
# ----------------------------------------------------------------------------------------------
SKIES = {  # name -> (top colour, horizon colour)
    "blue": ((40, 90, 200), (150, 200, 250)), "orange": ((120, 60, 140), (250, 160, 60)),
    "gray": ((90, 95, 105), (185, 190, 195)), "pink": ((200, 110, 170), (250, 200, 210)),
}
GROUNDS = {"green": (60, 150, 60), "brown": (130, 90, 50), "yellow": (220, 195, 110), "white": (235, 235, 240)}
COLOURS = {
    "red": (210, 40, 40), "blue": (40, 70, 210), "yellow": (240, 210, 40), "orange": (240, 140, 30),
    "purple": (130, 50, 170), "white": (245, 245, 245), "black": (25, 25, 25), "pink": (240, 130, 180),
    "brown": (120, 75, 35), "green": (40, 140, 50), "gray": (128, 128, 128),
}
NOUN_COLOURS = {
    "house": ("red", "blue", "yellow", "white", "orange", "pink"), "tree": ("green",), "car": ("red", "blue", "black", "white", "yellow"),
    "dog": ("brown", "black", "white"), "mountain": ("gray", "blue", "brown"), "boat": ("red", "white", "yellow", "blue"),
    "cloud": ("white", "gray"), "flower": ("red", "yellow", "purple", "pink", "orange"),
}
PLURALS = {"house": "houses", "tree": "trees", "car": "cars", "dog": "dogs", "mountain": "mountains",
           "boat": "boats", "cloud": "clouds", "flower": "flowers"}
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}

# (one, two) per noun, and colour words for the sky / ground, per language.
NOUNS_I18N = {
    "de": {"house": ("ein Haus", "zwei Häuser"), "tree": ("ein Baum", "zwei Bäume"), "car": ("ein Auto", "zwei Autos"),
           "dog": ("ein Hund", "zwei Hunde"), "mountain": ("ein Berg", "zwei Berge"), "boat": ("ein Boot", "zwei Boote"),
           "cloud": ("eine Wolke", "zwei Wolken"), "flower": ("eine Blume", "zwei Blumen"), "sun": ("eine Sonne", "")},
    "fr": {"house": ("une maison", "deux maisons"), "tree": ("un arbre", "deux arbres"), "car": ("une voiture", "deux voitures"),
           "dog": ("un chien", "deux chiens"), "mountain": ("une montagne", "deux montagnes"), "boat": ("un bateau", "deux bateaux"),
           "cloud": ("un nuage", "deux nuages"), "flower": ("une fleur", "deux fleurs"), "sun": ("un soleil", "")},
    "es": {"house": ("una casa", "dos casas"), "tree": ("un árbol", "dos árboles"), "car": ("un coche", "dos coches"),
           "dog": ("un perro", "dos perros"), "mountain": ("una montaña", "dos montañas"), "boat": ("un barco", "dos barcos"),
           "cloud": ("una nube", "dos nubes"), "flower": ("una flor", "dos flores"), "sun": ("un sol", "")},
    "ru": {"house": ("дом", "два дома"), "tree": ("дерево", "два дерева"), "car": ("машина", "две машины"),
           "dog": ("собака", "две собаки"), "mountain": ("гора", "две горы"), "boat": ("лодка", "две лодки"),
           "cloud": ("облако", "два облака"), "flower": ("цветок", "два цветка"), "sun": ("солнце", "")},
    "zh": {"house": ("一座房子", "两座房子"), "tree": ("一棵树", "两棵树"), "car": ("一辆汽车", "两辆汽车"),
           "dog": ("一只狗", "两只狗"), "mountain": ("一座山", "两座山"), "boat": ("一艘船", "两艘船"),
           "cloud": ("一朵云", "两朵云"), "flower": ("一朵花", "两朵花"), "sun": ("太阳", "")},
    "ja": {"house": ("一軒の家", "二軒の家"), "tree": ("一本の木", "二本の木"), "car": ("一台の車", "二台の車"),
           "dog": ("一匹の犬", "二匹の犬"), "mountain": ("一つの山", "二つの山"), "boat": ("一艘の船", "二艘の船"),
           "cloud": ("一つの雲", "二つの雲"), "flower": ("一輪の花", "二輪の花"), "sun": ("太陽", "")},
}
SKY_I18N = {
    "de": {"blue": "blau", "orange": "orange", "gray": "grau", "pink": "rosa"},
    "fr": {"blue": "bleu", "orange": "orange", "gray": "gris", "pink": "rose"},
    "es": {"blue": "azul", "orange": "naranja", "gray": "gris", "pink": "rosa"},
    "ru": {"blue": "голубое", "orange": "оранжевое", "gray": "серое", "pink": "розовое"},
    "zh": {"blue": "蓝色", "orange": "橙色", "gray": "灰色", "pink": "粉色"},
    "ja": {"blue": "青色", "orange": "オレンジ色", "gray": "灰色", "pink": "ピンク色"},
}
GROUND_I18N = {
    "de": {"green": "grün", "brown": "braun", "yellow": "gelb", "white": "weiß"},
    "fr": {"green": "vert", "brown": "brun", "yellow": "jaune", "white": "blanc"},
    "es": {"green": "verde", "brown": "marrón", "yellow": "amarillo", "white": "blanco"},
    "ru": {"green": "зелёная", "brown": "коричневая", "yellow": "жёлтая", "white": "белая"},
    "zh": {"green": "绿色", "brown": "棕色", "yellow": "黄色", "white": "白色"},
    "ja": {"green": "緑色", "brown": "茶色", "yellow": "黄色", "white": "白色"},
}
I18N_TEMPLATES = {
    "de": ("Auf diesem Bild sieht man eine ruhige Landschaft. Zu sehen sind {list}. Der Himmel ist {sky} und der Boden ist {ground}.",
           "Eine einfache Zeichnung einer Landschaft mit {list}, der Himmel darüber ist {sky} und der Boden ist {ground}."),
    "fr": ("Cette image montre un paysage calme avec {list}. Le ciel est {sky} et le sol est {ground}.",
           "Un dessin simple de la campagne : on y voit {list}, sous un ciel {sky}, et le sol est {ground}."),
    "es": ("Esta imagen muestra un paisaje tranquilo con {list}. El cielo es {sky} y el suelo es {ground}.",
           "Un dibujo sencillo del campo donde se ven {list}, bajo un cielo {sky}, y el suelo es {ground}."),
    "ru": ("На этой картинке изображён спокойный пейзаж: {list}. Небо {sky}, а земля {ground}.",
           "Простой рисунок сельской местности, на котором видны {list}. Небо здесь {sky}, земля {ground}."),
    "zh": ("这幅画描绘了一个安静的风景，画面中有{list}。天空是{sky}的，地面是{ground}的。",
           "一幅简单的乡村图画，可以看到{list}，天空是{sky}的，地面是{ground}的。"),
    "ja": ("この絵には静かな風景が描かれていて、{list}があります。空は{sky}で、地面は{ground}です。",
           "田舎を描いたシンプルな絵で、{list}が見えます。空は{sky}で、地面は{ground}です。"),
}
I18N_JOIN = {"de": (", ", " und "), "fr": (", ", " et "), "es": (", ", " y "), "ru": (", ", " и "),
             "zh": ("、", "和"), "ja": ("、", "と")}
EN_TEMPLATES = (
    "A {style} picture of {list} under {a_sky} sky, with {ground} ground stretching to the horizon.",
    "This image shows {list}. The sky is {sky} and the ground below is {ground}.",
    "Illustration of a quiet {place} with {list}, seen on a day when the sky is {sky}.",
    "In this {style} drawing of a {place} we can see {list} on {ground} ground.",
    "{List} in a {place}, painted in a {style} style below {a_sky} sky.",
)
EN_EXTRA = (
    "The {colour} {noun} is on the {side} side of the picture.",
    "Everything is drawn with simple shapes and flat colours.",
    "A few colourful circles and polygons decorate the scene.",
    "The horizon sits {horizon} in the frame.",
)
STYLES = ("simple", "colourful", "childlike", "flat", "cartoon", "minimal")
PLACES = ("countryside", "village", "valley", "meadow", "hillside")


@dataclass
class _Scene:
    width: int
    height: int
    sky: str
    ground: str
    horizon: float  # fraction of height
    sun: tuple[float, float] | None
    water: bool
    objects: list[tuple[str, str, float]] = field(default_factory=list)  # (noun, colour, x fraction)
    shapes: int = 0

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for noun, _, _ in self.objects:
            out[noun] = out.get(noun, 0) + 1
        return out


def _random_scene(rng: random.Random, max_per_noun: int = 3) -> _Scene:
    side = rng.randint(200, 640)
    aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
    width, height = (side, max(160, min(640, int(side / aspect)))) if aspect >= 1 else (max(160, min(640, int(side * aspect))), side)
    nouns = rng.sample(sorted(NOUN_COLOURS), rng.randint(2, 4))
    water = "boat" in nouns
    objects = []
    for noun in nouns:
        for _ in range(rng.randint(1, max_per_noun)):
            objects.append((noun, rng.choice(NOUN_COLOURS[noun]), rng.uniform(0.05, 0.95)))
    return _Scene(width=width, height=height, sky=rng.choice(sorted(SKIES)), ground=rng.choice(sorted(GROUNDS)),
                  horizon=rng.uniform(0.3, 0.75), sun=(rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.3)) if rng.random() < 0.6 else None,
                  water=water, objects=objects, shapes=rng.randint(0, 5))


def _jitter(colour: tuple[int, int, int], rng: random.Random, amount: int = 25) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in colour)  # type: ignore[return-value]


def _shaded(pixels: np.ndarray, rng: random.Random, blobs: int = 3, strength: float = 1.0, step: int = 8,
            scale: int = 1) -> np.ndarray:
    """Add low-frequency light/shade blobs: they dominate pHash, so distinct images get distinct hashes.

    `scale` is how much bigger the final image is than `pixels` (blob sizes are drawn in final pixels).
    """
    h, w = pixels.shape[:2]
    # the blobs are smooth: compute them on a coarse grid and upsample
    gy, gx = (g * scale for g in np.mgrid[0:h:step, 0:w:step].astype(np.float32))
    h, w = h * scale, w * scale
    shade = np.zeros(gx.shape, dtype=np.float32)
    for _ in range(blobs):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.2, 0.6) * max(w, h)
        shade += rng.choice((-1, 1)) * rng.uniform(25, 55) * strength * np.exp(-((gx - cx) ** 2 + (gy - cy) ** 2) / (2 * r * r))
    full = shade if step == 1 else np.asarray(Image.fromarray(shade, "F").resize(pixels.shape[1::-1], Image.Resampling.BILINEAR))
    return np.clip(pixels.astype(np.float32) + full[:, :, None], 0, 255).astype(np.uint8)


def _backdrop(w: int, h: int, colour: tuple[int, int, int], rng: random.Random, strength: float = 1.0, blobs: int = 3) -> Image.Image:
    """A flat colour with `_shaded` blobs, computed on an 8x coarser grid and upsampled (it is smooth anyway)."""
    coarse = np.empty(((h + 7) // 8, (w + 7) // 8, 3), dtype=np.uint8)
    coarse[:] = colour
    small = Image.fromarray(_shaded(coarse, rng, blobs=blobs, strength=strength, step=1, scale=8), "RGB")
    return small.resize((w, h), Image.Resampling.BILINEAR)


def _render_scene(scene: _Scene, rng: random.Random) -> Image.Image:
    w, h = scene.width, scene.height
    horizon = int(h * scene.horizon)
    top, bottom = (np.array(c, dtype=np.float32) for c in SKIES[scene.sky])
    t = np.linspace(0.0, 1.0, max(horizon, 1), dtype=np.float32)[:, None]
    sky = (top * (1 - t) + bottom * t).astype(np.uint8)
    pixels = np.empty((h, w, 3), dtype=np.uint8)
    pixels[:horizon] = sky[:, None, :]
    pixels[horizon:] = np.array(_jitter(GROUNDS[scene.ground], rng, 15), dtype=np.uint8)
    image = Image.fromarray(_shaded(pixels, rng), "RGB")
    draw = ImageDraw.Draw(image)
    unit = min(w, h)
    if scene.sun:
        sx, sy, r = scene.sun[0] * w, scene.sun[1] * h, unit * rng.uniform(0.05, 0.1)
        draw.ellipse([sx - r, sy - r, sx + r, sy + r], fill=(255, 215, 60))
    if scene.water:
        draw.rectangle([0, horizon, w, horizon + int((h - horizon) * 0.45)], fill=_jitter((50, 110, 190), rng, 15))
    order = sorted(scene.objects, key=lambda o: ("mountain", "cloud").count(o[0]) * -1)  # mountains/clouds behind
    for noun, colour, fx in order:
        _draw_object(draw, noun, COLOURS[colour], fx * w, horizon, w, h, unit, rng)
    for _ in range(scene.shapes):
        colour = rng.choice(sorted(COLOURS.values()))
        cx, cy, r = rng.uniform(0, w), rng.uniform(horizon, h), unit * rng.uniform(0.02, 0.06)
        if rng.random() < 0.5:
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        else:
            n = rng.randint(3, 6)
            draw.polygon([(cx + r * math.cos(2 * math.pi * k / n + 0.3), cy + r * math.sin(2 * math.pi * k / n + 0.3)) for k in range(n)], fill=colour)
    return image


def _draw_object(draw: ImageDraw.ImageDraw, noun: str, colour: tuple[int, int, int], x: float, horizon: int,
                 w: int, h: int, unit: int, rng: random.Random) -> None:
    ground_y = horizon + rng.uniform(0.1, 0.7) * (h - horizon)
    s = unit * rng.uniform(0.12, 0.22)
    if noun == "mountain":
        mw, mh = s * rng.uniform(2.0, 3.5), (horizon) * rng.uniform(0.35, 0.8)
        draw.polygon([(x - mw / 2, horizon), (x, horizon - mh), (x + mw / 2, horizon)], fill=colour)
        draw.polygon([(x - mw * 0.1, horizon - mh * 0.8), (x, horizon - mh), (x + mw * 0.1, horizon - mh * 0.8)], fill=(245, 245, 250))
    elif noun == "cloud":
        cy = horizon * rng.uniform(0.1, 0.5)
        for dx in (-0.5, 0.0, 0.5):
            draw.ellipse([x + dx * s - s * 0.45, cy - s * 0.3, x + dx * s + s * 0.45, cy + s * 0.3], fill=colour)
    elif noun == "house":
        draw.rectangle([x - s / 2, ground_y - s, x + s / 2, ground_y], fill=colour, outline=(40, 30, 30))
        draw.polygon([(x - s * 0.65, ground_y - s), (x, ground_y - s * 1.6), (x + s * 0.65, ground_y - s)], fill=(140, 40, 30))
        draw.rectangle([x - s * 0.1, ground_y - s * 0.45, x + s * 0.1, ground_y], fill=(90, 60, 30))
        draw.rectangle([x - s * 0.38, ground_y - s * 0.8, x - s * 0.18, ground_y - s * 0.6], fill=(200, 230, 255))
    elif noun == "tree":
        draw.rectangle([x - s * 0.08, ground_y - s * 0.9, x + s * 0.08, ground_y], fill=(100, 65, 30))
        draw.ellipse([x - s * 0.45, ground_y - s * 1.7, x + s * 0.45, ground_y - s * 0.7], fill=_jitter(colour, rng, 20))
    elif noun == "car":
        draw.rectangle([x - s * 0.7, ground_y - s * 0.45, x + s * 0.7, ground_y - s * 0.15], fill=colour)
        draw.rectangle([x - s * 0.35, ground_y - s * 0.7, x + s * 0.35, ground_y - s * 0.45], fill=colour)
        for wx in (-0.42, 0.42):
            draw.ellipse([x + wx * s - s * 0.15, ground_y - s * 0.3, x + wx * s + s * 0.15, ground_y], fill=(20, 20, 20))
    elif noun == "dog":
        draw.ellipse([x - s * 0.4, ground_y - s * 0.55, x + s * 0.3, ground_y - s * 0.25], fill=colour)
        draw.ellipse([x + s * 0.2, ground_y - s * 0.75, x + s * 0.5, ground_y - s * 0.45], fill=colour)
        for lx in (-0.3, -0.15, 0.05, 0.2):
            draw.rectangle([x + lx * s, ground_y - s * 0.3, x + lx * s + s * 0.07, ground_y], fill=colour)
    elif noun == "boat":
        wy = horizon + (h - horizon) * rng.uniform(0.1, 0.35)
        draw.polygon([(x - s * 0.6, wy - s * 0.25), (x + s * 0.6, wy - s * 0.25), (x + s * 0.4, wy), (x - s * 0.4, wy)], fill=colour)
        draw.line([(x, wy - s * 0.25), (x, wy - s * 1.0)], fill=(60, 40, 20), width=max(2, int(s * 0.05)))
        draw.polygon([(x, wy - s * 1.0), (x + s * 0.45, wy - s * 0.35), (x, wy - s * 0.35)], fill=(250, 250, 245))
    elif noun == "flower":
        draw.line([(x, ground_y), (x, ground_y - s * 0.6)], fill=(30, 120, 40), width=max(2, int(s * 0.05)))
        for k in range(5):
            a = 2 * math.pi * k / 5
            px, py = x + math.cos(a) * s * 0.15, ground_y - s * 0.6 + math.sin(a) * s * 0.15
            draw.ellipse([px - s * 0.1, py - s * 0.1, px + s * 0.1, py + s * 0.1], fill=colour)
        draw.ellipse([x - s * 0.07, ground_y - s * 0.67, x + s * 0.07, ground_y - s * 0.53], fill=(250, 220, 50))


def _en_phrase(noun: str, count: int, colours: list[str]) -> str:
    colour = colours[0] if len(set(colours)) == 1 else None
    if count == 1:
        word = f"{colours[0]} {noun}" if noun not in ("tree",) else noun
        return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"
    plural = PLURALS[noun]
    if colour and noun != "tree":
        return f"{NUMBER_WORDS[count]} {colour} {plural}"
    return f"{NUMBER_WORDS[count]} {plural}"


def _join_en(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _scene_caption(scene: _Scene, lang: str, rng: random.Random) -> str:
    """A caption of 8-25 words (for zh/ja: one or two sentences) naming what `_render_scene` drew."""
    counts = scene.counts()
    nouns = [n for n in sorted(counts, key=lambda n: rng.random())]
    if lang == "en":
        items = [_en_phrase(n, counts[n], [c for m, c, _ in scene.objects if m == n]) for n in nouns]
        if scene.sun:
            items.append("a bright sun")
        for attempt in range(30):  # long lists name fewer objects (still all drawn) to stay within 25 words
            template = EN_TEMPLATES[1] if attempt == 29 else rng.choice(EN_TEMPLATES)
            listed = _join_en(items[: max(1, len(items) - attempt // 6)])
            text = template.format(style=rng.choice(STYLES), place="lakeside" if scene.water else rng.choice(PLACES),
                                   list=listed, List=listed[0].upper() + listed[1:], sky=scene.sky, a_sky=_a(scene.sky),
                                   ground=scene.ground)
            if rng.random() < 0.4 or _word_count(text) < 8:
                noun, colour, fx = rng.choice(scene.objects)
                extra = rng.choice(EN_EXTRA).format(colour=colour, noun=noun, side="left" if fx < 0.5 else "right",
                                                    horizon="high" if scene.horizon < 0.5 else "low")
                text = f"{text} {extra}"
            if 8 <= _word_count(text) <= 25:
                return text
        return text
    table = NOUNS_I18N[lang]
    items = [table[n][0] if counts[n] == 1 else table[n][1] for n in nouns]
    if scene.sun:
        items.append(table["sun"][0])
    sep, last = I18N_JOIN[lang]
    template = rng.choice(I18N_TEMPLATES[lang])
    while True:  # name fewer (still drawn) objects until the sentence fits 25 words
        joined = items[0] if len(items) == 1 else sep.join(items[:-1]) + last + items[-1]
        text = template.format(list=joined, sky=SKY_I18N[lang][scene.sky], ground=GROUND_I18N[lang][scene.ground])
        if _word_count(text) <= 25 or len(items) == 1:
            return text
        items = items[:-1]


def _scene_record(rng: random.Random, lang: str = "en") -> tuple[_Record, Image.Image]:
    scene = _random_scene(rng, max_per_noun=3 if lang == "en" else 2)  # other languages only say "one" or "two"
    image = _render_scene(scene, rng)
    caption = _scene_caption(scene, lang, rng)
    data = image  # encoded by _make_distinct once the image is admitted
    meta = {"objects": sorted(scene.counts()), "counts": scene.counts(), "sky": scene.sky, "ground": scene.ground}
    return _Record("caption", caption.encode("utf-8"), meta, [("jpg", data)], lang=lang), image


# ----------------------------------------------------------------------------------------------
# Charts, QA
# ----------------------------------------------------------------------------------------------
CHART_METRICS = ("sales", "visitors", "rainfall in mm", "revenue in thousands", "downloads", "orders", "temperature")
CITIES = ("Oslo", "Lisbon", "Denver", "Osaka", "Nairobi", "Lima", "Perth", "Quebec", "Tallinn", "Porto",
          "Austin", "Bergen", "Kyoto", "Seville", "Dublin", "Leeds")
CHART_LABELS = (("Q1", "Q2", "Q3", "Q4"), ("Jan", "Feb", "Mar", "Apr", "May", "Jun"),
                ("2019", "2020", "2021", "2022", "2023", "2024"), ("Mon", "Tue", "Wed", "Thu", "Fri"),
                ("North", "South", "East", "West"))


def _chart(rng: random.Random) -> tuple[Image.Image, dict[str, Any]]:
    kind = rng.choice(("bar", "bar", "line"))
    labels = list(rng.choice(CHART_LABELS))
    labels = labels[: rng.randint(3, len(labels))]
    values = [rng.randint(3, 95) for _ in labels]
    metric = rng.choice(CHART_METRICS)
    w, h = rng.randint(420, 640), rng.randint(300, 460)
    tint = rng.choice(((236, 236, 230), (225, 235, 245), (240, 228, 220), (228, 242, 228), (240, 235, 210), (235, 225, 240)))
    image = _backdrop(w, h, _jitter(tint, rng, 12), rng, strength=1.0)
    draw = ImageDraw.Draw(image)
    where = f"{rng.choice(CITIES)} {rng.randint(2015, 2024)}"
    title = f"{metric.capitalize()}, {where}"
    draw.text((20, 12), title, fill=(20, 20, 20), font=_font(20, bold=True))
    left, right, top, bottom = 50, w - 20, 50, h - 40
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=(40, 40, 40), width=2)
    slot = (right - left) / len(labels)
    colour = rng.choice(sorted(COLOURS.items()))[1] if kind == "line" else None
    points = []
    for i, (label, value) in enumerate(zip(labels, values)):
        cx = left + slot * (i + 0.5)
        y = bottom - (bottom - top) * value / 100
        if kind == "bar":
            fill = rng.choice([c for n, c in sorted(COLOURS.items()) if n not in ("white",)])
            draw.rectangle([cx - slot * 0.3, y, cx + slot * 0.3, bottom], fill=fill)
        points.append((cx, y))
        draw.text((cx, y - (4 if kind == "bar" else 10)), str(value), fill=(20, 20, 20), font=_font(16), anchor="mb")
        draw.text((cx, bottom + 6), label, fill=(20, 20, 20), font=_font(16), anchor="mt")
    if kind == "line":
        draw.line(points, fill=colour, width=3)
        for px, py in points:
            draw.ellipse([px - 5, py - 5, px + 5, py + 5], fill=colour)
    chart = {"type": kind, "title": title, "metric": metric, "where": where, "labels": labels, "values": values}
    return image, chart


def _chart_record(rng: random.Random) -> tuple[_Record, Image.Image]:
    image, chart = _chart(rng)
    pairs = ", ".join(f"{label} {value}" for label, value in zip(chart["labels"], chart["values"]))
    caption = f"{chart['type'].capitalize()} chart of {chart['metric']} in {chart['where']}: {pairs}."
    return _Record("caption", caption.encode("utf-8"), {"chart": chart}, [("png", image)], lang="en"), image


def _qa_messages(question: str, reasoning: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"<image>{question}"},
            {"role": "assistant", "content": f"<think>{reasoning}</think><answer>The answer is "
                                             f"<|begin_of_box|>{answer}<|end_of_box|></answer>"}]


def _qa_record(rng: random.Random) -> tuple[_Record, Image.Image]:
    if rng.random() < 0.5:
        image, chart = _chart(rng)
        labels, values = chart["labels"], chart["values"]
        if rng.random() < 0.5:
            i = rng.randrange(len(labels))
            question = rng.choice((
                "What is the value of {label} in the {kind} chart of {metric} in {where}?",
                "In the {kind} chart of {metric} for {where}, which number is shown for {label}?",
                "Read the {kind} chart ({where}): how much {metric} does {label} have?",
            )).format(label=labels[i], kind=chart["type"], metric=chart["metric"], where=chart["where"])
            answer = str(values[i])
            reasoning = f"The bar or point labelled {labels[i]} is annotated with {values[i]}."
        else:
            question = rng.choice((
                "What is the total of the values for {labels} in the chart of {metric} in {where}?",
                "Add up {labels} in this {kind} chart of {metric} ({where}). What is the sum?",
                "The {kind} chart shows {metric} in {where} for {labels}; what do they sum to?",
            )).format(labels=_join_en(labels), kind=chart["type"], metric=chart["metric"], where=chart["where"])
            answer = str(sum(values))
            reasoning = "Adding the values: " + " + ".join(map(str, values)) + f" = {sum(values)}."
        domain, data, ext = "chart", image, "png"
        meta_extra: dict[str, Any] = {"chart": chart}
    else:
        a, b, c = rng.randint(2, 60), rng.randint(2, 40), rng.randint(2, 12)
        op = rng.choice(("+", "-", "*"))
        first = {"+": a + b, "-": a - b, "*": a * b}[op]
        second_op = rng.choice(("+", "-"))
        result = first + c if second_op == "+" else first - c
        shown = {"+": "+", "-": "-", "*": "×"}[op]
        expr = f"({a} {shown} {b}) {second_op} {c}"
        question = f"What is {expr}?"
        answer = str(result)
        reasoning = f"First {a} {shown} {b} = {first}. Then {first} {second_op} {c} = {result}."
        w = rng.randint(360, 640)
        h = rng.randint(max(180, w // 2), 360)
        image = _backdrop(w, h, _jitter(rng.choice(((240, 235, 220), (220, 230, 240), (230, 240, 225), (240, 225, 230))), rng, 10), rng)
        draw = ImageDraw.Draw(image)
        draw.rectangle([rng.randint(0, w // 3), 0, rng.randint(2 * w // 3, w), rng.randint(h // 6, h // 3)], fill=_jitter((180, 200, 230), rng, 40))
        draw.text((w // 2 + rng.randint(-30, 30), h // 2 + rng.randint(-20, 20)), f"{expr} = ?", fill=(15, 15, 15),
                  font=_font(rng.randint(28, 40), bold=True), anchor="mm")
        domain, data, ext, meta_extra = "math", image, "png", {}
    meta = {"question": question, "answer": answer, "domain": domain,
            "messages": _qa_messages(question, reasoning, answer), **meta_extra}
    return _Record("qa", question.encode("utf-8"), meta, [(ext, data)], lang="en"), image


# ----------------------------------------------------------------------------------------------
# OCR documents and GUI screens
# ----------------------------------------------------------------------------------------------
SHOPS = ("Green Leaf Market", "Corner Bakery", "Harbor Hardware", "Sunrise Pharmacy", "City Books", "Maple Coffee House",
         "Northside Grocery", "Blue River Deli")
STREETS = ("Oak Street", "Main Road", "Station Square", "Hill Avenue", "Park Lane", "River Walk", "Church Street")
ITEMS = ("Apples", "Bread", "Milk", "Coffee beans", "Orange juice", "Eggs", "Butter", "Cheese", "Tomatoes", "Rice",
         "Pasta", "Olive oil", "Bananas", "Yogurt", "Chocolate", "Tea", "Notebook", "Batteries", "Light bulb", "Soap")
WORDS = ("the", "meeting", "will", "take", "place", "on", "next", "Monday", "in", "main", "hall", "please", "bring",
         "your", "report", "and", "a", "copy", "of", "budget", "all", "staff", "are", "invited", "to", "join", "us",
         "for", "lunch", "after", "presentation", "new", "office", "hours", "start", "from", "first", "week", "June",
         "library", "closed", "during", "holidays", "thank", "you", "patience", "visitors", "should", "sign", "at",
         "front", "desk", "project", "deadline", "has", "been", "moved", "Friday", "questions", "can", "be", "sent",
         "team", "garden", "open", "every", "morning", "until", "noon", "parking", "is", "available", "behind", "building")


def _ocr_record(rng: random.Random) -> tuple[_Record, Image.Image]:
    size = rng.randint(26, 32)
    font = _font(size)
    line_height = int(size * rng.uniform(1.7, 2.1))
    margin = rng.randint(36, 70)
    if rng.random() < 0.5:  # receipt
        w = rng.randint(600, 760)
        items = rng.sample(ITEMS, rng.randint(3, 7))
        prices = [rng.randint(50, 1500) / 100 for _ in items]
        lines = [rng.choice(SHOPS), f"{rng.randint(1, 199)} {rng.choice(STREETS)}",
                 f"Date: 2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} Time: {rng.randint(8, 20):02d}:{rng.randint(0, 59):02d}"]
        lines += [f"{item} {price:.2f}" for item, price in zip(items, prices)]
        lines += [f"Total {sum(prices):.2f}", rng.choice(("Thank you for shopping with us", "Please keep this receipt", "Have a nice day"))]
        doc = "receipt"
    else:  # notice / letter
        w = rng.randint(760, 1000)
        lines = [rng.choice(("Notice to all staff", "Weekly update", "Library announcement", "Office memo", "Team news"))]
        max_width = w - 2 * margin
        for _ in range(rng.randint(4, 8)):
            words: list[str] = []
            target = rng.randint(4, 9)
            while len(words) < target:
                candidate = words + [rng.choice(WORDS)]
                if font.getlength(" ".join(candidate)) > max_width:
                    break
                words = candidate
            lines.append(" ".join(words).capitalize())
        doc = "notice"
    h = 2 * margin + line_height * len(lines)
    # The white page lies on a shaded desk at a random offset: the desk keeps documents apart for pHash
    # while the text itself stays black on white.
    desk = _jitter(rng.choice(((120, 85, 55), (70, 80, 100), (150, 160, 150), (190, 175, 150), (60, 60, 60), (170, 120, 120))), rng, 25)
    ox, oy = rng.randint(10, 360), rng.randint(10, 300)
    image = _backdrop(w + ox + rng.randint(10, 360), h + oy + rng.randint(10, 300), desk, rng)
    draw = ImageDraw.Draw(image)
    image.paste(_backdrop(w, h, (248, 248, 245), rng, strength=0.5), (ox, oy))  # unevenly lit paper
    logo = rng.randint(24, margin - 8)  # above the first line, so it never touches text
    draw.rectangle([ox + w - margin // 2 - logo * 2, oy + 4, ox + w - margin // 2, oy + 4 + logo], fill=_jitter(rng.choice(sorted(COLOURS.values())), rng, 20))
    boxes = []
    for i, text in enumerate(lines):
        x, y = ox + margin, oy + margin + i * line_height
        draw.text((x, y), text, fill=(0, 0, 0), font=_font(size, bold=(i == 0)))
        boxes.append({"text": text, "box": _text_box(draw, (x, y), text, _font(size, bold=(i == 0)))})
    caption = "\n".join(lines)
    return _Record("ocr", caption.encode("utf-8"), {"lines": boxes, "document": doc}, [("png", image)], lang="en"), image


APPS = ("Notes", "Weather", "Mail", "Calendar", "Bank", "Photos", "Music", "Travel", "Shop", "Fitness")
SCREENS = {
    "login": (["Email", "Password"], ["Sign in", "Cancel"], ["Remember me"]),
    "signup": (["Name", "Email", "Password"], ["Create account", "Back"], ["I agree to the terms"]),
    "search": (["Search"], ["Search", "Clear"], ["Only exact matches"]),
    "settings": (["Display name", "Language"], ["Save", "Reset"], ["Dark mode", "Notifications"]),
    "checkout": (["Card number", "Expiry date", "Address"], ["Pay now", "Edit cart"], ["Save card"]),
    "contact": (["Subject", "Message"], ["Send", "Discard"], ["Copy to me"]),
}
PEOPLE = ("Anna Berg", "Omar Haddad", "Li Wei", "Maria Lopez", "Tom Becker", "Sara Nilsson", "Ken Sato", "Eva Novak",
          "Raj Patel", "Julia Costa", "Noah Fischer", "Mia Rossi", "Ivan Petrov", "Lena Vogel", "Ali Demir", "Zoe Martin")
FIELD_VALUES = {
    "Name": lambda rng: rng.choice(PEOPLE),
    "Display name": lambda rng: rng.choice(PEOPLE).split()[0] + str(rng.randint(1, 99)),
    "Email": lambda rng: rng.choice(PEOPLE).lower().replace(" ", ".") + f"{rng.randint(1, 99)}@example.com",
    "Search": lambda rng: " ".join(rng.sample(ITEMS, 2)).lower(),
    "Subject": lambda rng: f"Order {rng.randint(1000, 9999)} {rng.choice(('delayed', 'question', 'refund', 'invoice'))}",
    "Address": lambda rng: f"{rng.randint(1, 199)} {rng.choice(STREETS)}, {rng.choice(CITIES)}",
    "Language": lambda rng: rng.choice(("English", "Deutsch", "Français", "Español", "Italiano", "Svenska")),
}
GUI_CAPTIONS = (
    '{app} app, {screen} screen on a {device} in {theme} mode with {a_banner} banner{side}. '
    'The {field} field reads "{value}" and the main button says "{primary}".',
    'Screenshot of the {screen} page in {app} ({device}, {theme} theme): {a_banner} header picture{side}, '
    '"{value}" typed into {field}, and a "{primary}" button.',
    '{Theme} {app} {screen} form on a {device}; {field} is filled with "{value}", {a_banner} banner sits on top{side}, '
    'and "{primary}" submits it.',
)
THEMES = ((40, 100, 200), (30, 150, 100), (200, 80, 40), (120, 60, 170), (50, 50, 60), (0, 140, 160))


def _gui_record(rng: random.Random) -> tuple[_Record, Image.Image]:
    app, screen = rng.choice(APPS), rng.choice(sorted(SCREENS))
    fields, buttons, checks = SCREENS[screen]
    w = rng.choice((360, 412, 480, 800, 1024))
    theme = _jitter(rng.choice(THEMES), rng, 20)
    dark = rng.random() < 0.3
    background = (34, 36, 42) if dark else (255, 255, 255) if rng.random() < 0.6 else (242, 244, 248)
    ink, field_fill = ((230, 230, 235), (50, 53, 60)) if dark else ((50, 50, 55), (255, 255, 255))
    size = 22 if w < 600 else 24
    font, bold = _font(size), _font(size + 2, bold=True)
    pad = 24 if w < 600 else rng.randint(60, 200)
    field_w = w - 2 * pad
    panel = 0 if w < 600 or rng.random() < 0.3 else int(w * rng.uniform(0.25, 0.4))  # a side picture on wide screens
    panel_left = rng.random() < 0.5
    if panel:
        field_w = w - panel - 2 * pad
        if panel_left:
            pad += panel
    banner = rng.randint(80, 300)  # a picture banner under the title bar, as app screens often have
    h = 90 + banner + len(fields) * 95 + len(checks) * 50 + 120 + rng.randint(0, 120)
    image = _backdrop(w, h, background, rng, strength=0.6)
    banner_colour, panel_colour = rng.choice(sorted(COLOURS)), rng.choice(sorted(COLOURS))
    image.paste(_backdrop(w, banner, _jitter(COLOURS[banner_colour], rng, 30), rng, strength=2.0), (0, 64))
    if panel:
        image.paste(_backdrop(panel, h - 64 - banner, _jitter(COLOURS[panel_colour], rng, 30), rng, strength=2.0),
                    (0 if panel_left else w - panel, 64 + banner))
    draw = ImageDraw.Draw(image)
    elements = []
    filled: tuple[str, str] | None = None
    title = f"{app} - {screen.capitalize()}"
    draw.rectangle([0, 0, w, 64], fill=theme)
    draw.text((pad, 32), title, fill=(255, 255, 255), font=bold, anchor="lm")
    elements.append({"label": title, "type": "title", "box": [int(v) for v in draw.textbbox((pad, 32), title, font=bold, anchor="lm")]})
    y = 90 + banner
    for name in fields:
        draw.text((pad, y), name, fill=ink, font=font)
        box = [pad, y + size + 8, pad + field_w, y + size + 8 + 44]
        draw.rounded_rectangle(box, radius=6, outline=(150, 150, 160), width=2, fill=field_fill)
        if name in FIELD_VALUES and not filled:
            filled = (name, FIELD_VALUES[name](rng))
            draw.text((box[0] + 12, (box[1] + box[3]) // 2), filled[1], fill=ink, font=font, anchor="lm")
        elements.append({"label": name, "type": "text_field", "box": box})
        y += 95
    for name in checks:
        box = [pad, y, pad + 26, y + 26]
        draw.rectangle(box, outline=theme, width=3, fill=theme if rng.random() < 0.5 else (255, 255, 255))
        draw.text((pad + 40, y + 13), name, fill=ink, font=font, anchor="lm")
        elements.append({"label": name, "type": "checkbox", "box": box})
        y += 50
    y += 10
    x = pad
    for i, name in enumerate(buttons):
        bw = int(font.getlength(name)) + 48
        box = [x, y, x + bw, y + 52]
        primary = i == 0
        draw.rounded_rectangle(box, radius=8, fill=theme if primary else (225, 228, 232))
        draw.text(((box[0] + box[2]) // 2, (box[1] + box[3]) // 2), name, fill=(255, 255, 255) if primary else (30, 30, 30), font=font, anchor="mm")
        elements.append({"label": name, "type": "button", "box": box})
        x += bw + 20
    assert filled is not None  # every screen in SCREENS has a field with a FIELD_VALUES generator
    theme_name = "dark" if dark else "light"
    side = f" and {_a(panel_colour)} side panel on the {'left' if panel_left else 'right'}" if panel else ""
    # slots every few words keep captions of the same screen type apart for text dedup
    caption = rng.choice(GUI_CAPTIONS).format(
        app=app, screen=screen, device="phone" if w < 600 else "desktop", theme=theme_name, Theme=theme_name.capitalize(),
        a_banner=_a(banner_colour), side=side, field=filled[0], value=filled[1], primary=buttons[0])
    meta = {"app": app, "screen": screen, "elements": elements}
    return _Record("gui", caption.encode("utf-8"), meta, [("png", image)], lang="en"), image


def _interleaved_record(rng: random.Random) -> tuple[_Record, list[Image.Image]]:
    scenes = [_random_scene(rng) for _ in range(2)]
    images = [_render_scene(s, rng) for s in scenes]
    texts = [
        rng.choice(("Notes from a weekend trip through the countryside.", "A short travel diary with two sketches.",
                    "Our drawing class tried two landscapes this week.")),
        _scene_caption(scenes[0], "en", rng),
        "Later that day the weather changed and we drew a second view.",
        _scene_caption(scenes[1], "en", rng),
    ]
    segments = [{"type": "text", "text": texts[0]}, {"type": "image", "image_index": 0}, {"type": "text", "text": texts[1]},
                {"type": "text", "text": texts[2]}, {"type": "image", "image_index": 1}, {"type": "text", "text": texts[3]}]
    caption = " ".join(texts)
    record = _Record("interleaved", caption.encode("utf-8"), {"segments": segments},
                     [("jpg", images[0]), ("jpg", images[1])], lang="en")
    return record, images


# ----------------------------------------------------------------------------------------------
# Near-duplicate image variants
# ----------------------------------------------------------------------------------------------
VARIANT_KINDS = ("resize", "reencode", "crop", "brightness")


def _variant(image: Image.Image, how: str, rng: random.Random, strength: float) -> bytes:
    """One near-duplicate of `image`; `strength` in (0, 1] scales the change (lowered when pHash drifts too far)."""
    w, h = image.size
    if how == "resize":
        f = 1.0 - rng.uniform(0.2, 0.5) * strength
        return _encode(image.resize((max(16, int(w * f)), max(16, int(h * f))), Image.Resampling.LANCZOS), "jpg")
    if how == "reencode":
        return _encode(image, "jpg", quality=REENCODE_QUALITY)
    if how == "crop":
        l, t, r, b = (rng.uniform(0.01, 0.04) * strength for _ in range(4))
        return _encode(image.crop((int(w * l), int(h * t), w - int(w * r), h - int(h * b))), "jpg")
    if how == "brightness":
        return _encode(ImageEnhance.Brightness(image).enhance(1.0 + 0.1 * strength), "jpg")
    raise ValueError(f"unknown variant kind {how!r}; known: {', '.join(VARIANT_KINDS)}")


def _close_variant(image: Image.Image, how: str, rng: random.Random) -> tuple[bytes, Image.Image]:
    target = _phash(image)
    for strength in (1.0, 0.6, 0.3, 0.1):
        data = _variant(image, how, rng, strength)
        decoded = _decode(data)
        if bin(_phash(decoded) ^ target).count("1") <= PHASH_NEAR_MAX:
            return data, decoded
    return data, decoded


# ----------------------------------------------------------------------------------------------
# Bad records
# ----------------------------------------------------------------------------------------------
def _bomb_png() -> bytes:
    """A valid 16x16 PNG whose IHDR claims 30000x30000: Pillow refuses it on open (> 2x MAX_IMAGE_PIXELS)."""
    data = bytearray(_encode(Image.new("RGB", (16, 16), (200, 30, 30)), "png"))
    ihdr = 8  # after the PNG signature: length(4) "IHDR"(4) width(4) height(4) ...
    data[ihdr + 8: ihdr + 16] = struct.pack(">II", 30000, 30000)
    crc = zlib.crc32(bytes(data[ihdr + 4: ihdr + 8 + 13])) & 0xFFFFFFFF
    data[ihdr + 8 + 13: ihdr + 8 + 17] = struct.pack(">I", crc)
    return bytes(data)


def _bad_records(seed: int) -> list[tuple[_Record, str]]:
    rng = _rng(seed, "bad")
    good_caption = lambda: _scene_caption(_random_scene(rng), "en", rng).encode("utf-8")  # noqa: E731
    scene_jpeg = _encode(_render_scene(_random_scene(rng), rng), "jpg")
    noise = rng.randbytes(4096)
    near_solid = Image.fromarray(np.full((256, 256, 3), (90, 140, 200), dtype=np.uint8)
                                 + np.random.default_rng(rng.randrange(2**32)).integers(0, 2, (256, 256, 3), dtype=np.uint8), "RGB")
    plan = [
        (EMPTY_BYTES, good_caption(), [("jpg", b"")]),
        (TRUNCATED_IMAGE, good_caption(), [("jpg", scene_jpeg[: int(len(scene_jpeg) * 0.6)])]),
        (UNIDENTIFIED_IMAGE, good_caption(), [("jpg", noise)]),
        (DECOMPRESSION_BOMB, good_caption(), [("png", _bomb_png())]),
        (ASPECT_RATIO_TOO_LARGE, good_caption(), [("png", _encode(Image.fromarray(np.linspace((20, 60, 200), (240, 180, 30), 300).astype(np.uint8)[None], "RGB"), "png"))]),
        (TEXT_NOT_UTF8, "Un café crème sur la table en terrasse, au soleil du matin.".encode("latin-1") + b"\xff\xfe",
         [("jpg", _encode(_render_scene(_random_scene(rng), rng), "jpg"))]),
        (CAPTION_EMPTY, b"", [("jpg", _encode(_render_scene(_random_scene(rng), rng), "jpg"))]),
        (UNSAFE_MEMBER_PATH, good_caption(), [("jpg", _encode(_render_scene(_random_scene(rng), rng), "jpg"))]),
        (NEAR_SOLID_IMAGE, good_caption(), [("png", _encode(near_solid, "png"))]),
        (IMAGE_TOO_SMALL, good_caption(), [("jpg", _encode(_render_scene(_random_scene(rng), rng).resize((20, 20)), "jpg"))]),
    ]
    out = []
    for reason, caption, images in plan:
        meta = {"url": f"https://demo.invalid/bad/{reason}.{images[0][0]}", "status": "success"}
        out.append((_Record("caption", caption, meta, images, lang=None), reason))
    return out


# ----------------------------------------------------------------------------------------------
# Benchmark
# ----------------------------------------------------------------------------------------------
BENCH_PREFIXES = ("Looking carefully at this picture", "Considering only what is drawn here",
                  "Based on the visible content of the image", "Without guessing beyond the drawing",
                  "If you study the illustration closely")


def _benchmark_item(rng: random.Random, index: int) -> tuple[dict[str, Any], Image.Image]:
    scene = _random_scene(rng)
    image = _render_scene(scene, rng)
    counts = scene.counts()
    noun = rng.choice(sorted(counts))
    prefix = rng.choice(BENCH_PREFIXES)
    style = rng.randrange(3)
    if style == 0:
        question = (f"{prefix}, how many {PLURALS[noun]} can you count in this {rng.choice(PLACES)} scene "
                    f"with its {scene.sky} sky and {scene.ground} ground?")
        answer = str(counts[noun])
    elif style == 1:
        question = (f"{prefix}, what colour is the sky above the {PLURALS[rng.choice(sorted(counts))]} "
                    f"and the {rng.choice(STYLES)} {rng.choice(PLACES)} shown in item {index}?")
        answer = scene.sky
    else:
        absent = rng.choice([n for n in sorted(NOUN_COLOURS) if n not in counts] or [noun])
        question = (f"{prefix}, is there any {absent} standing on the {scene.ground} ground of this "
                    f"{rng.choice(STYLES)} {rng.choice(PLACES)}? Answer yes or no for item {index}.")
        answer = "yes" if absent in counts else "no"
    return {"item_id": f"bench-{index:03d}", "question": question, "answer": answer}, image


def _ngrams(text: str, n: int = 13) -> set[tuple[str, ...]]:
    words = text.lower().split()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


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


def _paragraph(rng: random.Random) -> str:
    """About 90 words of template prose with a slot every few words, so unrelated paragraphs share few shingles."""
    def fill(template: str) -> str:
        thing = rng.choice(sorted(THINGS))
        return template.format(
            name=rng.choice(PEOPLE).split()[0], name2=rng.choice(PEOPLE).split()[0], adj=rng.choice(ADJECTIVES),
            adj2=rng.choice(ADJECTIVES), thing=thing, things=THINGS[rng.choice(sorted(THINGS))], city=rng.choice(CITIES),
            time=rng.choice(TIMES), num=rng.choice(("two", "three", "four", "five", "six", "seven", "nine", "twelve")),
            day=rng.choice(DAYS), place=rng.choice(PARAGRAPH_PLACES), a_sky=_a(rng.choice(sorted(SKIES))),
            verb=rng.choice(VERBS), verb2=rng.choice(VERBS2), year=rng.randint(1950, 2020), event=rng.choice(EVENTS))
    return " ".join(fill(t) for t in rng.sample(PARAGRAPH_TEMPLATES, 6))


def _one_word_changed(text: str, rng: random.Random) -> str:
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
def _kind_pattern(seed: int) -> list[str]:
    """Kinds (and scene caption languages) of clean samples cycle through a shuffled block of 100, so every
    mix of 100 or more samples holds every kind and language in fixed shares."""
    scenes = ["scene:en"] * 32 + [f"scene:{lang}" for lang in I18N_TEMPLATES for _ in range(3)]
    pattern = scenes + ["chart"] * 10 + ["ocr"] * 15 + ["gui"] * 10 + ["qa"] * 12 + ["interleaved"] * 3
    _rng(seed, "kinds").shuffle(pattern)
    return pattern


_MAKERS = {"scene": _scene_record, "chart": _chart_record, "ocr": _ocr_record, "gui": _gui_record, "qa": _qa_record}


def _make_distinct(seed: int, purpose: str, index: int, maker: Any, distinct: _Distinct) -> tuple[_Record, Any]:
    for attempt in range(200):
        record, images = maker(_rng(seed, purpose, index, attempt))
        text_ok, sketch = distinct.text_is_new(record.caption)
        if text_ok and distinct.admit_images(*(images if isinstance(images, list) else [images])):
            distinct.add_text(sketch)
            # rendering is cheap, encoding is not: makers hand over PIL images, encoded only once admitted
            record.images = [(ext, _encode(im, ext) if isinstance(im, Image.Image) else im) for ext, im in record.images]
            return record, images
    raise RuntimeError(f"demo corpus: could not render a distinct image and caption for {purpose} #{index} in 200 attempts")


def build_demo_corpus(out_dir: str, config: DemoCorpusConfig = DemoCorpusConfig()) -> dict[str, Any]:
    """Write the demo corpus under `out_dir` (must not exist or be empty) and return its expectations.

    The expectations (also written to `expected.json`) hold: `total_records` (KEY groups in the tars, bad
    ones included), `manifest_records` and `manifest_ids` (each manifest row is a byte-identical copy of the
    tar record with the same source id), `bad_records` {source_id: reason code}, `exact_duplicates`
    [[orig_id, dup_id]], `near_duplicates` [[parent_id, variant_id, variant_kind]] (a chain's parent is
    itself a variant), `near_duplicate_texts` [[orig_id, variant_id]], `benchmark_plants`
    [{source_id, item_id, how}], `kinds` {kind: records in tars}, `languages` {source_id: lang} for the
    scene captions, `clean_ids`, `num_shards` and the config.
    """
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise FileExistsError(f"demo corpus: {out_dir} exists and is not empty; pick a new directory or remove it")
    seed = config.seed
    distinct = _Distinct()
    records: list[_Record] = []

    # Benchmark first: its images must stay distinct from everything the corpus holds unless planted.
    bench_items, bench_grams = [], set()
    index = 0
    while len(bench_items) < 30:
        for attempt in range(50):
            item, image = _benchmark_item(_rng(seed, "bench", index, attempt), index)
            grams = _ngrams(item["question"])
            if not grams & bench_grams and distinct.admit_images(image):
                break
        else:
            raise RuntimeError(f"demo corpus: benchmark item {index} not distinct after 50 attempts")
        bench_grams |= grams
        item["image_bytes"] = _encode(image, "jpg")
        bench_items.append(item)
        index += 1

    # Clean samples.
    pattern = _kind_pattern(seed)
    clean: list[_Record] = []
    for i in range(config.num_samples):
        kind, _, lang = pattern[i % len(pattern)].partition(":")
        maker = _interleaved_record if kind == "interleaved" else _MAKERS[kind]
        if lang:
            maker = functools.partial(_scene_record, lang=lang)
        record, _ = _make_distinct(seed, "clean", i, maker, distinct)
        clean.append(record)
    records += clean

    plan_rng = _rng(seed, "plan")
    single = [i for i, r in enumerate(clean) if r.kind != "interleaved"]
    scenes = [i for i, r in enumerate(clean) if r.kind == "caption" and "chart" not in r.meta]
    n_plant = max(3, round(0.03 * config.num_samples))

    # Exact duplicates: same image bytes, new id; half keep the caption, half (scenes) get a sentence appended.
    exact: list[tuple[_Record, _Record]] = []
    dup_sources = plan_rng.sample(single, n_plant)
    for j, i in enumerate(dup_sources):
        orig = clean[i]
        caption = orig.caption
        if j % 2 and orig.kind == "caption" and "chart" not in orig.meta:
            caption = (orig.caption.decode("utf-8") + " " + plan_rng.choice(EN_EXTRA[1:3])).encode("utf-8")
        dup = _Record(orig.kind, caption, dict(orig.meta), list(orig.images), lang=orig.lang)
        exact.append((orig, dup))
        records.append(dup)

    # Near-duplicate images of scene originals, plus two chains (variant of a variant).
    near: list[tuple[_Record, _Record, str]] = []
    # originals of at least 320 px a side, so that even a 0.5x resize passes a 160 px minimum-size filter
    big_scenes = [i for i in scenes if i not in set(dup_sources) and min(Image.open(io.BytesIO(clean[i].images[0][1])).size) >= 320]
    near_sources = plan_rng.sample(big_scenes, n_plant)
    variants: list[tuple[_Record, Image.Image]] = []
    for j, i in enumerate(near_sources):
        how = VARIANT_KINDS[j % len(VARIANT_KINDS)]
        orig = clean[i]
        data, decoded = _close_variant(_decode(orig.images[0][1]), how, _rng(seed, "near", j))
        rec = _Record(orig.kind, _scene_caption_again(orig, seed, j), dict(orig.meta), [("jpg", data)], lang=orig.lang)
        near.append((orig, rec, how))
        variants.append((rec, decoded))
        records.append(rec)
    for j, (parent, parent_image) in enumerate(variants[:2]):
        how = VARIANT_KINDS[(j + 2) % len(VARIANT_KINDS)]
        data, _ = _close_variant(parent_image, how, _rng(seed, "chain", j))
        rec = _Record(parent.kind, parent.caption, dict(parent.meta), [("jpg", data)], lang=parent.lang)
        near.append((parent, rec, how))
        records.append(rec)

    # Near-duplicate captions: two distinct images, one long caption with one word changed.
    near_texts: list[tuple[_Record, _Record]] = []
    for j in range(max(2, config.num_samples // 100)):
        rng = _rng(seed, "near_text", j)
        pair = []
        for k in range(2):
            for attempt in range(50):
                scene = _random_scene(_rng(seed, "near_text", j, k, attempt))
                image = _render_scene(scene, _rng(seed, "near_text_render", j, k, attempt))
                if distinct.admit_images(image):
                    break
            else:
                raise RuntimeError(f"demo corpus: near-duplicate text image {j}/{k} not distinct after 50 attempts")
            pair.append((scene, image))
        text = f"{_scene_caption(pair[0][0], 'en', rng)} {_paragraph(rng)}"
        variant_text = _one_word_changed(text, rng)
        a = _Record("caption", text.encode("utf-8"), {"objects": sorted(pair[0][0].counts())}, [("jpg", _encode(pair[0][1], "jpg"))], lang="en")
        b = _Record("caption", variant_text.encode("utf-8"), {"objects": sorted(pair[1][0].counts())}, [("jpg", _encode(pair[1][1], "jpg"))], lang="en")
        near_texts.append((a, b))
        records += [a, b]

    # Benchmark contamination: an exact image copy, a re-encoded near copy, three captions quoting a question.
    plants: list[tuple[_Record, str, str]] = []
    planted_items = _rng(seed, "bench_plants").sample(range(len(bench_items)), 5)
    for j, (item_index, how) in enumerate(zip(planted_items, ("image", "near_image", "text", "text", "text"))):
        item = bench_items[item_index]
        rng = _rng(seed, "bench_plant", j)
        if how == "image":
            images = [("jpg", item["image_bytes"])]
            caption = rng.choice(("A landscape drawing found on a website, with a few simple objects under the sky.",
                                  "Simple sketch of the countryside with a few objects, copied from an online quiz."))
        elif how == "near_image":
            data, _ = _close_variant(_decode(item["image_bytes"]), "reencode", rng)
            images = [("jpg", data)]
            caption = "An illustrated landscape with simple shapes and colours, shared in a drawing forum last year."
        else:
            for attempt in range(50):
                scene = _random_scene(_rng(seed, "bench_plant_scene", j, attempt))
                image = _render_scene(scene, rng)
                if distinct.admit_images(image):
                    break
            else:
                raise RuntimeError(f"demo corpus: benchmark plant image {j} not distinct after 50 attempts")
            images = [("jpg", _encode(image, "jpg"))]
            caption = f"{_scene_caption(scene, 'en', rng)} Quiz: {item['question']}"
        rec = _Record("caption", caption.encode("utf-8"), {}, images, lang="en")
        plants.append((rec, item["item_id"], how))
        records.append(rec)

    bad = _bad_records(seed)
    records += [r for r, _ in bad]

    # Source ids from a seeded permutation, so planted records are spread over all shards.
    order = list(range(len(records)))
    _rng(seed, "ids").shuffle(order)
    for record, number in zip(records, order):
        record.source_id = f"{number:06d}"
    for record, reason in bad:
        if reason == UNSAFE_MEMBER_PATH:
            record.source_id = UNSAFE_SOURCE_ID
    for record in records:
        if record.images and "url" not in record.meta:
            record.meta.update(_image_meta(record.source_id, record.images[0][0], record.images[0][1]))

    # Manifest: ~10% of the clean single-image samples; half by bytes, half by a path under images/.
    manifest_idx = sorted(_rng(seed, "manifest").sample(single, max(2, config.num_samples // 10)), key=lambda i: clean[i].source_id)
    _write_all(out_dir, config, records, [clean[i] for i in manifest_idx], bench_items)

    expected = {
        "config": asdict(config),
        "total_records": len(records),
        "num_shards": math.ceil(len(records) / config.samples_per_tar),
        "manifest_records": len(manifest_idx),
        "manifest_ids": [clean[i].source_id for i in manifest_idx],
        "bad_records": {r.source_id: reason for r, reason in sorted(bad, key=lambda b: b[0].source_id)},
        "exact_duplicates": sorted([o.source_id, d.source_id] for o, d in exact),
        "near_duplicates": sorted([o.source_id, v.source_id, how] for o, v, how in near),
        "near_duplicate_texts": sorted([a.source_id, b.source_id] for a, b in near_texts),
        "benchmark_plants": sorted(({"source_id": r.source_id, "item_id": item_id, "how": how} for r, item_id, how in plants),
                                   key=lambda p: p["source_id"]),
        "benchmark_items": len(bench_items),
        "kinds": _count(r.kind for r in records),
        "languages": {r.source_id: r.lang for r in sorted(clean, key=lambda r: r.source_id)
                      if r.kind == "caption" and "chart" not in r.meta},
        "clean_ids": sorted(r.source_id for r in clean),
        "reason_codes": list(BAD_RECORD_REASONS),
    }
    with open(os.path.join(out_dir, EXPECTED_FILE), "w", encoding="utf-8") as f:
        json.dump(expected, f, indent=1, sort_keys=True, ensure_ascii=False)
        f.write("\n")
    return expected


def _scene_caption_again(orig: _Record, seed: int, j: int) -> bytes:
    """Variants get a caption in the original's language that differs in wording but not in content."""
    if orig.lang != "en":
        return orig.caption
    extra = _rng(seed, "near_caption", j).choice(EN_EXTRA[1:3])
    return (orig.caption.decode("utf-8") + " " + extra).encode("utf-8")


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def _write_all(out_dir: str, config: DemoCorpusConfig, records: list[_Record], manifest: list[_Record],
               bench_items: list[dict[str, Any]]) -> None:
    os.makedirs(os.path.join(out_dir, TAR_DIR), exist_ok=True)
    ordered = sorted(records, key=lambda r: r.source_id)
    for shard, start in enumerate(range(0, len(ordered), config.samples_per_tar)):
        members = [m for r in ordered[start:start + config.samples_per_tar] for m in r.members()]
        _write_tar(os.path.join(out_dir, TAR_DIR, f"{shard:05d}.tar"), sorted(members))

    rows = []
    os.makedirs(os.path.join(out_dir, IMAGES_DIR), exist_ok=True)
    for j, record in enumerate(manifest):
        ext, data = record.images[0]
        meta = {"key": record.source_id, "kind": record.kind, **record.meta}
        path = None
        if j % 2:
            path = f"{IMAGES_DIR}/{record.source_id}.{ext}"
            with open(os.path.join(out_dir, path), "wb") as f:
                f.write(data)
        rows.append({"id": record.source_id, "image_bytes": None if path else data, "image_path": path,
                     "caption": record.caption.decode("utf-8"), "kind": record.kind,
                     "meta": json.dumps(meta, sort_keys=True, ensure_ascii=False)})
    _write_parquet(pa.Table.from_pylist(rows, schema=MANIFEST_COLUMNS), os.path.join(out_dir, MANIFEST_FILE))

    os.makedirs(os.path.join(out_dir, BENCHMARK_DIR), exist_ok=True)
    _write_parquet(pa.Table.from_pylist(bench_items, schema=BENCHMARK_COLUMNS), os.path.join(out_dir, BENCHMARK_DIR, BENCHMARK_FILE))


def _write_tar(path: str, members: list[tuple[str, bytes]]) -> None:
    tmp = path + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, path)


def _write_parquet(table: pa.Table, path: str) -> None:
    tmp = path + ".tmp"
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        raise SystemExit("usage: python -m vlmloom.curation.demo_corpus OUT_DIR [NUM_SAMPLES] [SEED]")
    config = DemoCorpusConfig(num_samples=int(args[1]) if len(args) > 1 else 2000, seed=int(args[2]) if len(args) > 2 else 0)
    expected = build_demo_corpus(args[0], config)
    print(json.dumps({k: expected[k] for k in ("total_records", "num_shards", "manifest_records", "kinds")}))


if __name__ == "__main__":
    main()
