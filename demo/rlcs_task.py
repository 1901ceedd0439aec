"""A verifiable task the project generates, whose prompts carry images: for RLCS tests, the toy bench and demos.

    make_task(n, seed) → list[TaskItem]: a rendered PNG + question + ground truth + a reference response

Two kinds, so the curriculum has something to sort:
- `color` (easy): "Which color fills the image?" over a small palette; the whole image is that color (+ noise).
- `count` (harder): "How many squares are in the image?" 1–4 white squares on a dark background.
Answers come from a small vocabulary so a tiny model can learn the task on CPU in minutes. Reference responses
follow GLM-4.1V's format: <think>…</think><answer>… <|begin_of_box|>ANSWER<|end_of_box|></answer>.
`rl_prompts(items)` → trainer RLPrompts; `sft_samples(items, noise=…)` → schema Samples for the packing builder.

`noise` makes the SFT demonstrations only partly correct (a share of them answer with another word of the
kind's vocabulary, reasoning included): SFT then teaches the format and an uncertain answer, so a group of
rollouts holds both correct and incorrect responses, the setting where RL after SFT has something to improve.
"""
from __future__ import annotations

import io
import random
from dataclasses import dataclass

COLORS = {"red": (210, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 210), "yellow": (220, 200, 40)}
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
IMAGE_SIZE = 56  # → an 84×84 processor grid: 9 image tokens per prompt with GLM-4.1V's merge of 2


@dataclass(frozen=True)
class TaskItem:
    id: str
    kind: str  # color | count
    domain: str  # the reward-system domain that scores it
    question: str
    answer: str
    image: bytes  # PNG
    reasoning: str

    @property
    def response(self) -> str:
        return self.response_with(self.answer)

    def response_with(self, answer: str) -> str:
        """A demonstration that answers `answer` (the reasoning says the same)."""
        return (f"<think>{_reasoning(self.kind, answer)}</think><answer>The answer is "
                f"<|begin_of_box|>{answer}<|end_of_box|></answer>")


def _reasoning(kind: str, answer: str) -> str:
    return f"The image is {answer}." if kind == "color" else f"I see {COUNT_WORDS[int(answer)]} squares."


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _color_item(rng: random.Random, index: int, colors: tuple[str, ...], max_count: int):
    from PIL import Image

    name = rng.choice(sorted(colors))
    base = COLORS[name]
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), base)
    pixels = image.load()
    for _ in range(60):  # a little noise so images of one color differ
        x, y = rng.randrange(IMAGE_SIZE), rng.randrange(IMAGE_SIZE)
        pixels[x, y] = tuple(max(0, min(255, c + rng.randint(-40, 40))) for c in base)
    return TaskItem(id=f"color-{index:05d}", kind="color", domain="text", question="Which color fills the image?",
                    answer=name, image=_png(image), reasoning=_reasoning("color", name))


def _count_item(rng: random.Random, index: int, colors: tuple[str, ...], max_count: int):
    from PIL import Image, ImageDraw

    count = rng.randint(1, max_count)
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (20, 20, 30))
    draw = ImageDraw.Draw(image)
    cells = rng.sample([(cx, cy) for cx in range(2) for cy in range(2)], count)  # one square per quadrant
    for cx, cy in cells:
        x = cx * 28 + rng.randint(3, 9)
        y = cy * 28 + rng.randint(3, 9)
        draw.rectangle([x, y, x + 14, y + 14], fill=(240, 240, 240))
    return TaskItem(id=f"count-{index:05d}", kind="count", domain="numeric",
                    question="How many squares are in the image?", answer=str(count), image=_png(image),
                    reasoning=_reasoning("count", str(count)))


def make_task(n: int, *, seed: int = 0, kinds: tuple[str, ...] = ("color", "count"),
              colors: tuple[str, ...] = tuple(COLORS), max_count: int = 4) -> list[TaskItem]:
    """n items, kinds alternating in the given order; deterministic for a seed. `colors` (a subset of COLORS) and
    `max_count` (1–4) set the answer vocabulary: smaller is easier."""
    if not set(colors) <= set(COLORS) or not 1 <= max_count <= 4:
        raise ValueError(f"colors must be a subset of {sorted(COLORS)} and max_count within 1..4")
    rng = random.Random(seed)
    makers = {"color": _color_item, "count": _count_item}
    return [makers[kinds[i % len(kinds)]](rng, i, colors, max_count) for i in range(n)]


POSITIONS = ("top left", "top right", "bottom left", "bottom right")


@dataclass(frozen=True)
class GradedItem(TaskItem):
    """An item of the graded task (`make_graded_task`): its demonstration's reasoning matches its kind."""

    def response_with(self, answer: str) -> str:
        reasoning = {"color": f"The image is {answer}.", "position": f"The square is at the {answer}.",
                     "count": f"I see {COUNT_WORDS.get(int(answer) if answer.isdigit() else 0, answer)} "
                              "squares."}[self.kind]
        return (f"<think>{reasoning}</think><answer>The answer is "
                f"<|begin_of_box|>{answer}<|end_of_box|></answer>")


def make_graded_task(n: int, *, seed: int, split: str) -> list[GradedItem]:
    """The graded task of bench/rlcs_ablation.py and the demo's RL stage: n items, kinds alternating `color`
    (easy, 4 colours, `text`), `position` (medium: the one square's quadrant, `text`) and `count` (hard: 1–4
    squares, `counting`); ids `{split}-{kind}-{i}`; deterministic for a seed."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = ("color", "position", "count")[i % 3]
        if kind == "color":
            base = make_task(1, seed=rng.randrange(10**9), kinds=("color",))[0]
            fields = dict(domain="text", question=base.question, answer=base.answer, image=base.image)
        elif kind == "count":
            base = make_task(1, seed=rng.randrange(10**9), kinds=("count",), max_count=4)[0]
            fields = dict(domain="counting", question=base.question, answer=base.answer, image=base.image)
        else:
            quadrant = rng.randrange(4)
            image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (20, 20, 30))
            x = (quadrant % 2) * 28 + rng.randint(3, 9)
            y = (quadrant // 2) * 28 + rng.randint(3, 9)
            ImageDraw.Draw(image).rectangle([x, y, x + 14, y + 14], fill=(240, 240, 240))
            fields = dict(domain="text", question="Where is the square?", answer=POSITIONS[quadrant],
                          image=_png(image))
        out.append(GradedItem(id=f"{split}-{kind}-{i:05d}", kind=kind, reasoning="", **fields))
    return out


def rl_prompts(items: list[TaskItem]):
    """TaskItems → `vlmloom.trainer.rollout.RLPrompt`s (one image, one user turn)."""
    from vlmloom.trainer.rollout import RLPrompt

    return [RLPrompt(id=it.id, domain=it.domain, messages=(("user", f"<image>{it.question}"),), answer=it.answer,
                     images=(it.image,), meta={"question": it.question, "kind": it.kind}) for it in items]


def demonstration_answers(items: list[TaskItem], *, noise: float = 0.0, seed: int = 0) -> list[str]:
    """The answer each SFT demonstration gives: the ground truth, or with probability `noise` another answer of
    the same kind drawn from the items' vocabulary (deterministic for a seed)."""
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise ({noise}) must be within [0, 1]")
    vocab: dict[str, list[str]] = {}
    for it in items:
        if it.answer not in vocab.setdefault(it.kind, []):
            vocab[it.kind].append(it.answer)
    rng = random.Random(seed)
    out = []
    for it in items:
        others = sorted(a for a in vocab[it.kind] if a != it.answer)
        out.append(rng.choice(others) if others and rng.random() < noise else it.answer)
    return out


def sft_samples(items: list[TaskItem], *, noise: float = 0.0, seed: int = 0):
    """TaskItems → qa `Sample`s with a demonstration (the reference response; with `noise`, a share of them
    answer wrongly, see `demonstration_answers`) for the packing builder and SFT. `answer` stays the truth."""
    from vlmloom.schemas.records import ImageRef, Message, Sample

    answers = demonstration_answers(items, noise=noise, seed=seed)
    return [Sample(key=it.id, source="rlcs_task", source_id=it.id, kind="qa",
                   images=[ImageRef(bytes=it.image, width=IMAGE_SIZE, height=IMAGE_SIZE, format="png")],
                   messages=[Message("user", f"<image>{it.question}"), Message("assistant", it.response_with(a))],
                   answer=it.answer, domain=it.domain) for it, a in zip(items, answers)]


def tokenizer_texts(items: list[TaskItem]) -> list[str]:
    """Texts to train the task's tokenizer on (questions and responses, several times so BPE merges them)."""
    return [t for it in items for t in (it.question, it.response)] * 3


REWARDS = {"domains": {"text": "text"}}  # color → text (exact, normalised); count → numeric (the default route)


def build_tokenizer_and_model(out_dir: str, items: list[TaskItem], *, seed: int = 0, **sizes) -> str:
    """Train the task's tokenizer and write a random tiny GLM-4.1V next to it: returns a model directory that
    also holds the tokenizer (what `rlcs.tokenizer` / `model` point at)."""
    import os

    from vlmloom.packing.tokenizer import train_tokenizer
    from vlmloom.trainer.model import build_tiny_model_dir

    tok_dir = os.path.join(out_dir, "tokenizer")
    tokenizer = train_tokenizer(tokenizer_texts(items), tok_dir, vocab_size=400)
    model_dir = build_tiny_model_dir(os.path.join(out_dir, "model"), vocab_size=len(tokenizer),
                                     tokenizer_dir=tok_dir, seed=seed, **sizes)
    tokenizer.save_pretrained(model_dir)
    return model_dir


def sft_records(items: list[TaskItem], tokenizer_dir: str, *, seq_len: int = 256, noise: float = 0.0,
                seed: int = 0) -> list[dict]:
    """Packed SFT records (the dict the packed-shard reader yields) of the items' demonstrations (`noise`: see
    `demonstration_answers`), built with the project's sequence builder and packer."""
    from vlmloom.packing.builder import SequenceBuilder
    from vlmloom.packing.packers import plan_bins
    from vlmloom.packing.shards import assemble
    from vlmloom.packing.tokenizer import load_tokenizer

    builder = SequenceBuilder(load_tokenizer(tokenizer_dir))
    built = [builder.build(s) for s in sft_samples(items, noise=noise, seed=seed)]
    records = []
    for b, members in enumerate(plan_bins([len(s) for s in built], seq_len, window=0)):
        row = assemble([built[m] for m in members], seq_len, builder.pad_id)
        row["key"] = f"sft{b:05d}"
        records.append(row)
    return records
