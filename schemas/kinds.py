"""The kinds table: what each kind of record requires, which of its texts the stages judge, what exact dedup
compares, which model stages annotate it, and how pack renders it.

Every stage asks this table instead of keeping its own list of kinds (DESIGN.md, "schemas/"). A new kind is one
`Kind(...)` entry plus its registration here; a stage that needs something new of every kind adds one field.

    sample_texts(sample)          → the texts language id, heuristics, MinHash, contamination, concepts and CLIP read
    dedup_content_digest(sample)  → the hex digest exact dedup groups on (per kind: see `Kind.dedup_content`)
    kind_of(sample).render        → how pack renders the record ("pretrain" | "chat" | "video")
    unmet_need(sample)            → (reason, detail) when pack would have nothing to train on, else None
    kinds_annotated_by("ocr")     → the kinds a model stage applies to unless its `kinds` config says otherwise
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

from .config import ConfigError
from .records import KINDS, Sample
from .registry import Registry

IMAGE_PLACEHOLDER = "<image>"  # where a chat turn places an image; structure, not language
# What a record must carry for pack to train on it (`Kind.needs`), and the reason code when it does not: the same
# codes pack's builder uses, so the last curate stage rejects what pack would otherwise drop.
NEEDS = {"": "", "text": "empty_text", "answer": "no_assistant_turn"}
TEXT_RULES = ("caption", "document")  # the heuristics' rule sets (curation/filters.py)
RENDERINGS = ("pretrain", "chat", "video")  # pack's renderings (packing/builder.py registers one renderer each)
ANNOTATING_STAGES = ("clip", "concepts", "recaption", "ocr", "grounding", "documents")  # stages that select kinds


def _turn_texts(sample: Sample) -> list[str]:
    """User and assistant turns without their image placeholders; system prompts are boilerplate, not content."""
    out = []
    for m in sample.messages:
        if m.role != "system" and m.content:
            text = m.content.replace(IMAGE_PLACEHOLDER, " ").strip()
            if text:
                out.append(text)
    return out


def _caption_texts(sample: Sample) -> list[str]:
    return [t for t in (sample.text, sample.recaption) if t and t.strip()]


def _segment_texts(sample: Sample) -> list[str]:
    texts = [s.text for s in sample.segments if s.type == "text" and s.text and s.text.strip()]
    # A document without text segments is its `text` (a reader that did not split it).
    return texts or _caption_texts(sample)


def _chat_texts(sample: Sample) -> list[str]:
    return [t for t in [sample.text, *_turn_texts(sample), sample.answer] if t and t.strip()]


def _annotated_texts(sample: Sample) -> list[str]:
    return _caption_texts(sample) + _turn_texts(sample)


def _image_ids(sample: Sample) -> list[str]:
    return [image.sha256 or image.uri or "" for image in sample.images]


def _first_image_or_text(sample: Sample) -> bytes:
    """Caption-like records are keyed on image 0 (two captions of one image are one record's duplicates);
    a record without an image on its text."""
    ids = _image_ids(sample)
    if ids and ids[0]:
        return b"img:" + ids[0].encode()
    return b"txt:" + "\n".join(_caption_texts(sample)).encode("utf-8", "surrogateescape")


def _first_video_or_text(sample: Sample) -> bytes:
    """A video record is keyed on video 0's content sha256 (two captions of one clip are duplicates); a video
    record without a probed video on its text."""
    if sample.videos and sample.videos[0].sha256:
        return b"vid:" + sample.videos[0].sha256.encode()
    return _first_image_or_text(sample)


def _chat_content(sample: Sample) -> bytes:
    """A QA/chat record is its images *and* its turns: several questions about one image are different records."""
    parts = ["img:" + i for i in _image_ids(sample)]
    parts += [f"{m.role}:{m.content}" for m in sample.messages]
    parts += [f"text:{sample.text or ''}", f"answer:{sample.answer or ''}"]
    return "\x1f".join(parts).encode("utf-8", "surrogateescape")


def _document_content(sample: Sample) -> bytes:
    """An interleaved document is all of its segments in order (text, and image content by hash)."""
    ids = _image_ids(sample)
    parts = []
    for seg in sample.segments:
        if seg.type == "text":
            parts.append("t:" + (seg.text or ""))
        else:
            index = seg.image_index if seg.image_index is not None else -1
            parts.append("i:" + (ids[index] if 0 <= index < len(ids) else ""))
    if not parts:
        return _first_image_or_text(sample)
    return "\x1f".join(parts).encode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class Kind:
    name: str
    min_images: int  # images a record must hold (decode rejects fewer as no_image; 0: optional)
    needs: str  # what pack needs to train on it, checked by curate's last stage (`unmet_need`): a key of NEEDS
    text_rules: str  # the heuristics' rule set for its texts (TEXT_RULES): "caption" (one short alt-text) | "document"
    texts: Callable[[Sample], list[str]]  # what language id, heuristics, MinHash, contamination, concepts, CLIP read
    dedup_content: Callable[[Sample], bytes]  # what exact dedup compares
    render: str  # how pack renders it (RENDERINGS): "pretrain" (images + text + boxes), "chat" (turns), "video"
    annotated_by: frozenset[str] = frozenset()  # model stages that apply to it unless their `kinds` config overrides
    text_is_transcript: bool = False  # its text is the image's transcript (grounding's transcription turn answers it)
    # The record *is* its image: a near-duplicate image (pHash stage) makes a duplicate record. Not so for records
    # that are an image plus turns, boxes or other images (ten questions about one photo are ten records), nor for
    # document pages (pages of one book share a pHash at 8×8; their transcripts differ): those meet their
    # near-duplicates through MinHash's pair-aware rule, near text *and* near image.
    image_is_content: bool = False

    def __post_init__(self) -> None:
        problems = [f"needs {self.needs!r} not in {list(NEEDS)}"] if self.needs not in NEEDS else []
        problems += [f"text_rules {self.text_rules!r} not in {TEXT_RULES}"] if self.text_rules not in TEXT_RULES else []
        problems += [f"render {self.render!r} not in {RENDERINGS}"] if self.render not in RENDERINGS else []
        problems += [f"annotated_by {s!r} not in {ANNOTATING_STAGES}"
                     for s in sorted(self.annotated_by) if s not in ANNOTATING_STAGES]
        if problems:
            raise ValueError(f"kind {self.name!r}: " + "; ".join(problems))


KIND_TABLE: Registry[Kind] = Registry("kind")


def register(kind: Kind) -> Kind:
    if kind.name not in KINDS:
        raise ValueError(f"kind {kind.name!r} is not in schemas.records.KINDS {KINDS}")
    KIND_TABLE.register(kind.name)(kind)
    return kind


register(Kind("caption", min_images=1, needs="text", text_rules="caption", texts=_caption_texts,
              dedup_content=_first_image_or_text, render="pretrain",
              annotated_by=frozenset({"clip", "concepts", "recaption"}), image_is_content=True))
register(Kind("interleaved", min_images=0, needs="text", text_rules="document", texts=_segment_texts,
              dedup_content=_document_content, render="pretrain",
              annotated_by=frozenset({"concepts", "documents"})))
register(Kind("ocr", min_images=1, needs="text", text_rules="document", texts=_annotated_texts,
              dedup_content=_first_image_or_text, render="pretrain", annotated_by=frozenset({"ocr", "grounding"}),
              text_is_transcript=True))
register(Kind("grounding", min_images=1, needs="text", text_rules="document", texts=_annotated_texts,
              dedup_content=_chat_content, render="pretrain", annotated_by=frozenset({"grounding"})))
register(Kind("gui", min_images=1, needs="text", text_rules="document", texts=_annotated_texts,
              dedup_content=_chat_content, render="pretrain", annotated_by=frozenset({"grounding"})))
register(Kind("video", min_images=0, needs="text", text_rules="caption", texts=_caption_texts,
              dedup_content=_first_video_or_text, render="video"))
register(Kind("qa", min_images=0, needs="answer", text_rules="document", texts=_chat_texts,
              dedup_content=_chat_content, render="chat"))


def kind_of(sample: Sample) -> Kind:
    return KIND_TABLE.get(sample.kind)


def sample_texts(sample: Sample) -> list[str]:
    """The record's texts, as its kind declares them (non-empty strings, in order; chat turns without their
    `<image>` placeholders, system turns left out)."""
    return kind_of(sample).texts(sample)


def dedup_content_digest(sample: Sample) -> str:
    """Hex sha256 of what exact dedup compares for this record's kind (the kind is part of it)."""
    content = kind_of(sample).dedup_content(sample)
    return hashlib.sha256(sample.kind.encode() + b"\x00" + content).hexdigest()


def kinds_annotated_by(stage: str) -> tuple[str, ...]:
    """The kinds whose row names `stage` (one of ANNOTATING_STAGES) in `annotated_by`, in KINDS order."""
    if stage not in ANNOTATING_STAGES:
        raise KeyError(f"unknown annotating stage {stage!r}; known: {', '.join(ANNOTATING_STAGES)}")
    return tuple(name for name in KINDS if name in KIND_TABLE and stage in KIND_TABLE.get(name).annotated_by)


def check_kind_selection(where: str, kinds: tuple[str, ...] | list[str]) -> None:
    """A config's `kinds` list names kinds of the table; raises ConfigError naming the key and the known kinds."""
    unknown = [k for k in kinds if k not in KIND_TABLE]
    if unknown:
        raise ConfigError(f"{where}: unknown kind {unknown[0]!r}; known: {', '.join(KIND_TABLE.names())}")


def _has_assistant_turn(sample: Sample) -> bool:
    last = sample.messages[-1] if sample.messages else None
    return last is not None and last.role == "assistant" and bool(last.content.strip())


def _has_training_text(sample: Sample) -> bool:
    """What pack's pretrain rendering trains on: the text (or recaption), text segments, OCR lines, grounding
    boxes, or chat turns that end in an answer (rendered as chat)."""
    return bool((sample.text or "").strip() or (sample.recaption or "").strip()
                or any(s.type == "text" and (s.text or "").strip() for s in sample.segments)
                or any(line.text.strip() for line in sample.annotations.ocr)
                or sample.annotations.grounding or _has_assistant_turn(sample))


def unmet_need(sample: Sample) -> tuple[str, str] | None:
    """(reason, detail) when the record lacks what its kind needs for pack to train on it (`Kind.needs`), else None.

    An image without any text is rejected rather than packed as images followed by <|endoftext|>: such a sample
    trains one token and nothing the model could learn from the image."""
    kind = kind_of(sample)
    if kind.needs == "text" and not _has_training_text(sample):
        hint = {"caption": "caption the images with models.recaption", "ocr": "transcribe them with models.ocr"}
        return NEEDS["text"], (f"{sample.kind} record has no text to train on (text, recaption, text segments, OCR "
                               f"lines, boxes or an answered chat turn)"
                               + (f"; {hint[sample.kind]}" if sample.kind in hint else ""))
    if kind.needs == "answer" and not _has_assistant_turn(sample) and not (sample.answer or "").strip():
        return NEEDS["answer"], (f"{sample.kind} record has neither a final assistant turn nor an `answer` "
                                 f"({len(sample.messages)} message(s))")
    return None
