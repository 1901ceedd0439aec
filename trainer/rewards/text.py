"""Text verifiers: exact/normalised text, multiple choice, OCR (1 − edit distance / max length).

    text    exact match after `normalize_text` (NFKC, case-folded, whitespace collapsed, outer punctuation and
            quotes and a \\text{…} wrapper stripped); `normalize: false` compares the stripped strings
    choice  the option letter (`B`, `(B)`, `B.`, `Option B`, `B. Paris`) or the option text; several letters
            (`A, C` / `AC`) for multi-answer items compare as sets. Options are lettered A, B, C… in order.
            A letter followed by any text other than its own option's (`B. Berlin`, `B) or C`) is
            `ambiguous_choice` (0). Read by hand in one pass: no backtracking regular expression.
    ocr     1 − Levenshtein(prediction, truth) / max(len): partial reads earn partial credit. Bit-parallel
            edit distance (Myers/Hyyrö on Python ints): two 20k-character pages take ~0.4 s, not minutes.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from vlmloom.trainer.rewards.base import BAD_GROUND_TRUTH, CORRECT, WRONG, RewardItem, Score, Verifier, VERIFIERS

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
            if not normalize_text(truth):  # a truth of only punctuation would equal any punctuation
                return Score(0.0, BAD_GROUND_TRUTH)
            same = normalize_text(prediction) == normalize_text(truth)
        else:
            same = prediction.strip() == truth.strip()
        return Score(1.0, CORRECT) if same else Score(0.0, WRONG)


# --- edit distance and LCS, bit-parallel on Python ints (Myers 1999 / Hyyrö 2001, Allison–Dix 1986) ---------
def _match_masks(pattern: str) -> dict[str, int]:
    masks: dict[str, int] = {}
    for i, ch in enumerate(pattern):
        masks[ch] = masks.get(ch, 0) | (1 << i)
    return masks


def levenshtein(a: str, b: str) -> int:
    """Unit-cost edit distance (insert, delete, substitute) in O(len(a) · len(b) / word) big-int steps."""
    if len(a) < len(b):
        a, b = b, a
    m = len(b)
    if m == 0:
        return len(a)
    masks, full, top = _match_masks(b), (1 << m) - 1, 1 << (m - 1)
    plus, minus, distance = full, 0, m  # vertical deltas of the DP column: all +1 for the empty prefix
    for ch in a:
        eq = masks.get(ch, 0)
        xv = eq | minus
        xh = (((eq & plus) + plus) ^ plus) | eq
        h_plus = minus | ~(xh | plus)
        h_minus = plus & xh
        if h_plus & top:
            distance += 1
        elif h_minus & top:
            distance -= 1
        h_plus = (h_plus << 1) | 1  # global distance: the top row grows by one per text character
        h_minus <<= 1
        plus = (h_minus | ~(xv | h_plus)) & full
        minus = h_plus & xv & full
    return distance


def lcs_length(a: str, b: str) -> int:
    """Length of the longest common subsequence, bit-parallel."""
    if len(a) < len(b):
        a, b = b, a
    m = len(b)
    if m == 0:
        return 0
    masks, full = _match_masks(b), (1 << m) - 1
    v = full
    for ch in a:
        u = v & masks.get(ch, 0)
        v = ((v + u) | (v - u)) & full
    return m - bin(v).count("1")


def lcs_ratio(a: str, b: str) -> float:
    """2·LCS / (len a + len b): 1 for equal strings, 0 for nothing in common (and for two empty strings: 1)."""
    if not a and not b:
        return 1.0
    return 2.0 * lcs_length(a, b) / (len(a) + len(b))


# --- OCR ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class OcrParams:
    case_sensitive: bool = True  # false: compare case-folded text
    collapse_whitespace: bool = True  # runs of whitespace (incl. newlines) count as one space
    max_chars: int = 20_000  # longer predictions: answer_too_long (the edit distance is O(n·m/64))


@VERIFIERS.register("ocr")
class OcrVerifier(Verifier):
    Params = OcrParams

    def _prepare(self, text: str) -> str:
        text = unicodedata.normalize("NFKC", text).strip()
        if self.params.collapse_whitespace:
            text = _WS.sub(" ", text)
        return text if self.params.case_sensitive else text.casefold()

    def verify(self, prediction: str, truth: Any, item: RewardItem) -> Score:
        if len(prediction) > self.params.max_chars:
            return Score(0.0, "answer_too_long")
        got, want = self._prepare(prediction), self._prepare(str(truth))
        longest = max(len(got), len(want))
        if not want:  # nothing to read (a truth of only whitespace): never a free 1 for an empty prediction
            return Score(0.0, BAD_GROUND_TRUTH)
        score = 1.0 - levenshtein(got, want) / longest
        return Score(score, CORRECT if score == 1.0 else ("partial_match" if score > 0 else WRONG))


# --- multiple choice ---------------------------------------------------------------------------------------------
# Read by hand (str methods and one-character classes), never by a regular expression with nested or adjacent
# quantifiers: the earlier `[A-Z](?:\s*(?:…|\s)\s*[A-Z])+` took exponential time on "A A A … A!" (a letter
# answer is model output, so it must be linear-time).
_PREFIXES = ("the correct answer is", "the answer is", "answer is", "correct answer:", "answer:", "answer",
             "option", "choice")
_SEPARATORS = frozenset(",、;&")
_LETTER_ENDS = ".:：)"


def letter(index: int) -> str:
    return chr(ord("A") + index)


def _is_letter(ch: str) -> bool:
    return len(ch) == 1 and "A" <= ch.upper() <= "Z" and ch.isascii()


def _single_letter(text: str) -> str | None:
    """`B`, `(b)`, `[B]`, `B.`, `B)`, `Option B`, `The answer is (B).` → "B"; anything else → None."""
    low = text.casefold()
    for prefix in _PREFIXES:
        if low.startswith(prefix):
            text = text[len(prefix):].lstrip()
            if text[:1] in (":", "："):
                text = text[1:].lstrip()
            break
    if text[-1:] in ".:：":
        text = text[:-1]
    if len(text) == 3 and text[0] in "([" and text[2] == {"(": ")", "[": "]"}[text[0]]:
        text = text[1]
    elif len(text) == 2 and text[1] == ")":
        text = text[0]
    return text.upper() if len(text) == 1 and _is_letter(text) else None


def _several_letters(text: str) -> list[str] | None:
    """`A, C`, `A and C`, `A C`, `A、C` or `AC` (capitals only) → ["A", "C"]; None otherwise. One pass."""
    if len(text) >= 2 and text.isascii() and text.isalpha() and text.isupper():
        return list(text)
    tokens, current = [], []
    for ch in text:
        if ch.isspace() or ch in _SEPARATORS:
            if current:
                tokens.append("".join(current))
                current = []
        else:
            current.append(ch)
    if current:
        tokens.append("".join(current))
    tokens = [t for t in tokens if t != "and"]
    if len(tokens) < 2 or not all(len(t) == 1 and "A" <= t <= "Z" for t in tokens):
        return None
    return tokens


def _letters(text: str, count: int) -> frozenset[str] | None:
    """Letters written as letters (`B`, `(b)`, `Option B`, `A, C`, `AC`), or None."""
    text = text.strip()
    one = _single_letter(text) if text else None
    if one:
        return frozenset(one)
    found = _several_letters(text)
    if found and len(set(found)) == len(found) and (count == 0 or all(ord(c) - 65 < count for c in found)):
        return frozenset(found)
    return None


def _letter_then_text(text: str) -> tuple[str, str] | None:
    """`B. Paris`, `(B) Paris`, `B: Paris`, `B) Paris` → ("B", "Paris"); None otherwise."""
    text = text.strip()
    i = 1 if text[:1] in "([" else 0
    if i >= len(text) or not ("A" <= text[i] <= "Z"):
        return None
    chosen, i = text[i], i + 1
    if text[:1] in "([":
        if text[i:i + 1] not in (")", "]"):
            return None
        i += 1
        rest = text[i:].lstrip()
        if rest[:1] in _LETTER_ENDS:
            rest = rest[1:]
    else:
        rest = text[i:].lstrip()
        if rest[:1] not in _LETTER_ENDS:
            return None
        rest = rest[1:]
    rest = rest.strip()
    return (chosen, rest) if rest else None


@dataclass(frozen=True, kw_only=True)
class ChoiceParams:
    max_chars: int = 2000  # a longer prediction is not a choice: answer_too_long, before any reading


@VERIFIERS.register("choice")
class ChoiceVerifier(Verifier):
    """A letter with text after it counts only when the text is that letter's option (`B. Paris`); a letter with
    any other text (`B. Berlin`, `B) or C`, `A. maybe`) is `ambiguous_choice`: hedged answers never earn reward."""

    Params = ChoiceParams

    def verify(self, prediction: str, truth: Any, item: RewardItem) -> Score:
        if len(prediction) > self.params.max_chars:
            return Score(0.0, "answer_too_long")
        options = [normalize_text(str(o)) for o in (item.options or [])]
        want = self._read(str(truth), options)
        if want is None:  # no options and not a letter: the truth is a plain text answer
            if not normalize_text(str(truth)):
                return Score(0.0, BAD_GROUND_TRUTH)
            return Score(1.0, CORRECT) if normalize_text(prediction) == normalize_text(str(truth)) else Score(0.0, WRONG)
        if want == "ambiguous":
            return Score(0.0, BAD_GROUND_TRUTH)
        got = self._read(prediction, options)
        if got is None:
            return Score(0.0, "unparseable_choice")
        if got == "ambiguous":
            return Score(0.0, "ambiguous_choice")
        if options and any(ord(c) - 65 >= len(options) for c in got):
            return Score(0.0, "invalid_option")
        return Score(1.0, CORRECT) if got == want else Score(0.0, WRONG)

    @staticmethod
    def _read(text: str, options: list[str]) -> frozenset[str] | str | None:
        letters = _letters(text, len(options))
        if letters is not None:
            return letters
        normal = normalize_text(text)
        if normal and normal in options:
            if options.count(normal) > 1:
                return "ambiguous"  # two options with the same text: the text names neither
            return frozenset(letter(options.index(normal)))
        both = _letter_then_text(text)
        if both:
            chosen, rest = both[0], normalize_text(both[1])
            index = ord(chosen) - 65
            if options and index < len(options) and rest == options[index]:
                return frozenset(chosen)
            return "ambiguous"  # "B. <text of option C>", "B) or C", "A. maybe": not one clear choice
        return None
