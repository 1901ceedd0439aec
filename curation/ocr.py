"""OCR annotation: an image → text lines with polygons, 0–1000 boxes and scores, and the judgment on them.

Backends sit behind `OCR_BACKENDS` (name → factory(config) → reader); a reader maps one PIL image to
`RawLine`s in pixel coordinates. `OcrAnnotator` turns those into `OcrLine`s in GLM's integer 0–1000
coordinates, writes them to `sample.annotations.ocr`, and rejects OCR samples with no valid line
(`ocr_no_text_detected`, as in GLM-4.1V's recipe). `character_accuracy` is the measure the tests and
the demo report use against rendered ground truth.

Default backend `rapidocr`: its wheel ships PaddleOCR's PP-OCR det/rec ONNX models, so it runs offline.
`paddleocr` is for users with paddle installed and local model directories (never downloads here).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from vlmloom.curation.base import Verdict
from vlmloom.schemas.registry import Registry
from vlmloom.schemas.config import ConfigError
from vlmloom.schemas.kinds import check_kind_selection, kinds_annotated_by
from vlmloom.schemas.records import OcrLine, Sample

STAGE = "ocr"
NO_TEXT = "ocr_no_text_detected"


@dataclass(frozen=True, kw_only=True)
class OcrConfig:
    enabled: bool = False  # off by default; the rapidocr backend needs no external weights
    backend: str = "rapidocr"  # "rapidocr" | "paddleocr" (optional extra; needs det/rec model dirs)
    kinds: tuple[str, ...] = ()  # kinds to annotate (others pass through untouched); () = those the kinds table marks "ocr"
    min_score: float = 0.5  # recognition score below which a line is discarded; 0 keeps all
    min_lines: int = 1  # fewer valid lines than this → ocr_no_text_detected
    skip_annotated: bool = True  # samples that already carry annotations.ocr (e.g. ground truth) skip the model
    fill_text: bool = True  # set sample.text to the OCR transcript when the sample has no text
    det_model_path: str = ""  # detection model (rapidocr: .onnx file; paddleocr: dir); "" = the wheel's PP-OCR model
    rec_model_path: str = ""  # recognition model, same convention; "" = the wheel's PP-OCR model
    det_max_side: int = 1600  # detection input's longer side is capped here, small images are not upscaled; 0 = rapidocr's default (shorter side upscaled to 736: ~5x slower on banner-shaped renders)
    angle_classifier: bool = True  # run the 180° text-line orientation classifier (off saves ~10% on upright renders)
    threads: int = 1  # onnxruntime intra-op threads per worker; 0 = library default (all cores)
    batch_size: int = 4  # images per RunInference batch (rapidocr reads them one by one)

    def validate(self) -> None:
        check_kind_selection("ocr.kinds", self.kinds)
        if self.backend not in OCR_BACKENDS:
            raise ConfigError(f"ocr.backend {self.backend!r} is unknown: use one of {OCR_BACKENDS.names()}")
        if self.backend == "paddleocr" and self.enabled and not (self.det_model_path and self.rec_model_path):
            raise ConfigError("ocr.backend=paddleocr needs ocr.det_model_path and ocr.rec_model_path "
                              "(local PaddleOCR model dirs; nothing downloads here) or use ocr.backend=rapidocr")
        if not 0.0 <= self.min_score <= 1.0:
            raise ConfigError(f"ocr.min_score ({self.min_score}) must be in [0, 1]; 0.5 is the default")
        if self.min_lines < 1:
            raise ConfigError(f"ocr.min_lines ({self.min_lines}) must be >= 1")
        if self.threads < 0 or self.batch_size < 1:
            raise ConfigError("ocr.threads must be >= 0 and ocr.batch_size >= 1")
        if self.det_max_side and self.det_max_side < 320:
            raise ConfigError(f"ocr.det_max_side ({self.det_max_side}) is too small to read text: use >= 320, or 0")


@dataclass
class RawLine:
    """One detected line as a backend returns it: pixel polygon [(x, y), ...] clockwise from top-left."""
    text: str
    polygon: list[tuple[float, float]]
    score: float


OcrReader = Callable[[Any], list[RawLine]]  # PIL.Image → lines
OCR_BACKENDS: Registry[Callable[[OcrConfig], OcrReader]] = Registry("OCR backend")


@OCR_BACKENDS.register("rapidocr")
def _rapidocr_reader(config: OcrConfig) -> OcrReader:
    from rapidocr import RapidOCR

    params: dict[str, Any] = {"Global.log_level": "error", "Global.use_cls": config.angle_classifier}
    if config.det_max_side:
        params["Det.limit_type"] = "max"
        params["Det.limit_side_len"] = config.det_max_side
    if config.threads:
        params["EngineConfig.onnxruntime.intra_op_num_threads"] = config.threads
        params["EngineConfig.onnxruntime.inter_op_num_threads"] = 1
    if config.det_model_path:
        params["Det.model_path"] = config.det_model_path
    if config.rec_model_path:
        params["Rec.model_path"] = config.rec_model_path
    engine = RapidOCR(params=params)

    def read(image) -> list[RawLine]:
        out = engine(np.asarray(image.convert("RGB"))[:, :, ::-1])  # rapidocr expects BGR arrays
        if out.boxes is None or out.txts is None:
            return []
        return [RawLine(str(text), [(float(x), float(y)) for x, y in box], float(score))
                for box, text, score in zip(out.boxes, out.txts, out.scores)]

    return read


@OCR_BACKENDS.register("paddleocr")
def _paddleocr_reader(config: OcrConfig) -> OcrReader:
    try:
        from paddleocr import PaddleOCR
    except ImportError as exc:
        raise RuntimeError("ocr.backend=paddleocr needs `pip install paddleocr paddlepaddle`; "
                           "or use ocr.backend=rapidocr, which ships its models") from exc
    engine = PaddleOCR(text_detection_model_dir=config.det_model_path,
                       text_recognition_model_dir=config.rec_model_path,
                       use_doc_orientation_classify=False, use_doc_unwarping=False, use_textline_orientation=False)

    def read(image) -> list[RawLine]:
        lines: list[RawLine] = []
        for page in engine.predict(np.asarray(image.convert("RGB"))[:, :, ::-1]):
            for poly, text, score in zip(page["rec_polys"], page["rec_texts"], page["rec_scores"]):
                lines.append(RawLine(str(text), [(float(x), float(y)) for x, y in poly], float(score)))
        return lines

    return read


# --- geometry ---------------------------------------------------------------------------------
def to_thousandths(value: float, size: int) -> int:
    """Pixel coordinate → GLM's integer 0–1000 coordinate along an axis of `size` pixels."""
    if size <= 0:
        return 0
    return int(min(1000, max(0, round(value * 1000.0 / size))))


def normalize_box(box: Sequence[float], width: int, height: int) -> list[int]:
    """[x1, y1, x2, y2] in pixels → 0–1000 integers (ordered so x1 <= x2, y1 <= y2)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    return [to_thousandths(x1, width), to_thousandths(y1, height), to_thousandths(x2, width), to_thousandths(y2, height)]


def to_ocr_line(raw: RawLine, width: int, height: int) -> OcrLine:
    xs = [p[0] for p in raw.polygon]
    ys = [p[1] for p in raw.polygon]
    polygon = [c for x, y in raw.polygon for c in (to_thousandths(x, width), to_thousandths(y, height))]
    return OcrLine(text=raw.text, box=normalize_box([min(xs), min(ys), max(xs), max(ys)], width, height),
                   polygon=polygon, score=round(raw.score, 4))


def reading_order(lines: Iterable[OcrLine]) -> list[OcrLine]:
    """Top-to-bottom, then left-to-right; lines whose vertical centres are within half a line height
    count as the same row, so slightly tilted detections do not swap words across a row."""
    items = sorted(lines, key=lambda l: ((l.box[1] + l.box[3]) / 2, l.box[0]))
    rows: list[list[OcrLine]] = []
    for line in items:
        centre = (line.box[1] + line.box[3]) / 2
        if rows:
            last = rows[-1][0]
            tolerance = max(1.0, (last.box[3] - last.box[1]) / 2)
            if abs(centre - (last.box[1] + last.box[3]) / 2) <= tolerance:
                rows[-1].append(line)
                continue
        rows.append([line])
    return [l for row in rows for l in sorted(row, key=lambda l: l.box[0])]


def transcript(lines: Iterable[OcrLine | str]) -> str:
    """Lines joined by newlines, in the order given (call `reading_order` first for model output)."""
    return "\n".join(l if isinstance(l, str) else l.text for l in lines)


# --- measurement ------------------------------------------------------------------------------
def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance; one numpy row per character of `a`, insertions via a running minimum."""
    if not a:
        return len(b)
    if not b:
        return len(a)
    codes_b = np.frombuffer(b.encode("utf-32-le"), dtype=np.uint32)
    offsets = np.arange(len(b) + 1, dtype=np.int64)
    row = offsets.copy()
    for i, ch in enumerate(a, start=1):
        substitution = row[:-1] + (codes_b != ord(ch))
        deletion = row[1:] + 1
        new = np.empty_like(row)
        new[0] = i
        new[1:] = np.minimum(substitution, deletion)
        # insertion: new[j] = min(new[j], new[j-1] + 1) for all j == running min of new[j] - j, plus j
        row = np.minimum.accumulate(new - offsets) + offsets
    return int(row[-1])


def character_accuracy(predicted: str | Sequence[str], reference: str | Sequence[str]) -> float:
    """1 − edit_distance / len(reference), floored at 0; lists of lines are joined with newlines.
    An empty reference scores 1.0 when the prediction is empty too, else 0.0."""
    pred = predicted if isinstance(predicted, str) else "\n".join(predicted)
    ref = reference if isinstance(reference, str) else "\n".join(reference)
    if not ref:
        return 1.0 if not pred else 0.0
    return max(0.0, 1.0 - edit_distance(pred, ref) / len(ref))


def reference_lines(sample: Sample) -> list[str] | None:
    """Ground-truth line texts of a rendered document (`meta["lines"]` = [{"text", "box"}]), if any."""
    lines = sample.meta.get("lines") if isinstance(sample.meta, dict) else None
    if not isinstance(lines, list) or not lines:
        return None
    return [str(l.get("text", "")) for l in lines if isinstance(l, dict)]


# --- judgment ---------------------------------------------------------------------------------
def open_image(sample: Sample):
    from PIL import Image

    ref = sample.images[0]
    image = Image.open(io.BytesIO(ref.bytes))
    image.load()
    return image


class OcrAnnotator:
    """Runs the reader (loaded once per worker) on a batch, then `judge(sample, raw_lines)`."""

    def __init__(self, config: OcrConfig, reader: OcrReader | None = None):
        self.config = config
        self._reader = reader

    def applies(self, sample: Sample) -> bool:
        return sample.kind in (self.config.kinds or kinds_annotated_by(STAGE))

    def needs_model(self, sample: Sample) -> bool:
        return not (self.config.skip_annotated and sample.annotations.ocr)

    def read_batch(self, samples: list[Sample]) -> list[list[RawLine] | None]:
        """Model output per sample; None means 'keep existing annotations, model not run'."""
        if self._reader is None:
            self._reader = OCR_BACKENDS.get(self.config.backend)(self.config)
        out: list[list[RawLine] | None] = []
        for sample in samples:
            if not self.needs_model(sample):
                out.append(None)
            elif not sample.images or not sample.images[0].bytes:
                out.append([])
            else:
                out.append(self._reader(open_image(sample)))
        return out

    def judge(self, sample: Sample, raw: list[RawLine] | None) -> Verdict:
        if raw is not None:
            width, height = (sample.images[0].width, sample.images[0].height) if sample.images else (0, 0)
            if sample.images and (not width or not height):
                width, height = open_image(sample).size
            lines = [to_ocr_line(r, width, height) for r in raw
                     if r.text.strip() and r.score >= self.config.min_score and _has_area(r)]
            sample.annotations.ocr = reading_order(lines)
        lines = sample.annotations.ocr
        signals: dict[str, Any] = {"ocr_lines": len(lines)}
        if lines:
            signals["ocr_mean_score"] = round(float(np.mean([l.score for l in lines])), 4)
        reference = reference_lines(sample)
        if reference is not None and raw is not None:
            signals["ocr_char_accuracy"] = round(character_accuracy(transcript(lines), reference), 4)
        if len(lines) < self.config.min_lines:
            detail = "no text line" if not lines else f"{len(lines)} line(s) < ocr.min_lines={self.config.min_lines}"
            if raw:
                detail += f"; {len(raw)} detection(s) below ocr.min_score={self.config.min_score} or empty"
            return Verdict.drop(NO_TEXT, detail, **signals)
        if self.config.fill_text and not sample.text:
            sample.text = transcript(lines)
        return Verdict.ok(**signals)


def _has_area(raw: RawLine) -> bool:
    xs = [p[0] for p in raw.polygon]
    ys = [p[1] for p in raw.polygon]
    return bool(xs) and max(xs) > min(xs) and max(ys) > min(ys)
