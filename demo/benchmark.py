"""Benchmark items (question, answer, image) for the contamination stage.

Part of the demo corpus (`vlmloom.demo.corpus`); every output is a function of the seeded `random.Random` passed in.
"""
from __future__ import annotations

import random
from typing import Any

from PIL import Image

from vlmloom.demo.scenes import NOUN_COLOURS, PLACES, PLURALS, STYLES, random_scene, render_scene

BENCH_PREFIXES = ("Looking carefully at this picture", "Considering only what is drawn here",
                  "Based on the visible content of the image", "Without guessing beyond the drawing",
                  "If you study the illustration closely")


def benchmark_item(rng: random.Random, index: int) -> tuple[dict[str, Any], Image.Image]:
    scene = random_scene(rng)
    image = render_scene(scene, rng)
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


def ngrams(text: str, n: int = 13) -> set[tuple[str, ...]]:
    words = text.lower().split()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


# ----------------------------------------------------------------------------------------------
