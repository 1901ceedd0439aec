"""The judge factories of curate's per-record stages (decode, heuristics, language, renderable): what a worker
unpickles to run them (pipelines.stages.JudgeStage calls the factory once per worker, in setup).

They live apart from pipelines/curate.py, which builds the job and imports every stage's module (dedup, download,
model stages, the report's HTML): a worker process of the multi-process local runner, or of a cluster runner,
imports only what its steps reference, and a factory defined in curate.py made each one import all of it (about
0.2 s of each worker's start-up here).
"""
from __future__ import annotations

from dataclasses import dataclass

from vlmloom.curation.decode import DecodeConfig, decode_sample
from vlmloom.curation.filters import HeuristicConfig, LanguageConfig, LanguageIdentifier, judge_heuristics, judge_language
from vlmloom.curation.renderable import judge_renderable
from vlmloom.schemas.records import release_bytes


# Module-level callables, so that they pickle by reference for every runner.
@dataclass(frozen=True)
class DecodeJudge:
    config: DecodeConfig

    def __call__(self):
        def judge(sample):
            verdict = decode_sample(sample, self.config)  # reads spanned bytes from their input file
            release_bytes(sample)  # ... and lets them go again: later shuffles move metadata (ImageRef.span)
            return verdict

        return judge


@dataclass(frozen=True)
class HeuristicJudge:
    config: HeuristicConfig

    def __call__(self):
        return lambda sample: judge_heuristics(sample, self.config)


@dataclass(frozen=True)
class LanguageJudge:
    config: LanguageConfig

    def __call__(self):
        identifier = LanguageIdentifier(self.config.model_path)
        return lambda sample: judge_language(sample, identifier, self.config)


@dataclass(frozen=True)
class RenderableJudge:
    config: None = None  # the stage has no config section

    def __call__(self):
        return judge_renderable
