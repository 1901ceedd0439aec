"""The `math` verifier: math-verify equivalence, then a numeric check with relative tolerance.

Sandboxed: the reward system always runs it in a `KillablePool` worker with a `timeout_s` deadline, because
math-verify's own timeout uses `signal.alarm` (main thread only) and `verify` hangs for minutes on inputs like
`2^{2^{2^{2^{2^{2^{2}}}}}}`; so its own timeouts are switched off here and the worker is killed instead.
Both sides are wrapped in `$…$` (math-verify extracts LaTeX from math delimiters; bare `\\sqrt{2}` or `[1,2)`
is not extracted otherwise). Order of checks, first hit wins:

    1. normalised text equal                           → 1, correct
    2. math-verify verify(truth, prediction)            → 1, correct   (fractions, LaTeX, intervals, sets, %)
    3. both read as numbers within rel_tol (numbers.py) → 1, correct   (`1.5e3`, `3.2×10^5`, `1,234`)
    otherwise 0, wrong_answer; an answer longer than max_chars is `answer_too_long` (never parsed).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vlmloom.trainer.rewards.base import CORRECT, WRONG, RewardItem, Score, Verifier, VERIFIERS
from vlmloom.trainer.rewards.numbers import compare_numbers, parse_quantity
from vlmloom.trainer.rewards.text import normalize_text


@dataclass(frozen=True, kw_only=True)
class MathParams:
    rel_tol: float = 1e-6  # numeric fallback: 0.333 is not 1/3, but 1.5e3 is 1500
    abs_tol: float = 1e-9  # numeric fallback when the truth is 0
    float_rounding: int = 6  # math-verify: digits floats are rounded to before comparison
    max_chars: int = 1000  # longer answers are not parsed at all (answer_too_long)


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
        if _math_verify(prediction, truth, p.float_rounding):
            return Score(1.0, CORRECT)
        got, want = parse_quantity(prediction), parse_quantity(truth)
        if got is not None and want is not None:
            # no year rule here: in maths 2019 is a number like any other
            return compare_numbers(got, want, rel_tol=p.rel_tol, abs_tol=p.abs_tol, year_min=1, year_max=0)
        return Score(0.0, WRONG)
