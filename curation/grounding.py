"""Grounding annotation: phrases → boxes from OCR lines, GUI element sidecars and a zero-shot detector.

Input per sample: `annotations.ocr` (from the OCR stage or the source), `meta["elements"]` =
[{"label", "type", "box": [x1, y1, x2, y2] in pixels}] for GUI screens, and optionally detector
output. Output: `annotations.grounding` (0–1000 integer boxes), `signals.grounding_boxes`, and —
when the sample has no chat turns yet — user/assistant turns whose targets are rendered as
`<|begin_of_box|>[x1,y1,x2,y2]<|end_of_box|>` (GLM-4.1V's format). A sample with a transcript (an OCR
sample's document text, else its OCR lines in reading order) gets one transcription turn first
("Read all the text in the image." → the transcript, capped at `transcript_max_chars`), so the chat
rendering trains its text as well as its boxes. Samples with fewer than `min_boxes` boxes are rejected
with `grounding_too_few_boxes`.

Detector backends sit behind `DETECTOR_BACKENDS`; the default is a transformers zero-shot object
detector (OWL-ViT, OWLv2, Grounding DINO) loaded from a local directory.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from vlmloom.curation.base import Verdict
from vlmloom.schemas.registry import Registry
from vlmloom.curation.ocr import normalize_box, open_image, reading_order, transcript
from vlmloom.schemas.config import ConfigError
from vlmloom.schemas.kinds import check_kind_selection, kind_of, kinds_annotated_by
from vlmloom.schemas.records import Grounding, Message, Sample

STAGE = "grounding"
TOO_FEW = "grounding_too_few_boxes"
SOURCES = ("ocr", "gui", "detector")
BOX_BEGIN, BOX_END = "<|begin_of_box|>", "<|end_of_box|>"
TRANSCRIBE_PROMPT = "Read all the text in the image."


@dataclass(frozen=True, kw_only=True)
class GroundingConfig:
    enabled: bool = False  # off by default; ocr/gui sources need no model
    sources: tuple[str, ...] = ("ocr", "gui")  # where boxes come from: "ocr", "gui", "detector"
    kinds: tuple[str, ...] = ()  # kinds to annotate (others pass through); () = those the kinds table marks "grounding"
    min_boxes: int = 2  # fewer boxes than this → grounding_too_few_boxes
    max_boxes: int = 0  # keep at most this many (largest first); 0 = no cap
    add_messages: bool = True  # write grounding Q/A turns when the sample has no messages yet
    max_turns: int = 8  # grounding Q/A pairs written per sample
    # characters of the transcription turn's answer (OCR text, cut at a line break); 0 = no transcription turn.
    # A transcript cut short is only partly trained: the pack report counts the sample under text_left_out
    transcript_max_chars: int = 4000
    detector_backend: str = "transformers"  # zero-shot detector backend (only with "detector" in sources)
    detector_model_path: str = ""  # local OWL-ViT/OWLv2/Grounding DINO dir; "" = detector source off
    detector_labels: tuple[str, ...] = ()  # phrases to detect; concept names of the sample are added when known
    detector_threshold: float = 0.3  # detection score below which a box is discarded
    batch_size: int = 8  # images per RunInference batch for the detector

    def validate(self) -> None:
        check_kind_selection("grounding.kinds", self.kinds)
        bad = [s for s in self.sources if s not in SOURCES]
        if bad:
            raise ConfigError(f"grounding.sources has {bad}: use a subset of {list(SOURCES)}")
        if not self.sources:
            raise ConfigError("grounding.sources is empty: list at least one of ocr, gui, detector or disable grounding")
        if "detector" in self.sources:
            if self.detector_backend not in DETECTOR_BACKENDS:
                raise ConfigError(f"grounding.detector_backend {self.detector_backend!r} is unknown: "
                                  f"use one of {DETECTOR_BACKENDS.names()}")
            if self.enabled and not self.detector_model_path:
                raise ConfigError("grounding.sources includes 'detector' but grounding.detector_model_path is empty: "
                                  "set it to a local zero-shot detector dir (e.g. OWLv2) or drop 'detector'")
            if self.enabled and not self.detector_labels:
                raise ConfigError("grounding.detector_labels is empty: list the phrases to detect")
        if self.min_boxes < 0 or self.max_boxes < 0 or self.max_turns < 0:
            raise ConfigError("grounding.min_boxes, max_boxes and max_turns must be >= 0")
        if self.transcript_max_chars < 0:
            raise ConfigError(f"grounding.transcript_max_chars ({self.transcript_max_chars}) must be >= 0: "
                              f"the cap on the transcription turn's answer, or 0 to write no transcription turn")
        if not 0.0 <= self.detector_threshold <= 1.0:
            raise ConfigError(f"grounding.detector_threshold ({self.detector_threshold}) must be in [0, 1]")

    @property
    def uses_detector(self) -> bool:
        return "detector" in self.sources and bool(self.detector_model_path)


@dataclass
class Detection:
    label: str
    box: list[float]  # pixels [x1, y1, x2, y2]
    score: float


Detector = Callable[[list[Any], list[list[str]]], list[list[Detection]]]  # images, labels per image → detections
DETECTOR_BACKENDS: Registry[Callable[[GroundingConfig], Detector]] = Registry("detector backend")


@DETECTOR_BACKENDS.register("transformers")
def _transformers_detector(config: GroundingConfig) -> Detector:
    import torch
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    processor = AutoProcessor.from_pretrained(config.detector_model_path, local_files_only=True)
    model = AutoModelForZeroShotObjectDetection.from_pretrained(config.detector_model_path, local_files_only=True).eval()

    def detect(images: list[Any], labels: list[list[str]]) -> list[list[Detection]]:
        results = []
        for image, names in zip(images, labels):  # label sets differ per image, so one image per call
            if not names:
                results.append([])
                continue
            inputs = processor(text=[names], images=image, return_tensors="pt")
            with torch.inference_mode():
                outputs = model(**inputs)
            post = processor.post_process_grounded_object_detection(
                outputs, threshold=config.detector_threshold, target_sizes=[(image.height, image.width)],
                text_labels=[names])[0]
            found = []
            for box, score, label in zip(post["boxes"].tolist(), post["scores"].tolist(),
                                         post.get("text_labels") or post["labels"]):
                name = label if isinstance(label, str) else names[int(label)]
                found.append(Detection(name, [float(v) for v in box], float(score)))
            results.append(found)
        return results

    return detect


def render_box(box: Sequence[int]) -> str:
    """GLM-4.1V's answer format for a box in 0–1000 coordinates."""
    return f"{BOX_BEGIN}[{','.join(str(int(v)) for v in box)}]{BOX_END}"


def sample_transcript(sample: Sample, max_chars: int) -> str:
    """The text a transcription turn answers with, "" when there is none or `max_chars` is 0.

    An OCR sample's document text is its transcript (sources and the OCR stage's `fill_text` put it there);
    otherwise the OCR lines in reading order. Other kinds' text (a GUI caption) is no transcript: the kinds table
    says which kinds' text is (`Kind.text_is_transcript`). Longer
    transcripts are cut at the last line break within `max_chars` (mid-line only when the first line is
    longer), so the answer never ends in half a line when it can be helped.
    """
    if not max_chars:
        return ""
    text = (sample.training_text() or "").strip() if kind_of(sample).text_is_transcript else ""
    if not text:
        text = transcript(reading_order(l for l in sample.annotations.ocr if l.text.strip())).strip()
    if len(text) <= max_chars:
        return text
    cut = text.rfind("\n", 0, max_chars + 1)
    return (text[:cut] if cut > 0 else text[:max_chars]).rstrip()


def grounding_messages(groundings: Sequence[Grounding], max_turns: int, transcript_text: str = "") -> list[Message]:
    """One transcription turn when there is a transcript, then up to `max_turns` grounding Q/A pairs; the
    first user turn carries the `<image>` placeholder."""
    prompts: list[tuple[str, str]] = []
    if transcript_text:
        prompts.append((TRANSCRIBE_PROMPT, transcript_text))
    prompts += [(f'Locate "{g.phrase}" in the image and give its bounding box.', render_box(g.box))
                for g in groundings[:max_turns]]
    turns: list[Message] = []
    for i, (question, answer) in enumerate(prompts):
        turns.append(Message("user", ("<image>" if i == 0 else "") + question))
        turns.append(Message("assistant", answer))
    return turns


def _valid(box: Sequence[int]) -> bool:
    return len(box) == 4 and box[2] > box[0] and box[3] > box[1]


def _area(box: Sequence[int]) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


class GroundingAnnotator:
    """Collects boxes from the configured sources (detector output passed in) and judges the count."""

    def __init__(self, config: GroundingConfig, detector: Detector | None = None):
        self.config = config
        self._detector = detector

    def applies(self, sample: Sample) -> bool:
        return sample.kind in (self.config.kinds or kinds_annotated_by(STAGE))

    def labels_for(self, sample: Sample) -> list[str]:
        names = list(self.config.detector_labels)
        for name in sample.signals.get("concept_names") or []:
            if name not in names:
                names.append(str(name))
        return names

    def detect_batch(self, samples: list[Sample]) -> list[list[Detection]]:
        if not self.config.uses_detector:
            return [[] for _ in samples]
        if self._detector is None:
            self._detector = DETECTOR_BACKENDS.get(self.config.detector_backend)(self.config)
        with_image = [i for i, s in enumerate(samples) if s.images and s.images[0].bytes]
        found = self._detector([open_image(samples[i]) for i in with_image], [self.labels_for(samples[i]) for i in with_image])
        out: list[list[Detection]] = [[] for _ in samples]
        for i, dets in zip(with_image, found):
            out[i] = dets
        return out

    def collect(self, sample: Sample, detections: Sequence[Detection] = ()) -> list[Grounding]:
        width = sample.images[0].width if sample.images else 0
        height = sample.images[0].height if sample.images else 0
        found: list[Grounding] = []
        if "ocr" in self.config.sources:
            # A phrase that occurs twice has no single answer box, so it is not a grounding target.
            counts = Counter(l.text.strip() for l in sample.annotations.ocr)
            found += [Grounding(l.text.strip(), list(l.box), "ocr") for l in sample.annotations.ocr
                      if l.text.strip() and counts[l.text.strip()] == 1 and _valid(l.box)]
        if "gui" in self.config.sources and width and height:
            elements = sample.meta.get("elements") if isinstance(sample.meta, dict) else None
            for element in elements or []:
                if not isinstance(element, dict) or len(element.get("box") or []) != 4:
                    continue
                phrase = str(element.get("label") or element.get("type") or "").strip()
                box = normalize_box(element["box"], width, height)
                if phrase and _valid(box):
                    found.append(Grounding(phrase, box, "gui"))
        if width and height:
            for det in detections:
                box = normalize_box(det.box, width, height)
                if det.score >= self.config.detector_threshold and _valid(box):
                    found.append(Grounding(det.label, box, "detector"))
        if self.config.max_boxes and len(found) > self.config.max_boxes:
            found = sorted(found, key=lambda g: -_area(g.box))[: self.config.max_boxes]
        return found

    def judge(self, sample: Sample, detections: Sequence[Detection] = ()) -> Verdict:
        groundings = self.collect(sample, detections)
        # Boxes the source already carried (kind "grounding" inputs) are kept ahead of derived ones.
        existing = [g for g in sample.annotations.grounding if _valid(g.box)]
        seen = {(g.phrase, tuple(g.box)) for g in existing}
        merged = existing + [g for g in groundings if (g.phrase, tuple(g.box)) not in seen]
        by_source = Counter(g.source or "input" for g in merged)
        signals = {"grounding_boxes": len(merged), **{f"grounding_boxes_{k}": v for k, v in sorted(by_source.items())}}
        if len(merged) < self.config.min_boxes:
            return Verdict.drop(TOO_FEW, f"{len(merged)} box(es) < grounding.min_boxes={self.config.min_boxes} "
                                f"(sources: {', '.join(self.config.sources)})", **signals)
        sample.annotations.grounding = merged
        if self.config.add_messages and not sample.messages:
            sample.messages = grounding_messages(merged, self.config.max_turns,
                                                 sample_transcript(sample, self.config.transcript_max_chars))
        return Verdict.ok(**signals)
