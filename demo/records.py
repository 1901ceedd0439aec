"""Small synthetic curated Samples for tests and benchmarks.

`synthetic_samples(n, seed)` → Samples of kinds caption / ocr / interleaved / qa with small PNG/JPEG images;
write them as a curated directory with `vlmloom.schemas.curated.write_curated_dir(dir, samples)`.
"""
from __future__ import annotations

import hashlib
import io

import numpy as np

from vlmloom.schemas.records import ImageRef, Message, Sample, Segment, make_key

WORDS = ("the a cat dog sits on mat red blue green small large image shows picture of tree house car road sky "
         "cloud person holding cup table chair window light dark bright water river mountain city street").split()


def make_image(width: int, height: int, seed: int, fmt: str = "png") -> ImageRef:
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG" if fmt == "jpeg" else "PNG")
    data = buf.getvalue()
    return ImageRef(sha256=hashlib.sha256(data).hexdigest(), width=width, height=height, format=fmt, bytes=data)


def _words(rng: np.random.Generator, n: int) -> str:
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), n))


def synthetic_samples(n: int, seed: int = 0, source: str = "synthetic", kinds=("caption", "ocr", "interleaved", "qa"),
                      max_words: int = 60, image_side: tuple[int, int] = (20, 120)) -> list[Sample]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        key = make_key(source, f"{seed}-{i}")

        def img(j: int) -> ImageRef:
            w, h = (int(x) for x in rng.integers(image_side[0], image_side[1], 2))
            return make_image(w, h, seed * 100003 + i * 7 + j, "jpeg" if (i + j) % 2 else "png")

        words = int(rng.integers(3, max_words))
        if kind == "caption":
            s = Sample(key=key, source=source, source_id=str(i), kind=kind, images=[img(0)], text=_words(rng, words))
        elif kind == "ocr":
            s = Sample(key=key, source=source, source_id=str(i), kind=kind, images=[img(0)],
                       text=_words(rng, words).upper())
        elif kind == "interleaved":
            s = Sample(key=key, source=source, source_id=str(i), kind=kind, images=[img(0), img(1)],
                       segments=[Segment("text", _words(rng, words)), Segment("image", image_index=0),
                                 Segment("text", _words(rng, 5)), Segment("image", image_index=1),
                                 Segment("text", _words(rng, 8))])
        else:
            answer = str(int(rng.integers(0, 100)))
            s = Sample(key=key, source=source, source_id=str(i), kind="qa", images=[img(0)], answer=answer,
                       messages=[Message("user", f"<image>How many {WORDS[i % len(WORDS)]}s are there?"),
                                 Message("assistant", f"<think>{_words(rng, words)}</think><answer>There are "
                                         f"<|begin_of_box|>{answer}<|end_of_box|></answer>")])
        out.append(s.validate())
    return out
