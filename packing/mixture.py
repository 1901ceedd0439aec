"""Mixture recipes: several curated datasets → how often each sample is used, and the order they are mixed.

recipe.yaml::

    seed: 0
    sources:
      - {name: captions, path: out/captions, token_share: 0.7, max_upsample: 2.0}
      - {name: sft,      path: out/sft,      token_share: 0.3, max_upsample: 4.0}

Either every source has a `weight` (a multiplier of its own tokens: 1.0 = each sample once, 2.5 = twice
plus a seeded half) or every source has a `token_share` (target fraction of the output's tokens; the
largest mix the upsampling caps allow is taken). The fractional part of a multiplier picks samples in a
seeded permutation until its token budget is spent. Sources are interleaved smoothly (the source furthest
behind its planned count goes next), so any packing window sees the mix. Everything is a pure function of
(recipe, per-sample lengths): the same inputs give the same plan.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from vlmloom.schemas.config import ConfigError, to_dict


@dataclass(frozen=True, kw_only=True)
class RecipeSource:
    """One curated dataset in the mix."""
    name: str = ""  # label in the report and in packed metadata; "" = the directory's name
    path: str = ""  # curated directory; "" = taken from the command line, in order
    weight: float = -1.0  # multiplier of this source's tokens (1.0 = once); -1 = unset
    token_share: float = -1.0  # target share of output tokens in (0, 1]; -1 = unset
    max_upsample: float = 1.0  # cap on the multiplier (1.0 = never repeat a sample)

    def validate(self) -> None:
        if (self.weight < 0) == (self.token_share < 0):
            raise ConfigError(f"source {self.name or self.path!r}: set exactly one of weight or token_share")
        if self.max_upsample <= 0:
            raise ConfigError(f"source {self.name or self.path!r}: max_upsample must be > 0")
        if self.token_share > 1:
            raise ConfigError(f"source {self.name or self.path!r}: token_share must be <= 1")


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """A mixture of curated datasets (see module docstring)."""
    sources: list[RecipeSource] = field(default_factory=list)
    seed: int = 0  # seeds the fractional-repeat selection

    def validate(self) -> None:
        if not self.sources:
            raise ConfigError("recipe.sources: give at least one source")
        modes = {s.weight >= 0 for s in self.sources}
        if len(modes) > 1:
            raise ConfigError("recipe.sources: use weight for every source or token_share for every source")
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ConfigError(f"recipe.sources: duplicate names {names}")


def recipe_hash(recipe: Recipe) -> str:
    return hashlib.sha256(json.dumps(to_dict(recipe), sort_keys=True).encode()).hexdigest()[:16]


def default_recipe(paths: list[str]) -> Recipe:
    return Recipe(sources=[RecipeSource(name=_name(p, i), path=p, weight=1.0) for i, p in enumerate(paths)])


def resolve_recipe(recipe: Recipe, paths: list[str]) -> Recipe:
    """Fill empty `path`s from the command line in order, and empty names from the directories."""
    free = list(paths)
    sources = []
    for i, s in enumerate(recipe.sources):
        path = s.path or (free.pop(0) if free else "")
        if not path:
            raise ConfigError(f"recipe.sources[{i}]: no path, and no CURATED_DIR left on the command line for it")
        sources.append(RecipeSource(name=s.name or _name(path, i), path=path, weight=s.weight,
                                    token_share=s.token_share, max_upsample=s.max_upsample))
    if free:
        raise ConfigError(f"{len(free)} CURATED_DIR(s) not used by the recipe: {free}")
    return Recipe(sources=sources, seed=recipe.seed)


def multipliers(recipe: Recipe, tokens: list[int]) -> list[float]:
    """How many times each source's tokens are used."""
    if recipe.sources[0].weight >= 0:
        return [min(s.weight, s.max_upsample) for s in recipe.sources]
    shares = np.array([s.token_share for s in recipe.sources], np.float64)
    shares = shares / shares.sum()
    available = np.array([t * s.max_upsample for t, s in zip(tokens, recipe.sources)], np.float64)
    if (available[shares > 0] <= 0).any():
        raise ConfigError("recipe: a source with a token_share has no usable samples")
    total = float(np.min(available[shares > 0] / shares[shares > 0]))
    return [float(share * total / t) if t else 0.0 for share, t in zip(shares, tokens)]


def select(lengths: np.ndarray, multiplier: float, seed: int, source_index: int) -> list[np.ndarray]:
    """Per pass, the sample indices used (in stream order). `lengths` < 0 marks unusable samples."""
    usable = np.flatnonzero(lengths > 0)
    full = int(math.floor(multiplier + 1e-9))
    passes = [usable] * full
    fraction = multiplier - full
    if fraction > 1e-9 and usable.size:
        budget = fraction * float(lengths[usable].sum())
        perm = usable[np.random.default_rng([seed, source_index, full]).permutation(usable.size)]
        take = int(np.searchsorted(np.cumsum(lengths[perm]), budget, side="left")) + 1
        passes.append(np.sort(perm[:min(take, perm.size)]))
    return passes


def interleave(counts: list[int]) -> np.ndarray:
    """Source id per output position: smooth proportional interleave, deterministic (no RNG)."""
    total = sum(counts)
    if total == 0:
        return np.zeros(0, np.int32)
    # position of the k-th item of source s: (k + 0.5) / count_s; stable merge by that fraction.
    keys = np.concatenate([(np.arange(c) + 0.5) / c for c in counts if c]) if total else np.zeros(0)
    ids = np.concatenate([np.full(c, s, np.int32) for s, c in enumerate(counts) if c])
    return ids[np.argsort(keys, kind="stable")]


def _name(path: str, index: int) -> str:
    return os.path.basename(os.path.normpath(path)) or f"source{index}"
