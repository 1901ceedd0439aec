"""Boxes in GLM's 0–1000 coordinates: reading them from text, IoU, one-to-one matching; the grounding verifier.

An answer lists boxes as `[x1,y1,x2,y2]` (several allowed: `[[…],[…]]` or `[…], […]`; other text around them
is ignored). Ground truth is a list of boxes, one box, or the same text form.

    score = matched / max(|truth|, |prediction|)

where `matched` is a maximum one-to-one matching of predicted to true boxes with IoU > iou_threshold (strictly:
IoU exactly τ does not match). Dividing by the larger count means extra boxes cost reward — otherwise a model
could list every box it can think of. A valid box has 0 ≤ x1 < x2 ≤ 1000 and 0 ≤ y1 < y2 ≤ 1000: a predicted
box outside the range scores 0 (`box_out_of_range`), a zero-area or inverted one 0 (`degenerate_box`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from vlmloom.trainer.rewards.base import BAD_GROUND_TRUTH, CORRECT, RewardItem, Score, Verifier, VERIFIERS

COORD_MAX = 1000
MAX_BOXES = 100  # more boxes than this in one answer is not an answer
_NUM = r"\s*(-?\d+(?:\.\d+)?)\s*"
_BOX = re.compile(rf"\[{_NUM},{_NUM},{_NUM},{_NUM}\]")

Box = tuple[float, float, float, float]


def read_boxes(value: Any, limit: int = MAX_BOXES) -> list[Box] | None:
    """Boxes from text or from a (list of) 4-number list(s); None when there is more than `limit` or a malformed one."""
    if isinstance(value, str):
        found = _BOX.findall(value[: limit * 64])  # a box takes < 64 characters: the cap bounds the scan
        if len(found) > limit:
            return None
        return [tuple(float(c) for c in box) for box in found]  # type: ignore[misc]
    if isinstance(value, (list, tuple)):
        if len(value) == 4 and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in value):
            return [tuple(float(c) for c in value)]  # type: ignore[list-item]
        boxes: list[Box] = []
        for entry in value[: limit + 1]:
            if not (isinstance(entry, (list, tuple)) and len(entry) == 4
                    and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in entry)):
                return None
            boxes.append(tuple(float(c) for c in entry))  # type: ignore[arg-type]
        return boxes if len(boxes) <= limit else None
    return None


def box_problem(box: Box) -> str | None:
    x1, y1, x2, y2 = box
    if min(box) < 0 or max(box) > COORD_MAX:
        return "box_out_of_range"
    if x2 <= x1 or y2 <= y1:
        return "degenerate_box"
    return None


def iou(a: Box, b: Box) -> float:
    """Intersection over union; 0 for disjoint or touching boxes and for zero-area ones."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def max_matching(predicted: Sequence[Box], truth: Sequence[Box], threshold: float) -> int:
    """Size of a maximum one-to-one matching under IoU > threshold (augmenting paths; ≤ 100 × 100 boxes)."""
    edges = [[j for j, t in enumerate(truth) if iou(p, t) > threshold] for p in predicted]
    owner: dict[int, int] = {}  # truth index → predicted index

    def augment(i: int, seen: set[int]) -> bool:
        for j in edges[i]:
            if j in seen:
                continue
            seen.add(j)
            if j not in owner or augment(owner[j], seen):
                owner[j] = i
                return True
        return False

    return sum(augment(i, set()) for i in range(len(predicted)))


@dataclass(frozen=True, kw_only=True)
class GroundingParams:
    iou_threshold: float = 0.5  # a pair matches when IoU > this (strictly)


@VERIFIERS.register("grounding")
class GroundingVerifier(Verifier):
    Params = GroundingParams
    structured_truth = True

    def verify(self, prediction: str, truth: Any, item: RewardItem) -> Score:
        want = read_boxes(truth)
        if not want or any(box_problem(b) for b in want):
            return Score(0.0, BAD_GROUND_TRUTH)
        got = read_boxes(prediction)
        if got is None:
            return Score(0.0, "too_many_boxes")
        if not got:
            return Score(0.0, "no_boxes")
        for box in got:
            problem = box_problem(box)
            if problem:
                return Score(0.0, problem)
        matched = max_matching(got, want, self.params.iou_threshold)
        score = matched / max(len(want), len(got))
        return Score(score, CORRECT if score == 1.0 else ("partial_match" if matched else "no_match"))
