"""The curate stage registry (pipelines/stage_registry.py): one declaration per stage, the pipeline built from it."""
from __future__ import annotations

import pytest

from vlmloom.curation.base import Verdict
from vlmloom.pipelines import stage_registry
from vlmloom.pipelines.curate import curate_stages, load_config
from vlmloom.pipelines.stage_registry import CurateStage, judge_stage, register_stage, stages_in_order
from vlmloom.pipelines.stages import JudgeStage
from vlmloom.schemas.config import ConfigError
from vlmloom.schemas.registry import Registry
from vlmloom.schemas.signals import LIBRARY_STAGES

LIBRARY = ["download", "decode", "heuristics", "language", "documents", "dedup", "clip", "image_relevance", "concepts",
           "contamination", "recaption", "ocr", "grounding", "renderable"]
DEDUP_PARTS = ("exact_dedup", "near_dup_image", "near_dup_text", "near_dup_embedding", "near_dup_semantic_text")


def test_every_library_stage_is_registered_once_in_order():
    assert [s.name for s in stages_in_order()] == LIBRARY
    # every stage signals.py names as a writer is registered (read is not a stage here)
    assert LIBRARY_STAGES - {"read"} <= set(LIBRARY) | set(DEDUP_PARTS)
    signals = {s.name: s.signals for s in stages_in_order()}
    assert signals["decode"][:4] == ("width", "height", "pixel_std", "image_sha256") and "phash" in signals["decode"]
    assert signals["language"] == ("lang", "lang_score") and signals["renderable"] == ()
    assert "duplicate_of" in signals["dedup"] and stage_registry.CURATE_STAGES.get("dedup").parts == DEDUP_PARTS
    assert [s.name for s in stages_in_order() if not s.optional] == ["download", "decode", "dedup"]
    assert stage_registry.CURATE_STAGES.get("clip").section == "models.clip"


def test_the_pipeline_is_the_registry_minus_what_config_turns_off():
    config = load_config({"disable": ["language", "documents", "near_dup_image"], "dedup": {"minhash": False}})
    stages = curate_stages(config)
    assert [name for name, _ in stages] == ["decode", "heuristics", "dedup", "renderable"]
    assert dict(stages)["dedup"].stage_names == ["exact_dedup"]
    everything_off = load_config({"disable": list(DEDUP_PARTS) + ["renderable"]})
    assert [name for name, _ in curate_stages(everything_off)] == ["decode", "heuristics", "language", "documents"]
    with pytest.raises(ConfigError, match=r"disable: unknown stage\(s\) \['decode'\]; choose from \['heuristics'"):
        load_config({"disable": ["decode"]})


@pytest.fixture
def scratch_registry(monkeypatch):
    """The library's registrations in a copy, so a test stage does not leak into other tests."""
    copy: Registry[CurateStage] = Registry("curate stage")
    for stage in stages_in_order():
        copy.register(stage.name)(stage)
    monkeypatch.setattr(stage_registry, "CURATE_STAGES", copy)
    return copy


def _rejects_everything(_section):
    return lambda: (lambda sample: Verdict.drop("not_wanted", "test filter"))


def test_a_new_filter_is_one_registration(scratch_registry):
    register_stage(CurateStage("my_filter", 25, "heuristics", optional=True, build=judge_stage(_rejects_everything)))
    stages = curate_stages(load_config({}))
    names = [name for name, _ in stages]
    assert names[names.index("heuristics") + 1] == "my_filter"  # order 25: after heuristics (20), before language (30)
    transform = dict(stages)["my_filter"]
    assert isinstance(transform, JudgeStage) and transform.label == "my_filter"
    assert [n for n, _ in curate_stages(load_config({"disable": ["my_filter"]}))] == [n for n in names if n != "my_filter"]
    with pytest.raises(ValueError, match="order 25 is taken by 'my_filter'"):
        register_stage(CurateStage("other", 25, "", optional=True, build=judge_stage(_rejects_everything)))
    with pytest.raises(ValueError, match="already registered"):
        register_stage(CurateStage("my_filter", 36, "", optional=True, build=judge_stage(_rejects_everything)))
