"""Shared pieces of per-record curation logic: the `Verdict` a judge returns and a small name registry.

A judge is any callable `judge(sample) -> Verdict`; it may mutate `sample.signals`/`annotations`
to record what it measured. `pipelines/` wraps judges generically (count, route rejects).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


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


class Registry(Generic[T]):
    """Name → implementation; raises on a duplicate or unknown name and lists the known ones."""

    def __init__(self, what: str):
        self.what = what
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.what} {name!r} is already registered")
            self._items[name] = obj
            return obj
        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f"unknown {self.what} {name!r}; known: {', '.join(sorted(self._items))}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
