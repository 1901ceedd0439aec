"""Landscape scenes rendered with Pillow, their captions in seven languages, and interleaved documents built from them.

Part of the demo corpus (`vlmloom.demo.corpus`); every output is a function of the seeded `random.Random` passed in.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from vlmloom.demo.common import DemoRecord, with_article, word_count

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
class Scene:
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


def random_scene(rng: random.Random, max_per_noun: int = 3) -> Scene:
    side = rng.randint(200, 640)
    aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
    width, height = (side, max(160, min(640, int(side / aspect)))) if aspect >= 1 else (max(160, min(640, int(side * aspect))), side)
    nouns = rng.sample(sorted(NOUN_COLOURS), rng.randint(2, 4))
    water = "boat" in nouns
    objects = []
    for noun in nouns:
        for _ in range(rng.randint(1, max_per_noun)):
            objects.append((noun, rng.choice(NOUN_COLOURS[noun]), rng.uniform(0.05, 0.95)))
    return Scene(width=width, height=height, sky=rng.choice(sorted(SKIES)), ground=rng.choice(sorted(GROUNDS)),
                  horizon=rng.uniform(0.3, 0.75), sun=(rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.3)) if rng.random() < 0.6 else None,
                  water=water, objects=objects, shapes=rng.randint(0, 5))


def jitter(colour: tuple[int, int, int], rng: random.Random, amount: int = 25) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in colour)  # type: ignore[return-value]


def add_shading(pixels: np.ndarray, rng: random.Random, blobs: int = 3, strength: float = 1.0, step: int = 8,
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


def backdrop(w: int, h: int, colour: tuple[int, int, int], rng: random.Random, strength: float = 1.0, blobs: int = 3) -> Image.Image:
    """A flat colour with `add_shading` blobs, computed on an 8x coarser grid and upsampled (it is smooth anyway)."""
    coarse = np.empty(((h + 7) // 8, (w + 7) // 8, 3), dtype=np.uint8)
    coarse[:] = colour
    small = Image.fromarray(add_shading(coarse, rng, blobs=blobs, strength=strength, step=1, scale=8), "RGB")
    return small.resize((w, h), Image.Resampling.BILINEAR)


def render_scene(scene: Scene, rng: random.Random) -> Image.Image:
    w, h = scene.width, scene.height
    horizon = int(h * scene.horizon)
    top, bottom = (np.array(c, dtype=np.float32) for c in SKIES[scene.sky])
    t = np.linspace(0.0, 1.0, max(horizon, 1), dtype=np.float32)[:, None]
    sky = (top * (1 - t) + bottom * t).astype(np.uint8)
    pixels = np.empty((h, w, 3), dtype=np.uint8)
    pixels[:horizon] = sky[:, None, :]
    pixels[horizon:] = np.array(jitter(GROUNDS[scene.ground], rng, 15), dtype=np.uint8)
    image = Image.fromarray(add_shading(pixels, rng), "RGB")
    draw = ImageDraw.Draw(image)
    unit = min(w, h)
    if scene.sun:
        sx, sy, r = scene.sun[0] * w, scene.sun[1] * h, unit * rng.uniform(0.05, 0.1)
        draw.ellipse([sx - r, sy - r, sx + r, sy + r], fill=(255, 215, 60))
    if scene.water:
        draw.rectangle([0, horizon, w, horizon + int((h - horizon) * 0.45)], fill=jitter((50, 110, 190), rng, 15))
    order = sorted(scene.objects, key=lambda o: ("mountain", "cloud").count(o[0]) * -1)  # mountains/clouds behind
    for noun, colour, fx in order:
        draw_object(draw, noun, COLOURS[colour], fx * w, horizon, w, h, unit, rng)
    for _ in range(scene.shapes):
        colour = rng.choice(sorted(COLOURS.values()))
        cx, cy, r = rng.uniform(0, w), rng.uniform(horizon, h), unit * rng.uniform(0.02, 0.06)
        if rng.random() < 0.5:
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
        else:
            n = rng.randint(3, 6)
            draw.polygon([(cx + r * math.cos(2 * math.pi * k / n + 0.3), cy + r * math.sin(2 * math.pi * k / n + 0.3)) for k in range(n)], fill=colour)
    return image


def draw_object(draw: ImageDraw.ImageDraw, noun: str, colour: tuple[int, int, int], x: float, horizon: int,
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
        draw.ellipse([x - s * 0.45, ground_y - s * 1.7, x + s * 0.45, ground_y - s * 0.7], fill=jitter(colour, rng, 20))
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


def en_phrase(noun: str, count: int, colours: list[str]) -> str:
    colour = colours[0] if len(set(colours)) == 1 else None
    if count == 1:
        word = f"{colours[0]} {noun}" if noun not in ("tree",) else noun
        return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"
    plural = PLURALS[noun]
    if colour and noun != "tree":
        return f"{NUMBER_WORDS[count]} {colour} {plural}"
    return f"{NUMBER_WORDS[count]} {plural}"


def join_en(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def scene_caption(scene: Scene, lang: str, rng: random.Random) -> str:
    """A caption of 8-25 words (for zh/ja: one or two sentences) naming what `render_scene` drew."""
    counts = scene.counts()
    nouns = [n for n in sorted(counts, key=lambda n: rng.random())]
    if lang == "en":
        items = [en_phrase(n, counts[n], [c for m, c, _ in scene.objects if m == n]) for n in nouns]
        if scene.sun:
            items.append("a bright sun")
        for attempt in range(30):  # long lists name fewer objects (still all drawn) to stay within 25 words
            template = EN_TEMPLATES[1] if attempt == 29 else rng.choice(EN_TEMPLATES)
            listed = join_en(items[: max(1, len(items) - attempt // 6)])
            text = template.format(style=rng.choice(STYLES), place="lakeside" if scene.water else rng.choice(PLACES),
                                   list=listed, List=listed[0].upper() + listed[1:], sky=scene.sky, a_sky=with_article(scene.sky),
                                   ground=scene.ground)
            if rng.random() < 0.4 or word_count(text) < 8:
                noun, colour, fx = rng.choice(scene.objects)
                extra = rng.choice(EN_EXTRA).format(colour=colour, noun=noun, side="left" if fx < 0.5 else "right",
                                                    horizon="high" if scene.horizon < 0.5 else "low")
                text = f"{text} {extra}"
            if 8 <= word_count(text) <= 25:
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
        if word_count(text) <= 25 or len(items) == 1:
            return text
        items = items[:-1]


def scene_record(rng: random.Random, lang: str = "en") -> tuple[DemoRecord, Image.Image]:
    scene = random_scene(rng, max_per_noun=3 if lang == "en" else 2)  # other languages only say "one" or "two"
    image = render_scene(scene, rng)
    caption = scene_caption(scene, lang, rng)
    data = image  # encoded by _make_distinct once the image is admitted
    meta = {"objects": sorted(scene.counts()), "counts": scene.counts(), "sky": scene.sky, "ground": scene.ground}
    return DemoRecord("caption", caption.encode("utf-8"), meta, [("jpg", data)], lang=lang), image


# ----------------------------------------------------------------------------------------------
# Charts, QA
# ----------------------------------------------------------------------------------------------


def interleaved_record(rng: random.Random) -> tuple[DemoRecord, list[Image.Image]]:
    scenes = [random_scene(rng) for _ in range(2)]
    images = [render_scene(s, rng) for s in scenes]
    texts = [
        rng.choice(("Notes from a weekend trip through the countryside.", "A short travel diary with two sketches.",
                    "Our drawing class tried two landscapes this week.")),
        scene_caption(scenes[0], "en", rng),
        "Later that day the weather changed and we drew a second view.",
        scene_caption(scenes[1], "en", rng),
    ]
    segments = [{"type": "text", "text": texts[0]}, {"type": "image", "image_index": 0}, {"type": "text", "text": texts[1]},
                {"type": "text", "text": texts[2]}, {"type": "image", "image_index": 1}, {"type": "text", "text": texts[3]}]
    caption = " ".join(texts)
    record = DemoRecord("interleaved", caption.encode("utf-8"), {"segments": segments},
                     [("jpg", images[0]), ("jpg", images[1])], lang="en")
    return record, images


# ----------------------------------------------------------------------------------------------
# Near-duplicate image variants
# ----------------------------------------------------------------------------------------------
