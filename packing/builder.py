"""Sequence builder: one curated `Sample` → token ids, labels, M-RoPE positions and images, in GLM-4.1V's format.

How a sample renders is its kind's `render` in the kinds table (schemas/kinds.py); `RENDERERS` holds one renderer
per rendering ("video": packing/video.py), and a kind whose rendering has none is rejected `unsupported_kind`.
Token strings come from `tokenizer.py`; "\\n" is a plain text token::

    "pretrain" (caption, ocr, grounding, interleaved, gui) without chat turns:
        [gMASK]<sop> {<|begin_of_image|> <|image|>×n <|end_of_image|> | text}... <|endoftext|>
        segments in order when the record has them, else its images then its text (the recaption if chosen; OCR
        lines when it has no text); loss on the text tokens and the final <|endoftext|>; grounding boxes follow
        the text as `phrase<|begin_of_box|>[x1,y1,x2,y2]<|end_of_box|>` lines
    "chat" (qa / SFT), and "pretrain" records with chat turns (the grounding / OCR Q/A turns curation writes)
    (messages; `<image>` placeholders in user turns, in image order):
        [gMASK]<sop> <|system|>\\n… <|user|>\\n… <|assistant|>\\n ANSWER … <|endoftext|>
        loss on each assistant turn's content and on the token that ends it (the next <|user|>/<|system|>
        or the final <|endoftext|>); everything else, image tokens included, is -100.
        A qa record without a final assistant turn but with an `answer` renders question → answer: its user
        turns (or its `text` as the one user turn) and the answer as the assistant turn, trained as given
        (not held to the <think>/<answer> form unless builder.require_cot).
        A pre-training sample whose turns cannot be rendered falls back to the document form and says why
        (`BuiltSample.turns_unusable`); what the turns leave out of the sample is counted as well (the pack
        report's `rendering` section).

`<|image|>` counts come from `vision.py` (= Glm4vImageProcessorPil); rows (t, h, w) of the positions equal
transformers' `Glm4vModel.get_rope_index` for the sample alone. A sample that cannot be rendered becomes a
`Rejection` with a stable reason code.
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
import numpy as np

from vlmloom.schemas.kinds import KIND_TABLE, kind_of
from vlmloom.schemas.packed import IGNORE_INDEX
from vlmloom.schemas.records import Message, Rejection, Sample
from vlmloom.schemas.registry import Registry
from vlmloom.schemas.video import VideoSampling

from . import tokenizer as T
from .vision import ImageSizeError, VisionConfig, image_grid_thw, num_image_tokens

STAGE = "pack"
IMAGE_PLACEHOLDER = "<image>"
_COT = re.compile(r"\A\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*\Z", re.S)
# Strings that structure a sequence: a sample's own text must never produce them.
_STRUCTURAL = (T.ENDOFTEXT, T.GMASK, T.SOP, T.SYSTEM, T.USER, T.ASSISTANT, T.OBSERVATION, T.BEGIN_OF_IMAGE,
               T.END_OF_IMAGE, T.IMAGE, T.BEGIN_OF_VIDEO, T.END_OF_VIDEO, T.VIDEO)


@dataclass(frozen=True, kw_only=True)
class BuilderConfig:
    """How samples are rendered and checked."""
    vision: VisionConfig = field(default_factory=VisionConfig)  # image-token arithmetic (processor defaults)
    video: VideoSampling = field(default_factory=VideoSampling)  # GLM-4.1V video sampling (video processor defaults)
    require_cot: bool = False  # true: every qa sample's last assistant turn must be <think>…</think><answer>…</answer>
    system_prompt: str = ""  # prepended as a <|system|> turn to qa samples without one; "" disables
    kinds: list[str] = field(default_factory=list)  # pack only these kinds (e.g. [qa] for SFT); [] = all; others: kind_not_selected
    # pre-training kinds that carry chat turns (OCR/grounding Q/A from curation): "chat" trains the turns,
    # "document" trains the text and boxes as one document and ignores the turns
    turns: str = "chat"


@dataclass
class BuiltSample:
    """A rendered sample, ready to pack. Arrays are int32; `rope_position_ids` is [3, n] (t, h, w)."""
    key: str
    source: str
    kind: str
    input_ids: np.ndarray
    labels: np.ndarray
    rope_position_ids: np.ndarray
    image_grid_thw: np.ndarray  # [m, 3]
    images: list[bytes]
    image_formats: list[str]
    # videos (packing/video.py): (t, h, w) per video, their sampled frame indices (2t each, concatenated), bytes
    video_grid_thw: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int32))
    video_frame_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    videos: list[bytes] = field(default_factory=list)
    truncated_from: int = 0  # original length when the over-long policy cut it
    rendered_as: str = "document"  # "chat" or "document"
    turns_unusable: str = ""  # reason code when the sample's chat turns could not be rendered (document instead)
    text_left_out: bool = False  # rendered as chat, and its document text appears in no turn
    boxes_left_out: int = 0  # rendered as chat: grounding boxes that no assistant turn gives

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_label_tokens(self) -> int:
        return int(np.count_nonzero(self.labels != IGNORE_INDEX))


class _Reject(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


class SequenceBuilder:
    """Renders samples with one tokenizer; `build(sample) -> BuiltSample | Rejection`."""

    def __init__(self, tokenizer, config: BuilderConfig = BuilderConfig()):
        self.tokenizer = tokenizer
        self.config = config
        self.ids = T.special_token_ids(tokenizer)
        missing = [t for t in (T.ENDOFTEXT, T.GMASK, T.SOP, T.SYSTEM, T.USER, T.ASSISTANT, T.BEGIN_OF_IMAGE,
                               T.END_OF_IMAGE, T.IMAGE) if t not in self.ids]
        if missing:
            raise ValueError(f"tokenizer lacks GLM-4.1V special tokens {missing}")
        if config.turns not in ("chat", "document"):
            from vlmloom.schemas.config import ConfigError
            raise ConfigError(f"builder.turns {config.turns!r}: use chat (train the turns of OCR/grounding samples) "
                              f"or document (train their text and boxes)")
        self.image_token_id = self.ids[T.IMAGE]
        self.pad_id = self.ids[T.ENDOFTEXT]
        self._structural_ids = np.array(sorted(self.ids[t] for t in _STRUCTURAL if t in self.ids), np.int64)
        self._backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)

    # ------------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        if self._backend is not None:
            return self._backend.encode(text, add_special_tokens=False).ids
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def build(self, sample: Sample) -> BuiltSample | Rejection:
        try:
            return self._build(sample)
        except _Reject as r:
            return Rejection.of(sample, STAGE, r.reason, r.detail)

    def _build(self, sample: Sample) -> BuiltSample:
        if self.config.kinds and sample.kind not in self.config.kinds:
            raise _Reject("kind_not_selected", f"kind {sample.kind!r} not in builder.kinds {self.config.kinds}")
        if sample.kind not in KIND_TABLE:
            raise _Reject("unsupported_kind", f"kind {sample.kind!r} is not in the kinds table")
        rendering = kind_of(sample).render
        if rendering not in RENDERERS:
            raise _Reject("unsupported_kind", f"kind {sample.kind!r} renders as {rendering!r}, which pack does not "
                                              f"render yet (renderings: {', '.join(RENDERERS.names())})")
        return RENDERERS.get(rendering)(self, sample)

    def _build_chat(self, sample: Sample) -> BuiltSample:
        return self._finish(sample, self._render_chat, "chat")

    def _build_pretrain(self, sample: Sample) -> BuiltSample:
        unusable = ""
        if sample.messages and self.config.turns == "chat":
            try:
                built = self._finish(sample, self._render_chat, "chat")
            except _Reject as r:
                unusable = r.reason  # trained as a document instead, and counted
            else:
                built.text_left_out, built.boxes_left_out = _left_out_of_turns(sample)
                return built
        try:
            built = self._finish(sample, self._render_document, "document")
        except _Reject as r:
            if unusable:
                raise _Reject(r.reason, f"{r.detail}; its chat turns were unusable too ({unusable})") from None
            raise
        built.turns_unusable = unusable
        return built

    def _finish(self, sample: Sample, render, rendered_as: str) -> BuiltSample:
        seq = _Sequence(self, sample)
        seq.special(T.GMASK)
        seq.special(T.SOP)
        render(seq, sample)
        if seq.next_image != len(sample.images):
            raise _Reject("image_placeholder_mismatch",
                          f"{len(sample.images)} images, {seq.next_image} placed in the sequence")
        built = seq.finish()
        if built.num_label_tokens == 0:
            raise _Reject("no_label_tokens", "nothing to train on")
        built.rendered_as = rendered_as
        return built

    def _render_document(self, seq: "_Sequence", sample: Sample) -> None:
        if sample.segments:
            for seg in sample.segments:
                if seg.type == "image":
                    seq.image(seg.image_index)
                elif seg.text:
                    seq.text(seg.text, trained=True)
        else:
            for i in range(len(sample.images)):
                seq.image(i)
            text = _document_text(sample)
            if not text:
                raise _Reject("empty_text", f"{sample.kind} sample without training text")
            seq.text(text, trained=True)
        seq.special(T.ENDOFTEXT, trained=True)

    def _render_chat(self, seq: "_Sequence", sample: Sample) -> None:
        messages, answered = _turns(sample)
        if not messages or messages[-1].role != "assistant":
            raise _Reject("no_assistant_turn", "the last message must be an assistant turn (or the record an `answer`)")
        if self.config.system_prompt and messages[0].role != "system":
            messages.insert(0, Message("system", self.config.system_prompt))
        placeholders = sum(m.content.count(IMAGE_PLACEHOLDER) for m in messages if m.role == "user")
        if placeholders not in (0, len(sample.images)):
            raise _Reject("image_placeholder_mismatch",
                          f"{placeholders} {IMAGE_PLACEHOLDER} placeholders for {len(sample.images)} images")
        if not answered or self.config.require_cot:
            _check_reasoning(sample, messages, self.config.require_cot)
        images_placed = placeholders > 0
        after_assistant = False
        for message in messages:
            role_token = {"system": T.SYSTEM, "user": T.USER, "assistant": T.ASSISTANT}[message.role]
            seq.special(role_token, trained=after_assistant)  # the token that ends an assistant turn is trained
            seq.text("\n", trained=False)
            if message.role == "assistant":
                seq.text(message.content, trained=True)
                after_assistant = True
                continue
            after_assistant = False
            if message.role == "user" and not images_placed:
                for i in range(len(sample.images)):
                    seq.image(i)
                images_placed = True
            parts = message.content.split(IMAGE_PLACEHOLDER) if message.role == "user" else [message.content]
            for j, part in enumerate(parts):
                if j:
                    seq.image(seq.next_image)
                if part:
                    seq.text(part, trained=False)
        seq.special(T.ENDOFTEXT, trained=True)


class _Sequence:
    """Accumulates token pieces, their label mask and the images in token order."""

    def __init__(self, builder: SequenceBuilder, sample: Sample):
        self.b, self.sample = builder, sample
        self.pieces: list[np.ndarray] = []
        self.trained: list[bool] = []
        self.grids: list[tuple[int, int, int]] = []
        self.next_image = 0

    def special(self, token: str, trained: bool = False) -> None:
        self.pieces.append(np.array([self.b.ids[token]], np.int32))
        self.trained.append(trained)

    def text(self, text: str, trained: bool) -> None:
        ids = np.asarray(self.b.encode(text), np.int32)
        if ids.size and np.isin(ids, self.b._structural_ids).any():
            raise _Reject("special_token_in_text", "the text contains a structural special token string")
        self.pieces.append(ids)
        self.trained.append(trained)

    def image(self, index: int | None) -> None:
        images = self.sample.images
        if index is None or not 0 <= index < len(images) or index != self.next_image:
            raise _Reject("image_placeholder_mismatch", f"image index {index} out of order or range")
        ref = images[index]
        if not ref.bytes:
            raise _Reject("missing_image_bytes", f"image {index} has no bytes")
        width, height = ref.width, ref.height
        if width <= 0 or height <= 0:
            width, height = _image_size(ref.bytes)
        try:
            grid = image_grid_thw(width, height, self.b.config.vision)
        except ImageSizeError as exc:
            raise _Reject("image_size_unsupported", str(exc)) from None
        self.grids.append(grid)
        self.special(T.BEGIN_OF_IMAGE)
        self.pieces.append(np.full(num_image_tokens(grid, self.b.config.vision), self.b.image_token_id, np.int32))
        self.trained.append(False)
        self.special(T.END_OF_IMAGE)
        self.next_image += 1

    def finish(self) -> BuiltSample:
        input_ids = np.concatenate(self.pieces).astype(np.int32)
        labels = np.concatenate([p if t else np.full(p.shape, IGNORE_INDEX, np.int32)
                                 for p, t in zip(self.pieces, self.trained)]).astype(np.int32)
        grids = np.asarray(self.grids, np.int32).reshape(-1, 3)
        s = self.sample
        return BuiltSample(
            key=s.key, source=s.source, kind=s.kind, input_ids=input_ids, labels=labels,
            rope_position_ids=mrope_position_ids(input_ids, self.b.image_token_id, grids,
                                                 self.b.config.vision.merge_size),
            image_grid_thw=grids, images=[img.bytes for img in s.images],
            image_formats=[(img.format or "jpeg").lower() for img in s.images],
        )


def mrope_position_ids(input_ids: np.ndarray, image_token_id: int, grids: np.ndarray, merge_size: int) -> np.ndarray:
    """[3, n] (t, h, w) positions of one sample, as `Glm4vModel.get_rope_index` computes them.

    Text tokens advance all three rows by one; an image block of llm grid (t, h/m, w/m) gets its
    meshgrid offset by the current position, which then advances by max(h, w)/m.
    """
    n = input_ids.shape[0]
    out = np.empty((3, n), np.int32)
    is_image = input_ids == image_token_id
    bounds = np.flatnonzero(np.diff(is_image.astype(np.int8))) + 1
    starts, ends = np.r_[0, bounds], np.r_[bounds, n]
    current, g = 0, 0
    for s, e in zip(starts.tolist(), ends.tolist()):
        if not is_image[s]:
            out[:, s:e] = np.arange(current, current + e - s, dtype=np.int32)
            current += e - s
            continue
        t, h, w = (int(x) for x in grids[g])
        g += 1
        lh, lw = h // merge_size, w // merge_size
        if t * lh * lw != e - s:
            raise ValueError(f"image block of {e - s} tokens does not match grid {(t, h, w)}")
        out[0, s:e] = np.repeat(np.arange(t), lh * lw) + current
        out[1, s:e] = np.tile(np.repeat(np.arange(lh), lw), t) + current
        out[2, s:e] = np.tile(np.arange(lw), t * lh) + current
        current += max(h, w) // merge_size
    return out


# One renderer per `Kind.render` value of the kinds table: `renderer(builder, sample) -> BuiltSample`.
RENDERERS: Registry = Registry("rendering")
RENDERERS.register("pretrain")(SequenceBuilder._build_pretrain)
RENDERERS.register("chat")(SequenceBuilder._build_chat)


@RENDERERS.register("video")
def _build_video(builder: SequenceBuilder, sample: Sample) -> BuiltSample:
    from .video import build_video_sample  # frames and patches (packing/video.py): imported when a video is packed

    return build_video_sample(builder, sample)


def _turns(sample: Sample) -> tuple[list[Message], bool]:
    """The turns to render, and whether the final answer was added from `sample.answer` (question → answer):
    a record whose turns do not end in an answer gets `answer` as its assistant turn, after its user turns or,
    without any, after its `text` as the question."""
    messages = list(sample.messages)
    if (messages and messages[-1].role == "assistant") or not (sample.answer or "").strip():
        return messages, False
    if not messages:
        messages = [Message("user", sample.text or "")]
    return messages + [Message("assistant", sample.answer)], True


def _document_text(sample: Sample) -> str | None:
    """The text, else the OCR lines; any grounding boxes after it (every kind alike: the table, not the kind name,
    decides how a record renders)."""
    text = sample.training_text()
    if not text and sample.annotations.ocr:
        text = "\n".join(line.text for line in sample.annotations.ocr)
    if sample.annotations.grounding:
        boxes = "\n".join(f"{g.phrase}{T.BEGIN_OF_BOX}[{','.join(map(str, g.box))}]{T.END_OF_BOX}"
                          for g in sample.annotations.grounding)
        text = f"{text}\n{boxes}" if text else boxes
    return text


def _left_out_of_turns(sample: Sample) -> tuple[bool, int]:
    """What chat turns do not carry of a pre-training sample: (its text is in no turn, boxes no answer gives)."""
    contents = [m.content for m in sample.messages]
    text = (sample.training_text() or "").strip()
    text_left_out = bool(text) and not any(text in c for c in contents)
    answers = "".join(m.content for m in sample.messages if m.role == "assistant")
    boxes = sum(f"{T.BEGIN_OF_BOX}[{','.join(map(str, g.box))}]{T.END_OF_BOX}" not in answers
                for g in sample.annotations.grounding)
    return text_left_out, int(boxes)


def _check_reasoning(sample: Sample, messages, require_cot: bool) -> None:
    """Long-CoT validation: <think>…</think><answer>…</answer>, and one box when the sample has an answer."""
    final = messages[-1].content
    uses_cot = any(tag in final for tag in (T.THINK, T.END_THINK, T.ANSWER, T.END_ANSWER))
    if require_cot or uses_cot or sample.answer is not None:
        m = _COT.match(final)
        if not m or any(final.count(tag) != 1 for tag in (T.THINK, T.END_THINK, T.ANSWER, T.END_ANSWER)):
            raise _Reject("malformed_cot", "the last assistant turn must be <think>…</think><answer>…</answer>")
        if sample.answer is not None:
            boxes = m.group("answer").count(T.BEGIN_OF_BOX)
            if boxes != 1 or m.group("answer").count(T.END_OF_BOX) != 1 or final.count(T.BEGIN_OF_BOX) != 1:
                raise _Reject("box_count_mismatch", f"{boxes} boxes in the answer; a verifiable sample needs exactly 1")


def _image_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.size
