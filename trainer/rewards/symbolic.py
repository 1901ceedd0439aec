"""The `math` verifier: math-verify equivalence behind a guard, then a numeric check for plain numbers only.

Sandboxed: the reward system always runs it in a `KillablePool` worker with a `timeout_s` deadline, because
math-verify's own timeout uses `signal.alarm` (main thread only) and `verify` hangs for minutes on inputs like
`2^{2^{2^{2^{2^{2^{2}}}}}}`; so its own timeouts are switched off here and the worker is killed instead.
Both sides are wrapped in `$…$` (math-verify extracts LaTeX from math delimiters; bare `\\sqrt{2}` or `[1,2)`
is not extracted otherwise). Order of checks, first hit wins:

    1. normalised text equal                                   → 1, correct
    2. the guard (`math_guard`), else 0 with its reason:
       hedged_answer        a connective, relation or spacing the truth does not use (`2 \\lor 3`, `2 \\approx 3`,
                            `3 \\to 2`, `2 \\\\ 3`, `2; 3`, `2 < 3`, `3 \\enspace 2`, `2 $3$`): math-verify reads one side
                            of these and would score a hedge as the answer
       extra_equation       `=` where the truth has none, unless the answer is `<variable> = <expression>`
       unexpected_variable  a letter or word the truth does not use and `units` does not declare: math-verify
                            drops trailing words (`2 m` = `2`, `2 apples` = `2`), so `2x` and `2 m` never reach it
    3. math-verify verify(truth, prediction)                    → 1, correct   (fractions, LaTeX, intervals, sets, %)
       (skipped when only one side has a percent sign: math-verify reads `3\\%` as 3; such pairs are decided
       by the numbers, the percent side as its fraction: `50\\%` = `0.5`, `3\\%` ≠ `3`)
    4. both sides plain numbers (numbers.py; no words, no one-letter scale suffix; a declared unit allowed):
       integers compare exactly (`1000001` ≠ `1000000`, 20 digits and more), others within rel_tol
       (`1.5e3` = `1500`, `3.2×10^5` = `320000`)                 → 1, correct
    otherwise 0, wrong_answer; an answer longer than max_chars is `answer_too_long` (never parsed).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from vlmloom.trainer.rewards.base import CORRECT, WRONG, RewardItem, Score, Verifier, VERIFIERS
from vlmloom.trainer.rewards.numbers import Quantity, compare_numbers, parse_quantity
from vlmloom.trainer.rewards.text import normalize_text


@dataclass(frozen=True, kw_only=True)
class MathParams:
    rel_tol: float = 1e-6  # numeric fallback: 0.333 is not 1/3, but 1.5e3 is 1500
    abs_tol: float = 1e-9  # numeric fallback when the truth is 0
    float_rounding: int = 6  # math-verify: digits floats are rounded to before comparison
    max_chars: int = 1000  # longer answers are not parsed at all (answer_too_long)
    units: tuple[str, ...] = ()  # unit words an answer may add (e.g. [cm, kg]); () = none: `2 cm` is not `2`


# Connectives and relations that make an answer two answers (or a claim about two values): LaTeX command names
# (compared as whole names, so \\left or \\pmod are not \\le or \\pm) and plain substrings.
_HEDGE_COMMANDS = frozenset(
    "lor vee land wedge lnot neg approx sim simeq cong equiv propto to rightarrow Rightarrow longrightarrow "
    "implies iff leftarrow Leftarrow leftrightarrow mapsto mid nmid ne neq quad qquad le leq leqslant ge geq "
    "geqslant lt gt ll gg pm mp vert lvert rvert Vert "
    # spacing and line breaks: math-verify reads the last of two expressions set apart by them
    "enspace enskip thinspace medspace thickspace hspace hskip space hfill newline linebreak par break".split())
_HEDGE_TEXT = (";", "<", ">", "|", "\\\\", "≈", "→", "⇒", "↔", "≠", "≤", "≥", "∨", "∧", "∼", "±", "∓", "≡")
_COMMAND = re.compile(r"\\[A-Za-z]+")  # a LaTeX command name: one run of letters
_TEXT_GROUP = re.compile(r"\\(?:text|mathrm|textrm|operatorname|mbox)\{([^{}]*)\}")
_LETTERS = re.compile(r"[^\W\d_]+")  # a run of letters (any script)
_SCIENTIFIC = re.compile(r"(?<=\d)[eE](?=[-+]?\d)")  # the e of 1.5e3 is not a variable
_ASSIGNMENT = re.compile(r"^\s*([A-Za-z](?:_\{?\w{1,8}\}?)?)\s*=(?!=)")


def _words(text: str) -> set[str]:
    """Variables and words of an expression: runs of letters outside LaTeX command names (text groups included)."""
    text = _SCIENTIFIC.sub(" ", text)
    text = _TEXT_GROUP.sub(lambda m: " " + m.group(1) + " ", text)
    return set(_LETTERS.findall(_COMMAND.sub(" ", text)))


def _strip_delimiters(text: str) -> str:
    """The answer without one pair of outer math delimiters ($…$, $$…$$, \\(…\\), \\[…\\])."""
    text = text.strip()
    for opening, closing in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(text) >= len(opening) + len(closing) and text.startswith(opening) and text.endswith(closing):
            return text[len(opening):-len(closing)]
    return text


def math_guard(prediction: str, truth: str, units: tuple[str, ...] = ()) -> tuple[str, str] | None:
    """(reason, detail) when the prediction must not reach the symbolic check (module docstring), else None."""
    truth_commands = set(_COMMAND.findall(truth))
    for command in _COMMAND.findall(prediction):
        if command[1:] in _HEDGE_COMMANDS and command not in truth_commands:
            return "hedged_answer", command
    for hedge in _HEDGE_TEXT:
        if hedge in prediction and hedge not in truth:
            return "hedged_answer", hedge
    inner = _strip_delimiters(prediction)
    if "$" in inner or "\\(" in inner or "\\[" in inner:  # `2 $3$`: math-verify extracts the delimited part
        return "hedged_answer", "$"
    body = prediction
    if prediction.count("=") > truth.count("="):
        assignment = _ASSIGNMENT.match(prediction)
        if assignment is None or prediction.count("=") - truth.count("=") > 1:
            return "extra_equation", "="
        body = prediction[assignment.end():]
    allowed = _words(truth) | {u.casefold() for u in units} | set(units)
    extra = sorted(w for w in _words(body) if w not in allowed and w.casefold() not in allowed)
    if extra:
        return "unexpected_variable", extra[0]
    return None


def _math_verify(prediction: str, truth: str, float_rounding: int) -> bool:
    import logging

    from math_verify import parse, verify

    # math-verify warns on every call that its (signal-based) timeout is off: that is the point here.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    gold = parse(f"${truth}$", parsing_timeout=None)
    answer = parse(f"${prediction}$", parsing_timeout=None)
    if not gold or not answer:
        return False
    return bool(verify(gold, answer, float_rounding=float_rounding, timeout_seconds=None))


@VERIFIERS.register("math")
class MathVerifier(Verifier):
    Params = MathParams
    sandboxed = True

    def verify(self, prediction: str, truth: Any, item: RewardItem) -> Score:
        p = self.params
        truth = str(truth)
        if len(prediction) > p.max_chars:
            return Score(0.0, "answer_too_long")
        if normalize_text(prediction) == normalize_text(truth):
            return Score(1.0, CORRECT)
        refused = math_guard(prediction, truth, p.units)
        if refused is not None:
            return Score(0.0, refused[0])
        got, want = parse_quantity(prediction), parse_quantity(truth)
        one_percent = ("%" in prediction) != ("%" in truth)
        # math-verify reads `3\%` as 3 against a truth of 3; a percent on one side only is decided by the
        # numbers alone: 50% is 0.5, never 50
        if not one_percent and _math_verify(prediction, truth, p.float_rounding):
            return Score(1.0, CORRECT)
        if one_percent and got is not None and want is not None:
            got = Quantity(got.value / 100, unit=got.unit) if got.percent else got
            want = Quantity(want.value / 100, unit=want.unit) if want.percent else want
        if got is not None and want is not None and self._plain(got) and self._plain(want):
            # no year rule here: in maths 2019 is a number like any other; integers compare exactly
            return compare_numbers(got, want, rel_tol=p.rel_tol, abs_tol=p.abs_tol, year_min=1, year_max=0,
                                   exact_integers=True)
        return Score(0.0, WRONG)

    def _plain(self, quantity: Any) -> bool:
        """A plain number, or one whose only word is a declared unit (never a one-letter scale like `2M`)."""
        if quantity.scale_suffix:
            return False
        if quantity.plain:
            return True
        words = quantity.unit.replace("°", " ").split()
        return not quantity.scaled and bool(words) and all(w in {u.casefold() for u in self.params.units}
                                                           for w in words)
