"""`Sample.signals`, declared: the measured values stages hand to later stages, to the manifest and the report.

One row per key: its type, the stage that writes it, and who reads it. A stage's signals travel only through
the `Verdict` it returns (curation/base.py); the routing DoFn (pipelines/stages.py) checks them against this
table with `check_signals` before merging them into the sample (a drop's signals become the Rejection's
`fields`). Adding a signal means adding its row here.

    check_signals("decode", {"width": 640, ...})  → None, or RecordError naming the stage, key and problem
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

from vlmloom.schemas.records import RecordError


@dataclass(frozen=True)
class Signal:
    type: type  # numbers.Integral / numbers.Real / str / list (numpy scalars count as their number type)
    stage: str  # the stage that writes it
    doc: str  # what it is; who reads it
    also: tuple[str, ...] = ()  # further stages that write it (the dedup stages share `duplicate_of`)

    @property
    def writers(self) -> tuple[str, ...]:
        return (self.stage, *self.also)


ORIGIN_SIGNAL = "origin"
RAW_DIGEST_SIGNAL = "raw_sha256"
RENAMED_SIGNAL = "renamed_from"
DEDUP_STAGES = ("exact_dedup", "near_dup_image", "near_dup_text", "near_dup_embedding", "near_dup_semantic_text")

SIGNALS: dict[str, Signal] = {
    ORIGIN_SIGNAL: Signal(str, "read", "where the raw record was read (file#member, FILE:LINE, file:rowN); "
                                        "duplicate-key ties, trace"),
    RAW_DIGEST_SIGNAL: Signal(str, "read", "sha256 of the raw record as read (line bytes, tar members, row values); "
                                           "the key-uniqueness step tells identical copies from different records"),
    RENAMED_SIGNAL: Signal(str, "read", "the key the source gave a record that shared it with different content "
                                        "(pipelines/keys.py renamed it); trace"),
    "download_images_removed": Signal(numbers.Integral, "download", "images an interleaved document lost to failed "
                                                                     "downloads (their segments too); report"),
    "download_failures": Signal(list, "download", "failed images [{image, uri, reason}]: a trimmed document's "
                                                  "removals, a rejection's fields; trace"),
    "width": Signal(numbers.Integral, "decode", "image 0 width in pixels; heuristics, dedup (pixel count)"),
    "height": Signal(numbers.Integral, "decode", "image 0 height in pixels; heuristics, dedup (pixel count)"),
    "pixel_std": Signal(numbers.Real, "decode", "grey-level standard deviation of image 0; heuristics"),
    "image_sha256": Signal(str, "decode", "sha256 of image 0's bytes"),
    "video_duration": Signal(numbers.Real, "decode", "seconds of decodable video 0 (frames / fps); report"),
    "video_fps": Signal(numbers.Real, "decode", "video 0's average frame rate; report"),
    "video_frames": Signal(numbers.Integral, "decode", "frames of video 0 that decode; report"),
    "video_codec": Signal(str, "decode", "video 0's FFmpeg decoder name; report"),
    "video_motion": Signal(numbers.Real, "decode", "mean grey-level change between video 0's frames 1/2 s apart "
                                                   "(16×16 thumbnails, 0-255); static_video rule, report"),
    "video_pixel_std": Signal(numbers.Real, "decode", "mean grey-level std of video 0's frames; uniform_video rule"),
    "phash": Signal(str, "decode", "64-bit pHash of image 0, 16 hex digits; near_dup_image, contamination"),
    "duplicate_of": Signal(str, DEDUP_STAGES[0], "the kept representative a dropped duplicate lost to; report, trace",
                           also=DEDUP_STAGES[1:]),
    "document_images": Signal(numbers.Integral, "documents", "images a document holds after the documents stage "
                                                             "(and after image_relevance's removals)",
                              also=("image_relevance",)),
    "document_text_chars": Signal(numbers.Integral, "documents", "text characters of a document's segments",
                                  also=("image_relevance",)),
    "document_images_removed": Signal(numbers.Integral, "documents", "repeated images (logos, ads) taken out"),
    "image_text_scores": Signal(list, "image_relevance", "per image of a document (as the stage saw them): CLIP "
                                                         "cosine with its nearby text, 4 decimals, None = not "
                                                         "scored; trace"),
    "irrelevant_images_removed": Signal(numbers.Integral, "image_relevance", "images below "
                                                                             "documents.min_image_text_similarity "
                                                                             "taken out"),
    "caption_chars": Signal(numbers.Integral, "heuristics", "characters of the caption"),
    "caption_repetition": Signal(numbers.Real, "heuristics", "share of repeated word n-grams in the caption"),
    "document_chars": Signal(numbers.Integral, "heuristics", "characters of a record's texts joined (kinds with the document rule set)"),
    "document_repetition": Signal(numbers.Real, "heuristics", "share of repeated word n-grams in those texts"),
    "lang": Signal(str, "language", "language code of the text; report (languages)"),
    "lang_score": Signal(numbers.Real, "language", "language-id confidence"),
    "clip_score": Signal(numbers.Real, "clip", "image-text similarity; the clip top-fraction step, report"),
    "concept_ids": Signal(list, "concepts", "vocabulary concept ids found in the text; the balance step"),
    "concept_names": Signal(list, "concepts", "the same concepts by name; grounding (detector phrases)"),
    "concept_keep_probability": Signal(numbers.Real, "concepts", "the balance step's keep probability"),
    "contamination_benchmark": Signal(str, "contamination", "benchmark a dropped sample overlaps; report"),
    "contamination_item_id": Signal(str, "contamination", "benchmark item a dropped sample overlaps"),
    "text_choice": Signal(str, "recaption", "'recaption' or 'original': which text trains; Sample.training_text"),
    "recaption_attempts": Signal(numbers.Integral, "recaption", "model calls made for the recaption"),
    "ocr_lines": Signal(numbers.Integral, "ocr", "text lines detected; report"),
    "ocr_mean_score": Signal(numbers.Real, "ocr", "mean recognition confidence"),
    "ocr_char_accuracy": Signal(numbers.Real, "ocr", "character accuracy against a reference transcript; report"),
    "grounding_boxes": Signal(numbers.Integral, "grounding", "boxes kept after merging; report"),
    **{f"grounding_boxes_{source}": Signal(numbers.Integral, "grounding", f"boxes from {source}")
       for source in ("ocr", "gui", "detector", "input")},
}
LIBRARY_STAGES = frozenset(stage for signal in SIGNALS.values() for stage in signal.writers)


_TYPE_OK: dict[tuple[type, type], bool] = {}  # (value's type, declared type) → accepted: checked once per pair


def _of_type(kind: type, declared: type) -> bool:
    """Is a value of type `kind` a `declared` (numbers.Integral, numbers.Real, ...) and not a bool? The answer
    depends on the types alone, and an ABC's isinstance is slow: every record's signals are checked."""
    ok = _TYPE_OK.get((kind, declared))
    if ok is None:
        ok = _TYPE_OK[(kind, declared)] = not issubclass(kind, bool) and issubclass(kind, declared)
    return ok


def check_signals(stage: str, signals: dict[str, Any]) -> None:
    """A library stage may write only its declared signals, with their types; any other stage (a custom
    judge) may write keys of its own but none that a library stage owns."""
    for key, value in signals.items():
        declared = SIGNALS.get(key)
        if declared is None:
            if stage in LIBRARY_STAGES:
                raise RecordError(f"stage {stage!r}: signal {key!r} is not declared in schemas/signals.py; add a row")
            continue
        if stage not in declared.writers:
            raise RecordError(f"stage {stage!r}: signal {key!r} belongs to stage "
                              f"{' or '.join(repr(w) for w in declared.writers)}")
        if value is not None and not _of_type(type(value), declared.type):
            raise RecordError(f"stage {stage!r}: signal {key!r} = {value!r} is not of type {declared.type.__name__}")
