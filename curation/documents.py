"""Per-document rules for interleaved documents (web pages, books): how many images, how much text per image,
and images that many documents repeat (logos, ads, tracking pixels) taken out of the documents that hold them.

    judge(sample, DocumentConfig())              → Verdict (documents only; other kinds pass untouched)
    remove_images(sample, {1, 3})                → the document without images 1 and 3, segments renumbered

Counting how many documents hold an image is a global figure: `pipelines/documents.py` counts image hashes
across the corpus (metadata only) and calls `remove_images` on the documents that hold a repeated one. A
document left without images follows its kind's rule (`interleaved` needs none; a kind that needs an image:
`no_image`, as decode says it), then `documents.min_images`. Images unrelated to their nearby text leave too:
`curation/image_relevance.py` scores them with the CLIP model and calls `remove_images`, then `judge`.
Which kinds are documents is the kinds table's (`annotated_by` "documents"); `documents.kinds` chooses others.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from vlmloom.schemas.config import ConfigError
from vlmloom.schemas.kinds import check_kind_selection, kind_of, kinds_annotated_by, sample_texts
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
    # CLIP cosine of an image with its nearby text below this → the image leaves the document (irrelevant_image);
    # -1 disables. Runs only where models.clip has a model (models.clip.enabled with models.clip.model_path): the
    # image_relevance stage uses that model. 0.15 is MMC4's cut (CLIP ViT-L/14, image vs its best sentence).
    min_image_text_similarity: float = 0.15
    image_text_window_chars: int = 300  # nearby text: this many characters on each side of an image (~77 CLIP tokens)

    def __post_init__(self):
        if self.min_images < 0 or self.max_images < self.min_images:
            raise ConfigError(f"documents.min_images ({self.min_images}) must be ≥ 0 and ≤ documents.max_images "
                              f"({self.max_images})")
        check_kind_selection("documents.kinds", self.kinds)
        if self.min_text_chars_per_image < 0 or self.max_repeated_image_documents < 0:
            raise ConfigError("documents.min_text_chars_per_image and documents.max_repeated_image_documents "
                              "must be ≥ 0")
        if self.min_image_text_similarity != -1 and not -1.0 <= self.min_image_text_similarity <= 1.0:
            raise ConfigError(f"documents.min_image_text_similarity ({self.min_image_text_similarity}) must be a "
                              "cosine in [-1, 1], or -1 to disable")
        if self.image_text_window_chars < 1:
            raise ConfigError(f"documents.image_text_window_chars ({self.image_text_window_chars}) must be ≥ 1")


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
    required = kind_of(sample).min_images  # the kind's own rule first: what decode would have said of it
    if images < required:
        return Verdict.drop("no_image", f"kind {sample.kind!r} needs {required} image(s), the document has {images} "
                            "after removals", **signals)
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
