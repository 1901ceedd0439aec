"""Per-document rules for interleaved documents (web pages, books): how many images, how much text per image,
and images that many documents repeat (logos, ads, tracking pixels) taken out of the documents that hold them.

    judge(sample, DocumentConfig())              → Verdict (documents only; other kinds pass untouched)
    remove_images(sample, {1, 3})                → the document without images 1 and 3, segments renumbered

Counting how many documents hold an image is a global figure: `pipelines/documents.py` counts image hashes
across the corpus (metadata only) and calls `remove_images` on the documents that hold a repeated one. A
document left without images follows its kind's rule (`interleaved` needs none), then `documents.min_images`.
Which kinds are documents is the kinds table's (`annotated_by` "documents"); `documents.kinds` chooses others.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from vlmloom.schemas.config import ConfigError
from vlmloom.schemas.kinds import check_kind_selection, kinds_annotated_by, sample_texts
from vlmloom.schemas.records import Sample, Segment

from .base import Verdict

STAGE = "documents"


@dataclass(frozen=True, kw_only=True)
class DocumentConfig:
    kinds: tuple[str, ...] = ()  # kinds these rules judge (others pass untouched); () = the kinds table's (interleaved)
    min_images: int = 0  # fewer images (after repeated ones are removed) → too_few_images; 0 allows text-only
    max_images: int = 64  # more images → too_many_images
    min_text_chars_per_image: int = 0  # text characters per image below this → too_little_text_per_image; 0 disables
    max_repeated_image_documents: int = 20  # an image held by more documents than this is removed from them; 0 disables

    def __post_init__(self):
        if self.min_images < 0 or self.max_images < self.min_images:
            raise ConfigError(f"documents.min_images ({self.min_images}) must be ≥ 0 and ≤ documents.max_images "
                              f"({self.max_images})")
        check_kind_selection("documents.kinds", self.kinds)
        if self.min_text_chars_per_image < 0 or self.max_repeated_image_documents < 0:
            raise ConfigError("documents.min_text_chars_per_image and documents.max_repeated_image_documents "
                              "must be ≥ 0")


    def selected_kinds(self) -> tuple[str, ...]:
        return self.kinds or kinds_annotated_by(STAGE)


def image_identity(sample: Sample, index: int) -> str:
    """What makes two documents' images the same image: content hash, else (not yet fetched) the URI."""
    image = sample.images[index]
    return image.sha256 or image.uri or ""


def document_text_chars(sample: Sample) -> int:
    """Characters of the texts the kinds table names for the record (a document's text segments)."""
    return sum(len(text) for text in sample_texts(sample))


def remove_images(sample: Sample, indices: set[int]) -> Sample:
    """A copy of `sample` without the images at `indices`: their image segments go, later images are renumbered,
    text segments stay in order."""
    keep = [i for i in range(len(sample.images)) if i not in indices]
    renumber = {old: new for new, old in enumerate(keep)}
    segments = [seg if seg.type != "image" else Segment(type="image", image_index=renumber[seg.image_index])
                for seg in sample.segments if seg.type != "image" or seg.image_index in renumber]
    return dataclasses.replace(sample, images=[sample.images[i] for i in keep], segments=segments)


def judge(sample: Sample, config: DocumentConfig) -> Verdict:
    if sample.kind not in config.selected_kinds():
        return Verdict.ok()
    images = len(sample.images)
    chars = document_text_chars(sample)
    signals = {"document_images": images, "document_text_chars": chars}
    if images < config.min_images:
        return Verdict.drop("too_few_images", f"{images} images < documents.min_images {config.min_images}", **signals)
    if images > config.max_images:
        return Verdict.drop("too_many_images", f"{images} images > documents.max_images {config.max_images}",
                            **signals)
    if images and config.min_text_chars_per_image and chars / images < config.min_text_chars_per_image:
        return Verdict.drop("too_little_text_per_image",
                            f"{chars} text characters for {images} images < documents.min_text_chars_per_image "
                            f"{config.min_text_chars_per_image} per image", **signals)
    return Verdict.ok(**signals)
