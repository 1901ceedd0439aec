"""Numbers written by people and models → exact quantities, and the `numeric` (chart) and `counting` verifiers.

`parse_quantity` reads one number with its decorations in one left-to-right pass (short regular expressions
anchored at a position, each without nested or adjacent quantifiers, on a string capped at MAX_NUMBER_CHARS;
never eval/sympify). Values are exact `Fraction`s, so integers of any length compare exactly:
- signs (incl. the Unicode minus), thousands separators (`1,234,567`, LaTeX `1{,}234`, thin spaces), decimals,
  scientific notation (`3.2e5`, `3.2×10^5`, `3.2 \\times 10^{5}`), fractions (`3/4`, `\\frac{3}{4}`);
- a currency sign before the number (`$`, `€`, `£`, `¥`, `₹`) or a currency word after it (`USD`, `dollars`…);
- a scale after it: words (`hundred`, `thousand`, `million`, `billion`, `trillion`) and suffixes (`k`/`K`, `M`,
  `mn`, `B`/`bn`, `T`) multiply the value (`45 million` = 45000000, `1.2k` = 1200);
- a percent (`45%`, `45\\%`, `45 percent`), or degrees (`72°`, `72^\\circ`, `72 degrees`);
- then at most three unit words (`3 cm`, `12 apples`) — never a word that hedges or names another number
  (`or`, `to`, `and`, `five`, …): `45 or forty` is not a number.

Comparison (`numeric` verifier, rules in order; each returns its reason code):
1. a ground truth that is not a number is compared as normalised text (charts also answer `Asia`);
2. currencies or units that both sides state and that differ → `currency_mismatch` / `unit_mismatch`
   (a unit that only one side states is ignored: `45 apples` answers `45`);
3. years: when the truth is a bare integer and the prediction an integer (`2020`, `2,020`, `2020.0`, `2020 AD`;
   no percent, scale or currency), both in [year_min, year_max], they must be equal (`year_mismatch`);
   `1510.5` against `1500` is a value read off a chart, not a year, and takes the tolerance;
4. percentages: `50%` equals `50%`, `50` and `0.5`; two percentages compare as numbers (`50%` ≠ `0.5%`);
5. integers against integers (after scale: `45 million`) within the relative tolerance, as other numbers —
   a chart is read by eye; the `counting` verifier (below) is exact.
`counting`: the truth is a non-negative integer; the prediction must be the same integer, digits or a number
word up to twenty, optionally followed by unit words (`3 birds`); decimals, scales, percents are refused.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from vlmloom.trainer.rewards.base import BAD_GROUND_TRUTH, CORRECT, WRONG, RewardItem, Score, Verifier, VERIFIERS
from vlmloom.trainer.rewards.text import normalize_text

MAX_NUMBER_CHARS = 200  # a number longer than this is not a number a chart or a grader means
MAX_EXPONENT = 400  # |exponent| above this is not a quantity anyone reads off a chart (and 1e999999 costs memory)

_LATEX_NOISE = ("\\left", "\\right", "\\displaystyle", "\\mathrm", "\\text", "\\,", "\\!", "\\;", "\\:", "\\ ", "~")
_INT = re.compile(r"\d+")
_GROUPED = re.compile(r"\d{1,3}(?:,\d{3})+")  # 1,234,567 — one fixed-width group per step: linear
_FRAC = re.compile(r"\\[dt]?frac\{(\d+)\}\{(\d+)\}")
_EXP_E = re.compile(r"[eE]([-+]?\d{1,4})(?![A-Za-z])")
# single optional spaces only (the cleaner collapses runs), each between two required tokens: no backtracking blow-up
_EXP_TIMES = re.compile(r" ?(?:\*|x|×|\\times|\\cdot|·) ?10 ?\^ ?\{? ?([-+]?\d{1,4}) ?\}?")
_CURRENCY_SIGNS = {"$": "usd", "€": "eur", "£": "gbp", "¥": "jpy", "₹": "inr"}
_CURRENCY_WORDS = {"usd": "usd", "dollar": "usd", "dollars": "usd", "us$": "usd", "eur": "eur", "euro": "eur",
                   "euros": "eur", "gbp": "gbp", "pound": "gbp", "pounds": "gbp", "jpy": "jpy", "yen": "jpy",
                   "cny": "cny", "rmb": "cny", "yuan": "cny", "inr": "inr", "rupee": "inr", "rupees": "inr"}
SCALE_WORDS = {"hundred": 10**2, "thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}
# Case matters: `m` is metres, `M` million; `b`/`t` alone are never scales.
SCALE_SUFFIXES = {"k": 10**3, "K": 10**3, "M": 10**6, "mn": 10**6, "MM": 10**6, "B": 10**9, "bn": 10**9,
                  "Bn": 10**9, "T": 10**12, "tn": 10**12}
NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
# Words that turn "a number and a unit" into a hedge or an expression: never units.
_NOT_UNITS = frozenset({"or", "and", "to", "nor", "plus", "minus", "times", "over", "by", "than", "about",
                        "approximately", "approx", "around", "roughly", "maybe", "between", "either", "not", "no",
                        "less", "more", "per", "of", "vs", "versus", "x", "×"} | set(NUMBER_WORDS) | set(SCALE_WORDS))
_PERCENT_WORDS = ("percent", "per cent", "pct")
_DEGREE_MARKS = ("°", "^\\circ", "^{\\circ}", "\\circ", "degrees", "degree", "deg")


@dataclass(frozen=True)
class Quantity:
    value: Fraction
    percent: bool = False
    unit: str = ""  # unit words, lower-cased, single spaces ("" = none); degrees read as "°"
    currency: str = ""  # iso-like code ("usd") when a sign or currency word was written
    bare_integer: bool = False  # written as digits only (no separator, point, exponent, fraction, scale, decoration)
    scaled: bool = False  # a scale word or suffix multiplied the value
    scale_suffix: str = ""  # the one-letter scale suffix when one was read (k, M, B, T: letters a maths answer
    #                         would call a variable)

    @property
    def is_integer(self) -> bool:
        return self.value.denominator == 1

    @property
    def plain(self) -> bool:
        """Only a number (sign, digits, separators, exponent, fraction, currency or degree sign): no words."""
        return not self.unit.replace("°", "") and not self.scale_suffix and not self.scaled


_SUPERSCRIPTS = str.maketrans({**{c: "^" + str(i) for i, c in enumerate("⁰¹²³⁴⁵⁶⁷⁸⁹")},
                               **{c: "_" + str(i) for i, c in enumerate("₀₁₂₃₄₅₆₇₈₉")}})


def _clean(text: str) -> str:
    # NFKC would turn 10² into 102: keep the exponent an exponent (m² → m^2, still a unit)
    text = unicodedata.normalize("NFKC", text.translate(_SUPERSCRIPTS)).strip()
    text = text.replace("−", "-").replace("–", "-").replace("\u2009", "").replace("\u202f", "")
    text = text.replace("\\%", "%").replace("\\$", "$").replace("{,}", ",")  # LaTeX thousands separator
    for noise in _LATEX_NOISE:
        text = text.replace(noise, " " if noise in ("\\ ", "~", "\\,", "\\;", "\\:") else "")
    if "frac" not in text and "^" not in text:
        text = text.replace("{", "").replace("}", "")
    if text.startswith("$") and text.endswith("$") and len(text) > 1 and text.count("$") == 2:
        text = text[1:-1].strip()  # math delimiters, not a currency sign
    text = " ".join(text.split())  # one space between tokens: the patterns below allow single spaces only
    if text.endswith(".") and not text.endswith(".."):
        text = text[:-1].rstrip()  # a full stop after the answer
    return text


def _number_at(text: str, pos: int) -> tuple[Fraction, bool, int] | None:
    """The number starting at `pos`: (value, written as bare digits, end) or None."""
    frac = _FRAC.match(text, pos)
    if frac:
        den = int(frac.group(2))
        return (Fraction(int(frac.group(1)), den), False, frac.end()) if den else None
    grouped = _GROUPED.match(text, pos)
    whole = _INT.match(text, pos)
    if grouped and (whole is None or grouped.end() > whole.end()):
        digits, end, bare = grouped.group(0).replace(",", ""), grouped.end(), False
    elif whole:
        digits, end, bare = whole.group(0), whole.end(), True
    elif text.startswith(".", pos) and _INT.match(text, pos + 1):
        digits, end, bare = "0", pos, False
    else:
        return None
    value = Fraction(int(digits))
    if text.startswith("/", end) or text.startswith(" /", end):  # a/b
        slash = text.index("/", end)
        den = _INT.match(text, slash + 1 + (text.startswith(" ", slash + 1)))
        if not bare or den is None:
            return None
        return (value / int(den.group(0)), False, den.end()) if int(den.group(0)) else None
    if text.startswith(".", end):
        decimals = _INT.match(text, end + 1)
        if decimals:
            value += Fraction(int(decimals.group(0)), 10 ** len(decimals.group(0)))
            end, bare = decimals.end(), False
        elif bare:
            end, bare = end + 1, False  # "12." with a point and nothing after
    exponent = _EXP_E.match(text, end) or _EXP_TIMES.match(text, end)
    exponent_value = None
    if exponent:
        exponent_value, end, bare = int(exponent.group(1)), exponent.end(), False
    if exponent_value is not None:
        if abs(exponent_value) > MAX_EXPONENT:
            return None
        value *= Fraction(10) ** exponent_value
    return value, bare, end


def parse_quantity(text: Any) -> Quantity | None:
    """One number with its decorations, or None when `text` is not (only) a number (see the module docstring)."""
    if not isinstance(text, str) or len(text) > MAX_NUMBER_CHARS:
        return None
    text = _clean(text)
    pos, negative, currency = 0, False, ""
    for _ in range(3):  # sign and currency in either order: "-$5", "$-5", "- $ 5"
        while pos < len(text) and text[pos] == " ":
            pos += 1
        if pos < len(text) and text[pos] in "+-":
            negative ^= text[pos] == "-"
            pos += 1
        elif pos < len(text) and text[pos] in _CURRENCY_SIGNS and not currency:
            currency = _CURRENCY_SIGNS[text[pos]]
            pos += 1
    read = _number_at(text, pos)
    if read is None:
        return None
    value, bare, pos = read
    rest = text[pos:].strip()
    percent, scaled, suffix = False, False, ""
    for word in SCALE_WORDS:  # "45 million", "3 thousand"
        if rest.lower() == word or rest.lower().startswith(word + " "):
            value, scaled, rest = value * SCALE_WORDS[word], True, rest[len(word):].strip()
            break
    else:
        head = rest.split(" ", 1)[0] if rest else ""
        if head in SCALE_SUFFIXES:  # "1.2k", "45M", "3 bn users"
            value, scaled, suffix = value * SCALE_SUFFIXES[head], True, head
            rest = rest[len(head):].strip()
    if rest.startswith("%"):
        percent, rest = True, rest[1:].strip()
    else:
        for word in _PERCENT_WORDS:
            if rest.lower() == word or rest.lower().startswith(word + " "):
                percent, rest = True, rest[len(word):].strip()
                break
    degree_unit = ""
    for mark in _DEGREE_MARKS:
        if rest.startswith(mark) and (not mark.isalpha() or rest == mark or rest.startswith(mark + " ")):
            degree_unit, rest = "°", rest[len(mark):].strip()
            if rest in ("C", "F", "c", "f"):  # 30°C: the scale letter belongs to the degree
                degree_unit, rest = "°" + rest.lower(), ""
            break
    words = rest.lower().split() if rest else []
    if words and words[-1] in _CURRENCY_WORDS:
        word_currency = _CURRENCY_WORDS[words.pop()]
        if currency and word_currency != currency:
            return None
        currency = word_currency
    if len(words) > 3 or any(not _unit_word(w) or w in _NOT_UNITS for w in words):
        return None
    unit = (degree_unit + " " + " ".join(words)).strip()
    if negative:
        value = -value
    return Quantity(value, percent=percent, unit=unit, currency=currency,
                    bare_integer=bare and not (percent or unit or currency or scaled), scaled=scaled,
                    scale_suffix=suffix)


def _unit_word(word: str) -> bool:
    """Letters (any script), optionally with °, µ, ², ³, /, ., ^, - inside; starts with a letter or °."""
    if not word or len(word) > 16 or not (word[0].isalpha() or word[0] == "°"):
        return False
    return all(ch.isalpha() or ch in "°µ²³/.^-" or ch.isdigit() and i > 0 and word[i - 1] in "^/"
               for i, ch in enumerate(word))


def close(a: Fraction, b: Fraction, rel_tol: float, abs_tol: float) -> bool:
    """|a − b| ≤ max(rel_tol·|b|, abs_tol), exactly (Fractions: no float rounding of 20-digit integers)."""
    return abs(a - b) <= max(Fraction(rel_tol) * abs(b), Fraction(abs_tol))


def compare_numbers(prediction: Quantity, truth: Quantity, *, rel_tol: float, abs_tol: float = 1e-9,
                    year_min: int = 1000, year_max: int = 3000, exact_integers: bool = False) -> Score:
    """Score of a parsed prediction against a parsed truth (rules in the module docstring). `exact_integers`:
    two integer values compare exactly, whatever the tolerance (the maths fallback)."""
    if prediction.currency and truth.currency and prediction.currency != truth.currency:
        return Score(0.0, "currency_mismatch")
    if prediction.unit and truth.unit and prediction.unit != truth.unit:
        return Score(0.0, "unit_mismatch")
    if (truth.bare_integer and prediction.is_integer and not (prediction.percent or prediction.scaled
                                                              or prediction.currency)
            and year_min <= truth.value <= year_max and year_min <= prediction.value <= year_max):
        return Score(1.0, CORRECT) if prediction.value == truth.value else Score(0.0, "year_mismatch")
    if prediction.percent and truth.percent:
        pairs = [(prediction.value, truth.value)]
    else:
        predictions = [prediction.value] + ([prediction.value / 100] if prediction.percent else [])
        truths = [truth.value] + ([truth.value / 100] if truth.percent else [])
        pairs = [(p, t) for p in predictions for t in truths]
    for p, t in pairs:
        if exact_integers and p.denominator == 1 and t.denominator == 1:
            if p == t:
                return Score(1.0, CORRECT)
        elif close(p, t, rel_tol, abs_tol):
            return Score(1.0, CORRECT)
    return Score(0.0, WRONG)


@dataclass(frozen=True, kw_only=True)
class NumericParams:
    rel_tol: float = 0.02  # relative tolerance (charts are read by eye; ChartQA's relaxed accuracy uses 5%)
    abs_tol: float = 1e-9  # tolerance when the truth is 0
    year_min: int = 1000  # two bare integers both in [year_min, year_max] are years: exact match only
    year_max: int = 3000


@VERIFIERS.register("numeric")
class NumericVerifier(Verifier):
    Params = NumericParams

    def verify(self, prediction: str, truth: Any, item: RewardItem) -> Score:
        p = self.params
        want = parse_quantity(str(truth))
        if want is None:  # a text answer (a label, a name): normalised exact match
            if not normalize_text(str(truth)):
                return Score(0.0, BAD_GROUND_TRUTH)
            return Score(1.0, CORRECT) if normalize_text(prediction) == normalize_text(str(truth)) else Score(0.0, WRONG)
        got = parse_quantity(prediction)
        if got is None:
            return Score(0.0, "unparseable_number")
        return compare_numbers(got, want, rel_tol=p.rel_tol, abs_tol=p.abs_tol, year_min=p.year_min,
                               year_max=p.year_max)


def parse_count(text: str) -> int | None:
    """A count: digits (`12`, `1,200`) or a number word up to twenty, then at most three unit words."""
    text = _clean(text)
    head, _, rest = text.partition(" ")
    if head.lower() in NUMBER_WORDS:
        value = NUMBER_WORDS[head.lower()]
    else:
        q = parse_quantity(text)
        if q is None or q.percent or q.scaled or q.currency or q.unit.startswith("°") or not q.is_integer:
            return None
        if not (_GROUPED.fullmatch(head) or _INT.fullmatch(head)):
            return None  # "3.0", "3e0", "6/2": a count is written as a whole number
        return int(q.value) if q.value >= 0 else None
    words = rest.lower().split()
    if len(words) > 3 or any(not _unit_word(w) or w in _NOT_UNITS for w in words):
        return None
    return value


@dataclass(frozen=True, kw_only=True)
class CountingParams:
    pass


@VERIFIERS.register("counting")
class CountingVerifier(Verifier):
    """How many …? Exact integer; `3 birds` and `three` answer 3; `3.0`, `3 or 4`, `about 3`, `2-4` do not."""

    Params = CountingParams

    def verify(self, prediction: str, truth: Any, item: RewardItem) -> Score:
        want = parse_count(str(truth))
        if want is None:
            return Score(0.0, BAD_GROUND_TRUTH)
        got = parse_count(prediction)
        if got is None:
            return Score(0.0, "unparseable_count")
        return Score(1.0, CORRECT) if got == want else Score(0.0, WRONG)
