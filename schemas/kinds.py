"""The kinds table: what each kind of record requires, which of its texts the stages judge, what exact dedup
compares, and how pack renders it.

Every stage asks this table instead of keeping its own list of kinds (DESIGN.md, "schemas/"). A new kind is one
`Kind(...)` entry plus its registration here; a stage that needs something new of every kind adds one field.

    sample_texts(sample)          → the texts language id, heuristics, MinHash, contamination and concepts read
    dedup_content_digest(sample)  → the hex digest exact dedup groups on (per kind: see `Kind.dedup_content`)
    kind_of(sample).render        → how pack renders the record ("pretrain" | "chat" | "video")
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

from .records import KINDS, Sample
from .registry import Registry


def _caption_texts(sample: Sample) -> list[str]:
    return [t for t in (sample.text, sample.recaption) if t]


def _segment_texts(sample: Sample) -> list[str]:
    texts = [s.text for s in sample.segments if s.type == "text" and s.text]
    # A document without segments is its `text` (a reader that did not split it).
    return texts or _caption_texts(sample)


def _chat_texts(sample: Sample) -> list[str]:
    return [t for t in [sample.text] + [m.content for m in sample.messages] + [sample.answer] if t]


def _all_texts(sample: Sample) -> list[str]:
    return _caption_texts(sample) + [m.content for m in sample.messages if m.content]


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
    min_images: int  # images a record of this kind must hold after decode (0: optional)
    caption_rules: bool  # the caption heuristics (length, repetition, ...) apply to its `text`
    texts: Callable[[Sample], list[str]]  # what language id, heuristics, MinHash, contamination, concepts read
    dedup_content: Callable[[Sample], bytes]  # what exact dedup compares
    render: str  # how pack renders it: "pretrain" (text + images), "chat" (turns), "video"


KIND_TABLE: Registry[Kind] = Registry("kind")


def register(kind: Kind) -> Kind:
    if kind.name not in KINDS:
        raise ValueError(f"kind {kind.name!r} is not in schemas.records.KINDS {KINDS}")
    KIND_TABLE.register(kind.name)(kind)
    return kind


register(Kind("caption", min_images=1, caption_rules=True, texts=_caption_texts,
              dedup_content=_first_image_or_text, render="pretrain"))
register(Kind("interleaved", min_images=0, caption_rules=False, texts=_segment_texts,
              dedup_content=_document_content, render="pretrain"))
register(Kind("ocr", min_images=1, caption_rules=False, texts=_all_texts,
              dedup_content=_first_image_or_text, render="pretrain"))
register(Kind("grounding", min_images=1, caption_rules=False, texts=_all_texts,
              dedup_content=_chat_content, render="pretrain"))
register(Kind("gui", min_images=1, caption_rules=False, texts=_all_texts,
              dedup_content=_chat_content, render="pretrain"))
register(Kind("video", min_images=0, caption_rules=True, texts=_caption_texts,
              dedup_content=_first_video_or_text, render="video"))
register(Kind("qa", min_images=0, caption_rules=False, texts=_chat_texts,
              dedup_content=_chat_content, render="chat"))


def kind_of(sample: Sample) -> Kind:
    return KIND_TABLE.get(sample.kind)


def sample_texts(sample: Sample) -> list[str]:
    """The record's texts, as its kind declares them (non-empty strings, in order)."""
    return kind_of(sample).texts(sample)


def dedup_content_digest(sample: Sample) -> str:
    """Hex sha256 of what exact dedup compares for this record's kind (the kind is part of it)."""
    content = kind_of(sample).dedup_content(sample)
    return hashlib.sha256(sample.kind.encode() + b"\x00" + content).hexdigest()
