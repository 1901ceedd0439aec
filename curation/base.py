"""Shared pieces of per-record curation logic: the `Verdict` a judge returns (the registry of
interchangeable algorithms is `vlmloom.schemas.registry.Registry`).

A judge is any callable `judge(sample) -> Verdict`; it may mutate `sample.signals`/`annotations`
to record what it measured. `pipelines/` wraps judges generically (count, route rejects).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
