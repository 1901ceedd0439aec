"""Numbers written by people and models → floats, and the chart/numeric verifier (relative tolerance).

`parse_quantity` reads one number with its decorations, by regular expression only (never eval/sympify):
signs (incl. the Unicode minus), thousands separators (`1,234,567`, LaTeX `1{,}234`, thin spaces), decimals,
scientific notation (`3.2e5`, `3.2×10^5`, `3.2 \\times 10^{5}`), fractions (`3/4`, `\\frac{3}{4}`), a leading
currency sign, a trailing percent (`45%`, `45\\%`, `45 percent`) and a trailing unit word (`3 cm`, `12 kg/m²`).

Comparison rules (`numeric` verifier, also the fallback of `math`):
- relative tolerance: |p − t| ≤ rel_tol·|t|, or ≤ abs_tol when t is 0;
- years: a ground truth written as a bare integer in [year_min, year_max] (default 1000–3000, no unit or
  percent) must be matched exactly — 2019 vs 2019.4 or 2020 is wrong, whatever the tolerance;
- percentages: `50%` equals `50%`, `50` and `0.5` (a percent reads either as the number or as its fraction);
  two percentages compare as numbers (`50%` ≠ `0.5%`); `50` vs `0.5`, neither with %, are different;
- units are not converted: they are ignored unless both sides carry one and they differ (`unit_mismatch`);
- a ground truth that is not a number is compared as normalised text (charts also have answers like `Asia`).
"""
from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from vlmloom.trainer.rewards.base import CORRECT, WRONG, RewardItem, Score, Verifier, VERIFIERS
from vlmloom.trainer.rewards.text import normalize_text

MAX_NUMBER_CHARS = 200  # a number longer than this is not a number a chart or a grader means

_LATEX_NOISE = re.compile(r"\\[,!;: ]|\\left|\\right|~|\\mathrm|\\text|\\displaystyle|\\!")
_NUMBER = r"(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d*)?|\.\d+)"
_EXPONENT = r"(?:[eE](?P<e1>[-+]?\d{1,4})|\s*(?:\*|x|×|\\times|\\cdot|·)\s*10\s*\^\s*\{?\s*(?P<e2>[-+]?\d{1,4})\s*\}?)"
_UNIT = r"(?P<unit>[^\W\d_][\w°µ²³/\.\^\-]{0,15}(?:\s+[^\W\d_][\w°µ²³/\.\^\-]{0,15})?)"
_QUANTITY = re.compile(
    rf"^(?P<sign>[-+])?\s*(?P<currency>[$€£¥])?\s*(?P<sign2>[-+])?\s*(?:"
    rf"\\[dt]?frac\{{\s*(?P<fn>\d+)\s*\}}\{{\s*(?P<fd>\d+)\s*\}}"
    rf"|(?P<an>\d+)\s*/\s*(?P<ad>\d+)"
    rf"|(?P<num>{_NUMBER}){_EXPONENT}?"
    rf")\s*(?P<pct>%|percent\b|per\s*cent\b)?\s*{_UNIT}?$")


@dataclass(frozen=True)
class Quantity:
    value: float
    percent: bool = False
    unit: str = ""
    bare_integer: bool = False  # written as digits only (no separator, decimal point, exponent, fraction)


def _clean(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).strip()
    text = text.replace("−", "-").replace("–", "-").replace("\u2009", "").replace("\u202f", "")
    text = text.replace("\\%", "%").replace("\\$", "$").replace("{,}", ",")  # LaTeX thousands separator
    text = _LATEX_NOISE.sub("", text)
    text = text.replace("{", "").replace("}", "") if "frac" not in text and "^" not in text else text
    if text.startswith("$") and text.endswith("$") and len(text) > 1 and text.count("$") == 2:
        text = text[1:-1].strip()  # math delimiters, not a currency sign
    return text.strip().rstrip(".").strip()


def parse_quantity(text: Any) -> Quantity | None:
    """One number with its decorations, or None when `text` is not (only) a number."""
    if not isinstance(text, str) or len(text) > MAX_NUMBER_CHARS:
        return None
    match = _QUANTITY.match(_clean(text))
    if match is None:
        return None
    g = match.groupdict()
    negative = (g["sign"] == "-") != (g["sign2"] == "-")
    bare = False
    if g["fn"] is not None or g["an"] is not None:
        numerator, denominator = (g["fn"], g["fd"]) if g["fn"] is not None else (g["an"], g["ad"])
        if int(denominator) == 0:
            return None
        value = int(numerator) / int(denominator)
    else:
        digits = g["num"].replace(",", "")
        exponent = g["e1"] or g["e2"]
        value = float(f"{digits}e{exponent}") if exponent else float(digits)
        bare = exponent is None and g["num"].isdigit()
    if not math.isfinite(value):
        return None
    unit = (g["unit"] or "").strip().lower()
    return Quantity(-value if negative else value, percent=g["pct"] is not None, unit=unit,
                    bare_integer=bare and not g["pct"] and not unit and not g["currency"])


def close(a: float, b: float, rel_tol: float, abs_tol: float) -> bool:
    return abs(a - b) <= max(rel_tol * abs(b), abs_tol)


def compare_numbers(prediction: Quantity, truth: Quantity, *, rel_tol: float, abs_tol: float = 1e-9,
                    year_min: int = 1000, year_max: int = 3000) -> Score:
    """Score of a parsed prediction against a parsed truth (rules in the module docstring)."""
    if truth.bare_integer and year_min <= truth.value <= year_max:
        if prediction.value == truth.value and not prediction.percent:
            return Score(1.0, CORRECT)
        return Score(0.0, "year_mismatch")
    if prediction.unit and truth.unit and prediction.unit != truth.unit:
        return Score(0.0, "unit_mismatch")
    if prediction.percent and truth.percent:
        pairs = [(prediction.value, truth.value)]
    else:
        predictions = [prediction.value] + ([prediction.value / 100] if prediction.percent else [])
        truths = [truth.value] + ([truth.value / 100] if truth.percent else [])
        pairs = [(p, t) for p in predictions for t in truths]
    if any(close(p, t, rel_tol, abs_tol) for p, t in pairs):
        return Score(1.0, CORRECT)
    return Score(0.0, WRONG)


@dataclass(frozen=True, kw_only=True)
class NumericParams:
    rel_tol: float = 0.02  # relative tolerance (charts are read by eye; ChartQA's relaxed accuracy uses 5%)
    abs_tol: float = 1e-9  # tolerance when the truth is 0
    year_min: int = 1000  # bare integer truths in [year_min, year_max] are years: exact match only
    year_max: int = 3000


@VERIFIERS.register("numeric")
class NumericVerifier(Verifier):
    Params = NumericParams

    def verify(self, prediction: str, truth: Any, item: RewardItem) -> Score:
        p = self.params
        want = parse_quantity(str(truth))
        if want is None:  # a text answer (a label, a name): normalised exact match
            return Score(1.0, CORRECT) if normalize_text(prediction) == normalize_text(str(truth)) else Score(0.0, WRONG)
        got = parse_quantity(prediction)
        if got is None:
            return Score(0.0, "unparseable_number")
        return compare_numbers(got, want, rel_tol=p.rel_tol, abs_tol=p.abs_tol, year_min=p.year_min,
                               year_max=p.year_max)
