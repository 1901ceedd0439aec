"""RL prompts: verifiable prompts in, the model's token contract out.

    curated qa Sample / JSONL row ──prompt_from_sample / load_prompts──▶ RLPrompt (turns up to the answer, images,
    ground truth) ──PromptRenderer.render──▶ RenderedPrompt: the packing builder's GLM-4.1V chat template up to
    `<|assistant|>\\n` (same tokens, image-token counts and M-RoPE positions as SFT samples), rendered once per
    prompt id and kept; a rollout of it ──training_sample──▶ a packing `BuiltSample` for the policy update.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from vlmloom.schemas.packed import IGNORE_INDEX

if TYPE_CHECKING:
    from vlmloom.trainer.rl_backends import Rollout


@dataclasses.dataclass(frozen=True)
class RLPrompt:
    """One verifiable prompt: chat turns up to the answer (images as `<image>` placeholders), ground truth."""
    id: str
    domain: str
    messages: tuple[tuple[str, str], ...]  # (role, content) pairs; the last one is a user turn
    answer: Any  # ground truth as the reward system reads it
    images: tuple[bytes, ...] = ()
    options: tuple[str, ...] | None = None
    meta: dict[str, Any] | None = None


@dataclasses.dataclass
class RenderedPrompt:
    """Prompt tokens in the packing contract: ids [n], rope positions [3, n] (t, h, w), grids [m, 3], images."""
    input_ids: np.ndarray
    rope_position_ids: np.ndarray
    image_grid_thw: np.ndarray
    images: list[bytes]
    image_formats: list[str]


def prompt_from_sample(sample: Any) -> RLPrompt | None:
    """A curated qa `Sample` with an answer → RLPrompt (messages without the final assistant turn); else None.
    Falls back to `meta` {question, answer, domain, messages} as the demo corpus writes it."""
    meta = sample.meta or {}
    answer = sample.answer if sample.answer is not None else meta.get("answer")
    domain = sample.domain or meta.get("domain")
    if sample.kind != "qa" or answer is None or not domain:
        return None
    turns = [(m.role, m.content) for m in sample.messages] or \
        [(m["role"], m["content"]) for m in meta.get("messages", [])]
    while turns and turns[-1][0] == "assistant":
        turns.pop()
    if not turns and meta.get("question"):
        turns = [("user", "<image>" * len(sample.images) + str(meta["question"]))]
    if not turns:
        return None
    return RLPrompt(id=sample.key, domain=str(domain), messages=tuple(turns), answer=str(answer),
                    images=tuple(im.bytes for im in sample.images), meta={"question": meta.get("question")})


def load_prompts(paths: Sequence[str]) -> list[RLPrompt]:
    """RL prompts from curated directories (qa samples with an answer) or JSONL files with rows
    {id, domain, answer, messages: [{role, content}] | question, images: [paths], options}."""
    prompts: list[RLPrompt] = []
    for path in paths:
        if os.path.isdir(path):
            from vlmloom.packing.curated import iter_curated_samples

            prompts += [p for p in map(prompt_from_sample, iter_curated_samples(path)) if p is not None]
            continue
        base = os.path.dirname(os.path.abspath(path))
        with open(path, encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                missing = [k for k in ("id", "domain", "answer") if k not in row]
                if missing or not (row.get("messages") or row.get("question")):
                    raise ValueError(f"{path}:{line_no}: an RL prompt needs id, domain, answer and messages or "
                                     f"question (missing {missing or ['messages']})")
                images = []
                for image in row.get("images", []):
                    with open(image if os.path.isabs(image) else os.path.join(base, image), "rb") as im:
                        images.append(im.read())
                turns = [(m["role"], m["content"]) for m in row.get("messages", [])] or \
                    [("user", "<image>" * len(images) + row["question"])]
                prompts.append(RLPrompt(id=str(row["id"]), domain=row["domain"], messages=tuple(turns),
                                        answer=row["answer"], images=tuple(images),
                                        options=tuple(row["options"]) if row.get("options") else None,
                                        meta={"question": row.get("question")}))
    ids = [p.id for p in prompts]
    if len(set(ids)) != len(ids):
        raise ValueError("RL prompts: duplicate ids (the curriculum tracks pass rates by id)")
    return prompts


class PromptRenderer:
    """RLPrompt → RenderedPrompt with the packing `SequenceBuilder` (identical template to SFT); prompt ids are
    unique (load_prompts checks), so the rendering of an id is kept and reused."""

    def __init__(self, tokenizer: Any, *, system_prompt: str = ""):
        from vlmloom.packing.builder import BuilderConfig, SequenceBuilder

        self.builder = SequenceBuilder(tokenizer, BuilderConfig(system_prompt=system_prompt))
        self._rendered: dict[str, RenderedPrompt] = {}  # by prompt id: a prompt is drawn many times, rendered once

    def render(self, prompt: RLPrompt) -> RenderedPrompt:
        if prompt.id not in self._rendered:
            self._rendered[prompt.id] = self._render(prompt)
        return self._rendered[prompt.id]

    def _render(self, prompt: RLPrompt) -> RenderedPrompt:
        from vlmloom.schemas.records import ImageRef, Message, Rejection, Sample

        images = [ImageRef(bytes=b, format=_image_format(b)) for b in prompt.images]
        # An empty assistant turn renders "<|assistant|>\n" + <|endoftext|>; the prompt is all but that last token.
        sample = Sample(key=prompt.id, source="rlcs", source_id=prompt.id, kind="qa", images=images,
                        messages=[Message(r, c) for r, c in prompt.messages] + [Message("assistant", "")])
        built = self.builder.build(sample)
        if isinstance(built, Rejection):
            raise ValueError(f"RL prompt {prompt.id}: cannot be rendered ({built.reason}: {built.detail})")
        return RenderedPrompt(input_ids=built.input_ids[:-1], rope_position_ids=built.rope_position_ids[:, :-1],
                              image_grid_thw=built.image_grid_thw, images=list(built.images),
                              image_formats=list(built.image_formats))


def _image_format(data: bytes) -> str:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return (im.format or "png").lower()


def training_sample(key: str, prompt: RenderedPrompt, rollout: Rollout, *, image_token_id: int,
                    merge_size: int) -> Any:
    """Prompt + response as a packing `BuiltSample`: labels on the policy-sampled response tokens only."""
    from vlmloom.packing.builder import BuiltSample, mrope_position_ids

    response = np.asarray(rollout.response_ids, np.int32)
    ids = np.concatenate([prompt.input_ids, response]).astype(np.int32)
    labels = np.full(ids.shape[0], IGNORE_INDEX, np.int32)
    trained = np.asarray(rollout.trained, bool)
    labels[prompt.input_ids.shape[0]:][trained] = response[trained]
    return BuiltSample(key=key, source="rlcs", kind="qa", input_ids=ids, labels=labels,
                       rope_position_ids=mrope_position_ids(ids, image_token_id, prompt.image_grid_thw, merge_size),
                       image_grid_thw=prompt.image_grid_thw, images=prompt.images, image_formats=prompt.image_formats)
