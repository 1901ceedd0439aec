"""Shared pieces of per-record curation logic: the `Verdict` a judge returns (the registry of
interchangeable algorithms is `vlmloom.schemas.registry.Registry`).

A judge is any callable `judge(sample) -> Verdict`. What it measured travels in `Verdict.signals` (the keys
declared in `schemas/signals.py`) and reaches the sample only through `Verdict.merge_into`; a judge may fill
image refs and `annotations`, never `sample.signals`. `pipelines/` wraps judges generically (count, route rejects).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlmloom.schemas.records import Sample
from vlmloom.schemas.signals import check_signals


@dataclass
class Verdict:
    keep: bool
    reason: str | None = None  # stable snake_case code when keep is False, e.g. "aspect_ratio_too_large"
    detail: str = ""
    signals: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def ok(cls, **signals: Any) -> "Verdict":
        return cls(True, None, "", dict(signals))

    @classmethod
    def drop(cls, reason: str, detail: str = "", **signals: Any) -> "Verdict":
        return cls(False, reason, detail, dict(signals))

    def merge_into(self, sample: Sample, stage: str) -> Sample:
        """Record this verdict's signals on `sample`, checked against the declared table for `stage`."""
        check_signals(stage, self.signals)
        sample.signals.update(self.signals)
        return sample
