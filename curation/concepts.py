"""Concept-balanced resampling (MetaCLIP-style): match captions to a concept vocabulary, cap each concept.

`ConceptMatcher` finds whole-word, case-insensitive occurrences of vocabulary entries (one or more
words each) with an Aho–Corasick automaton (pyahocorasick), so the cost per caption does not grow
with the vocabulary. The pipeline counts matches per concept over the whole corpus; a sample whose
concepts have counts c_i is then kept with probability min(1, Σ_i t / c_i), where t is the per-concept
cap, using a uniform number derived from (seed, key) so the decision is reproducible on any runner.

Vocabulary file: one concept per line, `#` comments and blank lines ignored; concept id = its line's
position among the entries (0-based). The shipped default (`data/concepts_default.txt`) is a small
hand-made list of common visual, document and GUI concepts, not MetaCLIP's 500k entries.
"""
from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from vlmloom.curation.base import Verdict
from vlmloom.schemas.config import ConfigError
from vlmloom.schemas.kinds import check_kind_selection, kinds_annotated_by
from vlmloom.schemas.records import Sample

STAGE = "concepts"
RESAMPLED_OUT = "concept_resampled_out"
NO_MATCH = "concept_no_match"
DEFAULT_VOCABULARY = str(Path(__file__).parent / "data" / "concepts_default.txt")


@dataclass(frozen=True, kw_only=True)
class ConceptConfig:
    enabled: bool = False  # off by default; needs no model
    vocabulary_path: str = ""  # one concept per line; "" = the shipped default vocabulary
    cap: int = 20000  # t: matches per concept kept in expectation (MetaCLIP uses 20k at 400M pairs)
    seed: int = 0  # salt of the per-key random draw; change it for a different (still reproducible) subset
    drop_unmatched: bool = False  # MetaCLIP drops captions that match no concept; true does the same (concept_no_match)
    kinds: tuple[str, ...] = ()  # kinds to balance (others pass through); () = those the kinds table marks "concepts"

    def validate(self) -> None:
        check_kind_selection("concepts.kinds", self.kinds)
        if self.cap < 1:
            raise ConfigError(f"concepts.cap ({self.cap}) must be >= 1; MetaCLIP uses 20000 for 400M pairs")
        if self.vocabulary_path and not os.path.isfile(self.vocabulary_path):
            raise ConfigError(f"concepts.vocabulary_path {self.vocabulary_path!r} is not a file: "
                              "point it at a one-concept-per-line file or leave it empty for the default")

    @property
    def vocabulary_file(self) -> str:
        return self.vocabulary_path or DEFAULT_VOCABULARY

    def applies(self, sample: Sample) -> bool:
        return sample.kind in (self.kinds or kinds_annotated_by(STAGE))


_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalize(text: str) -> str:
    """Lower case, NFKC, every run of non-word characters → one space, padded with spaces so that
    matching ' concept ' finds whole words only."""
    return " " + _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip() + " "


def load_vocabulary(path: str) -> list[str]:
    concepts: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            entry = line.split("#", 1)[0].strip()
            if entry:
                concepts.append(entry)
    if not concepts:
        raise ConfigError(f"concept vocabulary {path!r} has no entries")
    return concepts


class ConceptMatcher:
    """Whole-word multi-pattern matching of a vocabulary via one Aho–Corasick automaton."""

    def __init__(self, concepts: Iterable[str]):
        import ahocorasick

        self.concepts = list(concepts)
        self._automaton = ahocorasick.Automaton()
        for concept_id, concept in enumerate(self.concepts):
            pattern = normalize(concept)
            if pattern.strip() and pattern not in self._automaton:  # a repeated entry keeps its first id
                self._automaton.add_word(pattern, concept_id)
        self._empty = len(self._automaton) == 0
        if not self._empty:
            self._automaton.make_automaton()

    @classmethod
    def from_file(cls, path: str) -> "ConceptMatcher":
        return cls(load_vocabulary(path))

    def match(self, text: str | None) -> list[int]:
        """Sorted ids of the concepts occurring in `text` (each once)."""
        if not text or self._empty:
            return []
        return sorted({concept_id for _, concept_id in self._automaton.iter(normalize(text))})


def key_uniform(salt: str, key: str) -> float:
    """A number in [0, 1) fixed by (salt, key): the same on every runner, worker and rerun. Each stage
    salts with its own name and seed so that two stages' draws for one key are independent."""
    digest = hashlib.sha256(f"{salt}\x00{key}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def keep_probability(concept_ids: Iterable[int], counts: Mapping[int, int], cap: int) -> float:
    total = 0.0
    for concept_id in concept_ids:
        count = counts.get(concept_id, 0)
        if count > 0:
            total += cap / count
    return min(1.0, total)


def judge(sample: Sample, counts: Mapping[int, int], config: ConceptConfig) -> Verdict:
    """Decide one sample once the global counts are known; `signals.concept_ids` was set by matching."""
    concept_ids = sample.signals.get("concept_ids") or []
    if not concept_ids:
        if config.drop_unmatched:
            return Verdict.drop(NO_MATCH, "caption matches no vocabulary concept (concepts.drop_unmatched=true)")
        return Verdict.ok()
    probability = keep_probability(concept_ids, counts, config.cap)
    draw = key_uniform(f"concepts/{config.seed}", sample.key)
    if draw < probability:
        return Verdict.ok(concept_keep_probability=round(probability, 6))
    rarest = min(concept_ids, key=lambda c: counts.get(c, 0))
    return Verdict.drop(RESAMPLED_OUT, f"keep probability {probability:.4g} (draw {draw:.4g}); "
                        f"{len(concept_ids)} concept(s), rarest id {rarest} seen {counts.get(rarest, 0)}x, "
                        f"cap {config.cap}", concept_keep_probability=round(probability, 6))
