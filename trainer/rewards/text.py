"""Text verifiers: exact/normalised text, multiple choice, OCR (1 − edit distance / max length).

    text    exact match after `normalize_text` (NFKC, case-folded, whitespace collapsed, outer punctuation and
            quotes and a \\text{…} wrapper stripped); `normalize: false` compares the stripped strings
    choice  the option letter (`B`, `(B)`, `B.`, `Option B`, `B. Paris`) or the option text; several letters
            (`A, C` / `AC`) for multi-answer items compare as sets. Options are lettered A, B, C… in order.
            A letter followed by the text of a *different* option is `ambiguous_choice` (0).
    ocr     1 − Levenshtein(prediction, truth) / max(len): partial reads earn partial credit. Bit-parallel
            edit distance (Myers/Hyyrö on Python ints), so a 20k-character page costs milliseconds.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from vlmloom.trainer.rewards.base import CORRECT, WRONG, RewardItem, Score, Verifier, VERIFIERS

_WS = re.compile(r"\s+")
_TEXT_WRAPPER = re.compile(r"^\\(?:text|mathrm|textbf|mbox)\{(.*)\}$", re.S)
_OUTER_PUNCT = " \t\n.,;:!?。，；：！？\"'`“”‘’「」"


def normalize_text(text: str) -> str:
    """Canonical form for exact comparison of short answers."""
    text = unicodedata.normalize("NFKC", text).strip()
    for _ in range(3):  # \text{\textbf{x}} at most a few levels: bounded, never recursive
        match = _TEXT_WRAPPER.match(text)
        if not match:
            break
        text = match.group(1).strip()
    text = _WS.sub(" ", text.casefold()).strip(_OUTER_PUNCT)
    return text


@dataclass(frozen=True, kw_only=True)
class TextParams:
    normalize: bool = True  # false: exact comparison of the stripped strings


@VERIFIERS.register("text")
class TextVerifier(Verifier):
    Params = TextParams

    def verify(self, prediction: str, truth: Any, item: RewardItem) -> Score:
        truth = str(truth)
        if self.params.normalize:
            same = normalize_text(prediction) == normalize_text(truth)
        else:
            same = prediction.strip() == truth.strip()
        return Score(1.0, CORRECT) if same else Score(0.0, WRONG)
