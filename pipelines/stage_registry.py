"""The curate stages, each declared once: name, order, config section, optional or not, and how its transform is
built; the signals it writes are those `schemas/signals.py` names it as the writer of. `pipelines/curate.py`
registers the library's stages and builds the pipeline from `stages_in_order()`.

A new filter is its own module in `curation/` (a judge and its frozen config) plus one registration::

    register_stage(CurateStage("my_filter", order=35, section="my_filter", optional=True,
                               build=judge_stage(MyJudgeFactory)))

(`section` names the CurateConfig field that holds its config; signals it writes get a row in schemas/signals.py.)
The judge factory lives where workers can import it cheaply (pipelines/judges.py, or the filter's own module), never
in pipelines/curate.py: a worker imports the module of every step it unpickles (tests/test_pipeline_structure.py).
Orders are spaced by 10 so that a stage goes between two others without renumbering them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from vlmloom.pipelines.stages import JudgeStage
from vlmloom.schemas.config import config_hash
from vlmloom.schemas.registry import Registry
from vlmloom.schemas.signals import SIGNALS

# build(stage, curate_config, max_error_ratio) → the stage's PTransform (the pipelines.stages protocol), or None
# when its own config turns it off (a model stage with enabled: false, a dedup flag set to false).
StageBuilder = Callable[["CurateStage", Any, float], Any]


@dataclass(frozen=True)
class CurateStage:
    name: str  # the stage's name: Beam label, lineage, rejections' `stage`, report funnel, `disable:` entry
    order: int  # where it runs: ascending; orders are unique
    section: str  # dotted path of its config in CurateConfig (e.g. "models.clip"); "" = it has none
    optional: bool  # may be listed in the job's `disable:`
    build: StageBuilder
    # The stages one transform runs under their own names (dedup: exact_dedup, near_dup_image, near_dup_text), each
    # in the funnel and in `disable:`; the transform says which ran (`stage_names`). () = the stage is itself.
    parts: tuple[str, ...] = ()

    @property
    def signals(self) -> tuple[str, ...]:
        """The Sample.signals this stage (or its parts) writes, as schemas/signals.py declares them."""
        names = {self.name, *self.parts}
        return tuple(name for name, signal in SIGNALS.items() if names & set(signal.writers))

    def section_of(self, config: Any) -> Any:
        """This stage's config section inside the curate config (None when it has none)."""
        if not self.section:
            return None
        for part in self.section.split("."):
            config = getattr(config, part)
        return config


CURATE_STAGES: Registry[CurateStage] = Registry("curate stage")


def register_stage(stage: CurateStage) -> CurateStage:
    """Add a stage; raises on a duplicate name or order (the pipeline's order must not depend on import order)."""
    taken = {s.order: s.name for s in (CURATE_STAGES.get(n) for n in CURATE_STAGES.names())}
    if stage.order in taken and stage.name not in CURATE_STAGES:
        raise ValueError(f"curate stage {stage.name!r}: order {stage.order} is taken by {taken[stage.order]!r}")
    return CURATE_STAGES.register(stage.name)(stage)


def stages_in_order() -> list[CurateStage]:
    return sorted((CURATE_STAGES.get(n) for n in CURATE_STAGES.names()), key=lambda s: s.order)


def optional_stages() -> tuple[str, ...]:
    """What `disable:` may list: the optional stages and every stage's parts."""
    return tuple(name for s in stages_in_order() for name in ((s.name,) if s.optional else ()) + s.parts)


def judge_stage(make_judge_factory: Callable[[Any], Any]) -> StageBuilder:
    """The builder of a per-record filter: `make_judge_factory(section_config)` gives the JudgeFactory that
    `JudgeStage` calls once per worker; the section's hash goes into the lineage."""
    return _JudgeStageBuilder(make_judge_factory)


@dataclass(frozen=True)
class _JudgeStageBuilder:
    make_judge_factory: Callable[[Any], Any]

    def __call__(self, stage: CurateStage, config: Any, max_error_ratio: float):
        section = stage.section_of(config)
        hash_ = config_hash(section if section is not None else {})  # a stage without config: a constant hash
        return JudgeStage(stage.name, self.make_judge_factory(section), hash_, max_error_ratio)
