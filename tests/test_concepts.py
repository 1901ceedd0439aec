"""Concept-balanced resampling: whole-word Aho–Corasick matching, keep probabilities, the Beam stage."""
from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamPipeline
from apache_beam.testing.util import assert_that, equal_to

from vlmloom.curation.concepts import (DEFAULT_VOCABULARY, ConceptConfig, ConceptMatcher, keep_probability, key_uniform,
                                       load_vocabulary)
from vlmloom.pipelines.model_stages import ConceptBalanceStage
from vlmloom.schemas.config import ConfigError, build_config
from vlmloom.schemas.records import Message, Sample

VOCAB = ["dog", "cat", "hot dog", "traffic light", "dog", "café"]


def test_matcher_whole_words_multiword_and_case():
    m = ConceptMatcher(VOCAB)
    assert m.match("A DOG eats a hot-dog near the Traffic  light.") == [0, 2, 3]
    assert m.match("dogma and catalogue") == []
    assert m.match("Café, cats") == [5]  # plural is not the word: vocabularies list forms they want
    assert m.match("") == [] and m.match(None) == []
    assert ConceptMatcher([]).match("dog") == []


def test_default_vocabulary_loads_and_matches():
    concepts = load_vocabulary(DEFAULT_VOCABULARY)
    assert 300 <= len(concepts) <= 2000 and "traffic light" in concepts and "screenshot" in concepts
    m = ConceptMatcher(concepts)
    names = [concepts[i] for i in m.match("A screenshot of a login dialog with a blue button")]
    assert sorted(names) == ["blue", "button", "dialog", "login", "screenshot"]


def test_keep_probability_and_key_uniform():
    counts = {0: 10, 1: 1, 2: 4}
    assert keep_probability([0], counts, cap=2) == pytest.approx(0.2)
    assert keep_probability([0, 2], counts, cap=2) == pytest.approx(0.7)
    assert keep_probability([1], counts, cap=2) == 1.0
    assert keep_probability([], counts, cap=2) == 0.0
    assert key_uniform("concepts/0", "k") == key_uniform("concepts/0", "k") != key_uniform("concepts/1", "k")
    draws = [key_uniform("s", f"k{i}") for i in range(2000)]
    assert 0 <= min(draws) and max(draws) < 1 and abs(sum(draws) / len(draws) - 0.5) < 0.03


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="concepts.cap"):
        build_config(ConceptConfig, {"cap": 0})
    with pytest.raises(ConfigError, match="not a file"):
        build_config(ConceptConfig, {"vocabulary_path": str(tmp_path / "missing.txt")})


def _cap_expectation(keys: list[str], concept_counts: dict[str, int], cap: int, seed: int) -> list[str]:
    return [k for k in keys if key_uniform(f"concepts/{seed}", k) < min(1.0, cap / concept_counts[k])]


def test_concept_stage_covers_every_reason(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("# test vocabulary\ndog\ncat\n\nred car\n", encoding="utf-8")
    dogs = [f"dog{i}" for i in range(40)]
    samples = [Sample(key=k, source="t", source_id=k, text=f"a photo of a dog number {i}") for i, k in enumerate(dogs)]
    samples += [Sample(key="cat0", source="t", source_id="cat0", text="a cat on a red car"),
                Sample(key="none0", source="t", source_id="none0", text="an abstract pattern"),
                Sample(key="chat0", source="t", source_id="chat0", kind="qa",  # selected by concepts.kinds below
                       messages=[Message("user", "what is this cat?")]),
                Sample(key="doc0", source="t", source_id="doc0", kind="ocr", text="dog")]  # other kind: untouched
    config = ConceptConfig(enabled=True, vocabulary_path=str(vocab), cap=5, drop_unmatched=True, seed=3,
                           kinds=("caption", "qa"))
    kept_dogs = _cap_expectation(dogs, {k: 40 for k in dogs}, cap=5, seed=3)
    assert 0 < len(kept_dogs) < 20  # 40 dogs capped at 5 in expectation
    with BeamPipeline() as p:
        out = p | beam.Create(samples) | ConceptBalanceStage(config)
        assert_that(out["kept"] | "Kept" >> beam.Map(lambda s: (s.key, tuple(s.signals.get("concept_ids") or ()))),
                    equal_to([(k, (0,)) for k in kept_dogs] + [("cat0", (1, 2)), ("chat0", (1,)), ("doc0", ())]),
                    label="kept")
        assert_that(out["rejected"] | "Rejected" >> beam.Map(lambda r: (r.key, r.reason)),
                    equal_to([(k, "concept_resampled_out") for k in dogs if k not in kept_dogs]
                             + [("none0", "concept_no_match")]), label="rejected")


def test_concept_stage_keeps_unmatched_by_default_and_empty_input():
    samples = [Sample(key="a", source="t", source_id="a", text="zzz qqq")]
    with BeamPipeline() as p:
        out = p | beam.Create(samples) | ConceptBalanceStage(ConceptConfig(enabled=True))
        assert_that(out["kept"] | beam.Map(lambda s: (s.key, s.signals["concept_ids"])), equal_to([("a", [])]),
                    label="kept")
        assert_that(out["rejected"], equal_to([]), label="rejected")
    with BeamPipeline() as p:
        out = p | beam.Create([]).with_output_types(Sample) | ConceptBalanceStage(ConceptConfig(enabled=True))
        assert_that(out["kept"], equal_to([]), label="kept")
        assert_that(out["rejected"], equal_to([]), label="rejected")
