"""GUI actions: a small call syntax, a safe parser (no eval), and the `gui` verifier.

The answer in the box is one action, written like a keyword-only call:

    click(box=[120,40,180,80])          click(point=[150,60])          double_click(point=[10,20])
    type(text='hello world')            press(key='enter')             scroll(direction='down', amount=3)
    drag(start_point=[10,10], end_point=[200,300])                     finish()

    action := NAME "(" [NAME "=" value {"," NAME "=" value}] ")"
    value  := 'string' | "string" (backslash escapes \\\\ \\' \\" \\n \\t) | number | "[" number {"," number} "]"

Coordinates are GLM's 0–1000. Scoring against the ground-truth action (same syntax):
- the action name must match exactly (case-insensitive), else 0 `wrong_action_type`;
- then the mean over the truth's arguments of:
  coordinates — `box`/`point` (and `start_`/`end_` variants) are the same target: truth box vs predicted point:
  1 when the point is inside the box (edges included); box vs box: 1 when IoU > iou_threshold; point vs point:
  1 within point_tolerance (Euclidean, 0–1000 units);
  text arguments (`text_args`, default text/content/query) — LCS ratio 2·LCS/(|a|+|b|);
  other strings and numbers — exact (strings case-insensitive); a missing argument scores 0.
Reasons: correct (1), partial_match, wrong_arguments (0), wrong_action_type, unparseable_action.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from vlmloom.trainer.rewards.base import BAD_GROUND_TRUTH, CORRECT, RewardItem, Score, Verifier, VERIFIERS
from vlmloom.trainer.rewards.boxes import iou
from vlmloom.trainer.rewards.text import lcs_ratio

MAX_ACTION_CHARS = 4000
MAX_ARGS = 16
MAX_LIST = 8
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_NUMBER = re.compile(r"-?\d{1,12}(?:\.\d{1,12})?")
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t"}

Value = str | float | tuple[float, ...]


@dataclass(frozen=True)
class Action:
    name: str
    args: dict[str, Value]


class ActionSyntaxError(ValueError):
    pass


class _Scanner:
    def __init__(self, text: str):
        self.text, self.pos = text, 0

    def skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t\r\n":
            self.pos += 1

    def peek(self) -> str:
        self.skip()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, ch: str) -> None:
        if self.peek() != ch:
            raise ActionSyntaxError(f"expected {ch!r} at {self.pos}")
        self.pos += 1

    def regex(self, pattern: re.Pattern[str], what: str) -> str:
        self.skip()
        match = pattern.match(self.text, self.pos)
        if not match:
            raise ActionSyntaxError(f"expected {what} at {self.pos}")
        self.pos = match.end()
        return match.group(0)

    def string(self) -> str:
        quote = self.text[self.pos]
        self.pos += 1
        out = []
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch == quote:
                self.pos += 1
                return "".join(out)
            if ch == "\\" and self.pos + 1 < len(self.text):
                nxt = self.text[self.pos + 1]
                out.append(_ESCAPES.get(nxt, "\\" + nxt))
                self.pos += 2
                continue
            out.append(ch)
            self.pos += 1
        raise ActionSyntaxError("unterminated string")

    def value(self) -> Value:
        ch = self.peek()
        if ch in ("'", '"'):
            return self.string()
        if ch == "[":
            self.pos += 1
            numbers = [float(self.regex(_NUMBER, "a number"))]
            while self.peek() == ",":
                self.pos += 1
                numbers.append(float(self.regex(_NUMBER, "a number")))
                if len(numbers) > MAX_LIST:
                    raise ActionSyntaxError("list too long")
            self.expect("]")
            return tuple(numbers)
        return float(self.regex(_NUMBER, "a value"))


def parse_action(text: str) -> Action:
    """One action from the syntax above; ActionSyntaxError otherwise. Linear in the (capped) input."""
    if len(text) > MAX_ACTION_CHARS:
        raise ActionSyntaxError("action too long")
    scan = _Scanner(text.strip())
    name = scan.regex(_NAME, "an action name").lower()
    scan.expect("(")
    args: dict[str, Value] = {}
    if scan.peek() != ")":
        while True:
            key = scan.regex(_NAME, "an argument name").lower()
            scan.expect("=")
            if key in args:
                raise ActionSyntaxError(f"argument {key!r} given twice")
            args[key] = scan.value()
            if len(args) > MAX_ARGS:
                raise ActionSyntaxError("too many arguments")
            if scan.peek() != ",":
                break
            scan.pos += 1
    scan.expect(")")
    if scan.peek():
        raise ActionSyntaxError(f"text after the action at {scan.pos}")
    return Action(name, args)


def _role(key: str) -> str:
    """`box` and `point` name the same target; so do `start_box`/`start_point`, `end_box`/`end_point`."""
    for suffix in ("_box", "_point"):
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return "target" if key in ("box", "point") else key


@dataclass(frozen=True, kw_only=True)
class GuiParams:
    iou_threshold: float = 0.5  # box vs box: match when IoU > this
    point_tolerance: float = 20.0  # point vs point: match within this distance (0–1000 units)
    text_args: tuple[str, ...] = ("text", "content", "query")  # arguments scored by LCS ratio


@VERIFIERS.register("gui")
class GuiVerifier(Verifier):
    Params = GuiParams

    def verify(self, prediction: str, truth: Any, item: RewardItem) -> Score:
        try:
            want = parse_action(str(truth))
        except ActionSyntaxError:
            return Score(0.0, BAD_GROUND_TRUTH)
        try:
            got = parse_action(prediction)
        except ActionSyntaxError:
            return Score(0.0, "unparseable_action")
        if got.name != want.name:
            return Score(0.0, "wrong_action_type")
        if not want.args:
            return Score(1.0, CORRECT)
        predicted = {_role(k): v for k, v in got.args.items()}
        total = sum(self._argument(k, v, predicted.get(_role(k))) for k, v in want.args.items())
        score = total / len(want.args)
        return Score(score, CORRECT if score == 1.0 else ("partial_match" if score > 0 else "wrong_arguments"))

    def _argument(self, key: str, want: Value, got: Value | None) -> float:
        p = self.params
        if got is None:
            return 0.0
        if isinstance(want, tuple):
            if not isinstance(got, tuple):
                return 0.0
            if len(want) == 4 and len(got) == 2:
                return float(want[0] <= got[0] <= want[2] and want[1] <= got[1] <= want[3])
            if len(want) == 4 and len(got) == 4:
                return float(iou(want, got) > p.iou_threshold)  # type: ignore[arg-type]
            if len(want) == 2 and len(got) == 2:
                return float(math.dist(want, got) <= p.point_tolerance)
            if len(want) == 2 and len(got) == 4:  # a predicted box stands for its centre
                centre = ((got[0] + got[2]) / 2, (got[1] + got[3]) / 2)
                return float(math.dist(want, centre) <= p.point_tolerance)
            return float(want == got)
        if isinstance(want, str):
            if not isinstance(got, str):
                return 0.0
            if key in p.text_args:
                return lcs_ratio(want, got)
            return float(want.strip().casefold() == got.strip().casefold())
        return float(isinstance(got, float) and got == want)
