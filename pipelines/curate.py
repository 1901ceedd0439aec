"""The `curate` pipeline: inputs → read → decode → heuristics → language → dedup → model stages → renderable → shards.

    # laptop, in-process:
    vlmloom curate data/*.tar --output out/ --config job.yaml
    # laptop, 2 processes:
    vlmloom curate data/*.tar --output out/ -- --direct_num_workers=2 --direct_running_mode=multi_processing
    # a cluster runner (Dataflow/Flink/Spark through the Fn API), options passed through untouched:
    vlmloom curate gs://bucket/raw/*.tar --output gs://bucket/curated -- --runner=DataflowRunner --project=P ...

Every input record ends as a kept sample (manifest/ + shards/) or a rejection with a reason
(rejected/); the job fails loudly if the counts do not add up. The stages after read are registered once each
below (`register_stage`, pipelines/stage_registry.py) and the pipeline is built from that registry.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from vlmloom.curation.decode import DecodeConfig
from vlmloom.curation.documents import DocumentConfig
from vlmloom.curation.download import DownloadConfig
from vlmloom.curation.filters import HeuristicConfig, LanguageConfig
from vlmloom.curation.readers import READ_STAGE
from vlmloom.curation.neardup import DedupConfig
from vlmloom.pipelines import report as report_mod, spill
from vlmloom.pipelines.dedup import ApplyDecisions, dedup_stages
from vlmloom.pipelines.documents import DocumentRules, image_relevance_stage
from vlmloom.pipelines.download import DownloadStage, download_enabled
from vlmloom.pipelines.judges import DecodeJudge, HeuristicJudge, LanguageJudge, RenderableJudge
from vlmloom.pipelines.keys import UniqueKeys
from vlmloom.pipelines.model_config import ModelStagesConfig, describe_disabled
from vlmloom.pipelines.progress import LiveProgress
from vlmloom.pipelines.report_html import render_html
from vlmloom.pipelines.sink import OutputConfig, WriteCurated, write_atomic
from vlmloom.pipelines.sources import InputConfig, ReadInputs, check_every_input_read, resolve_input
from vlmloom.pipelines.stages import JudgeStage
from vlmloom.pipelines.stage_registry import CurateStage, judge_stage, optional_stages, register_stage, stages_in_order
from vlmloom.pipelines.files import BEAM_FILES
from vlmloom.schemas import console, curated
from vlmloom.schemas.config import ConfigError, build_config, config_hash
from vlmloom.schemas.progress import show_progress
from vlmloom.schemas.publish import discard_staging, publish_directory, staging_directory

log = logging.getLogger("vlmloom.curate")


@dataclass(frozen=True, kw_only=True)
class CurateConfig:
    inputs: list[InputConfig] = field(default_factory=list)  # what to read; CLI positional paths are appended
    output: str = ""  # output directory (local or a Beam filesystem URL)
    overwrite: bool = False  # replace an existing output directory
    disable: list[str] = field(default_factory=list)  # stages to skip: any registered stage that is optional
    max_error_ratio: float = 0.05  # a stage whose unexpected errors exceed this fraction fails the job
    download: DownloadConfig = DownloadConfig()  # fetching URL-only images (URL lists), before decode
    decode: DecodeConfig = DecodeConfig()
    heuristics: HeuristicConfig = HeuristicConfig()
    language: LanguageConfig = LanguageConfig()
    documents: DocumentConfig = DocumentConfig()  # interleaved documents: image count, text per image, repeated images
    dedup: DedupConfig = DedupConfig()
    models: ModelStagesConfig = ModelStagesConfig()  # CLIP, concepts, contamination, recaption, OCR, grounding
    output_format: OutputConfig = OutputConfig()
    # > 0: curate the inputs' units (files, shards) in groups of this many, one job each, then decide cross-chunk
    # duplicates on metadata and merge (pipelines/chunked.py): memory bounded by the chunk; 0 = one job
    chunk: int = 0

    def validate(self) -> None:
        unknown = [s for s in self.disable if s not in optional_stages()]
        if unknown:
            raise ConfigError(f"disable: unknown stage(s) {unknown}; choose from {list(optional_stages())}")
        if not 0 <= self.max_error_ratio <= 1:
            raise ConfigError(f"max_error_ratio ({self.max_error_ratio}) must be within 0..1")
        if self.chunk < 0:
            raise ConfigError(f"chunk ({self.chunk}) must be >= 0: input units per job, 0 for one job")

    def enabled(self, stage: str) -> bool:
        return stage not in self.disable


def load_config(data: dict[str, Any]) -> CurateConfig:
    return build_config(CurateConfig, data)


def _download_stage(stage: CurateStage, config: CurateConfig, ratio: float):
    """URL-only images fetched before decode, for the inputs that have them (pipelines/download.py)."""
    return DownloadStage(config.download, ratio) if download_enabled(config.download, config.inputs) else None


def _documents_stage(stage: CurateStage, config: CurateConfig, ratio: float):
    """Per-document rules; images many documents repeat leave them (pipelines/documents.py)."""
    return DocumentRules(config.documents, config_hash_=config_hash(config.documents), max_error_ratio=ratio,
                         spill_mode=config.output_format.spill, output=config.output)


def _dedup_stage(stage: CurateStage, config: CurateConfig, ratio: float):
    """The dedup step (pipelines/dedup.py), its parts switched off where the config or `disable:` says so."""
    dedup = dataclasses.replace(
        config.dedup,
        exact=config.dedup.exact and config.enabled("exact_dedup"),
        phash=config.dedup.phash and config.enabled("near_dup_image"),
        minhash=config.dedup.minhash and config.enabled("near_dup_text"),
        embedding=dataclasses.replace(config.dedup.embedding, enabled=config.dedup.embedding.enabled
                                      and config.enabled("near_dup_embedding")),
        semantic_text=dataclasses.replace(config.dedup.semantic_text, enabled=config.dedup.semantic_text.enabled
                                          and config.enabled("near_dup_semantic_text")),
    )
    return dict(dedup_stages(dedup, ratio)).get(stage.name)  # none when every part is off


def _model_stage(stage: CurateStage, config: CurateConfig, ratio: float):
    if not stage.section_of(config).enabled:
        return None
    from vlmloom.pipelines.model_stages import build_model_stage  # Beam ML + torch: only when needed

    return build_model_stage(stage.name, config.models, ratio)


# The stages after read, in their order (pipelines/stage_registry.py). Signals each writes: schemas/signals.py.
register_stage(CurateStage("download", 5, "download", optional=False, build=_download_stage))
register_stage(CurateStage("decode", 10, "decode", optional=False, build=judge_stage(DecodeJudge)))
register_stage(CurateStage("heuristics", 20, "heuristics", optional=True, build=judge_stage(HeuristicJudge)))
register_stage(CurateStage("language", 30, "language", optional=True, build=judge_stage(LanguageJudge)))
register_stage(CurateStage("documents", 35, "documents", optional=True, build=_documents_stage))
register_stage(CurateStage("dedup", 40, "dedup", optional=False, build=_dedup_stage,
                           parts=("exact_dedup", "near_dup_image", "near_dup_text", "near_dup_embedding",
                                  "near_dup_semantic_text")))
for _order, _name in enumerate(("clip", "concepts", "contamination", "recaption", "ocr", "grounding"), start=7):
    register_stage(CurateStage(_name, 10 * _order, f"models.{_name}", optional=True, build=_model_stage))
register_stage(CurateStage("image_relevance", 75, "documents", optional=True, build=image_relevance_stage))
register_stage(CurateStage("renderable", 200, "", optional=True, build=judge_stage(RenderableJudge)))


def curate_stages(config: CurateConfig) -> list[tuple[str, beam.PTransform]]:
    """The configured stages in registry order, each following the pipelines.stages protocol."""
    stages = []
    for stage in stages_in_order():
        if stage.optional and not config.enabled(stage.name):
            continue
        transform = stage.build(stage, config, config.max_error_ratio)
        if transform is not None:
            stages.append((stage.name, transform))
    return stages


def build_pipeline(pipeline: beam.Pipeline, config: CurateConfig, output_dir: str,
                   read_units: dict[int, tuple[int, int]] | None = None) -> list[str]:
    """Add the whole job to `pipeline`, writing under `output_dir`; returns the stage names in order.
    `read_units`: only these units of the inputs (one chunk of a chunked run, sources.ReadInputs)."""
    read = pipeline | "Read" >> ReadInputs(config.inputs, read_units)
    # on the local runners, samples that wait for a corpus-wide decision wait on disk (pipelines/spill.py)
    spilling = spill.spills(config.output_format.spill, pipeline.options, output_dir)
    unique = read["kept"] | "UniqueKeys" >> UniqueKeys(
        os.path.join(pipeline.local_tempdir, "keys-wait") if spilling else None)
    samples, rejected = unique["kept"], [read["rejected"], unique["rejected"]]
    names = [READ_STAGE]
    pending = None  # dedup decisions, made on metadata: applied once, where the samples are next grouped
    for name, stage in curate_stages(config):
        # A per-record judge (`renderable`) runs on the samples before the decisions meet them, so no grouping
        # is added for it: a record it drops is its rejection alone (its decision then finds no sample).
        if pending is not None and not isinstance(stage, JudgeStage):
            applied = samples | "ApplyDedup" >> ApplyDecisions(
                pending, os.path.join(pipeline.local_tempdir, "dedup-wait") if spilling else None)
            samples, pending = applied["kept"], None
            rejected.append(applied["rejected"])
        out = samples | name >> stage
        samples = out["kept"]
        rejected.append(out["rejected"])
        pending = out["pending"] if out.get("pending") is not None else (
            pending.judged_by(name) if pending is not None else None)
        names.extend(getattr(stage, "stage_names", [name]))
    all_rejected = rejected | "AllRejected" >> beam.Flatten()
    _ = {"kept": samples, "rejected": all_rejected} | "Write" >> WriteCurated(output_dir, config.output_format,
                                                                              pending)
    return names


def run_job(pipeline: beam.Pipeline, options: PipelineOptions, stage_names: list[str],
            progress: bool | None) -> dict[str, int]:
    """Run a built job to the end with its live progress on the console (workers' stderr filtered when quiet);
    → the runner's counters. The one-job path and each chunk of a chunked run (pipelines/chunked.py) use it."""
    filter_workers = console.quiet() and _subprocess_workers(options)
    with console.worker_stderr_filtered(filter_workers) as stream, \
            LiveProgress(stage_names, enabled=show_progress(progress), stream=stream) as live:
        result = pipeline.run()
        result.wait_until_finish()
        counters = _counters(result)
        live.finish(counters)
    return counters


def _is_local(path: str) -> bool:
    return "://" not in path


def _prepare_output(output: str, overwrite: bool) -> str:
    """Refuse an existing output unless overwrite; return the directory the job writes into.

    Local outputs are written to a sibling staging directory renamed into place at the end, so
    the final path only ever holds a finished job. On object stores every file is still written
    atomically and `_SUCCESS` comes last.
    """
    if not output:
        raise ConfigError("output is empty: pass --output DIR")
    exists = os.path.exists(output) if _is_local(output) else FileSystems.exists(output)
    if exists and not overwrite and (not _is_local(output) or os.listdir(output)):
        raise ConfigError(f"output {output!r} already exists: pass --overwrite to replace it, or choose another --output")
    if _is_local(output):
        staging = staging_directory(output)
        curated.make_local_dirs(staging)
        return staging
    if exists:
        FileSystems.delete([output])
    return output


def _counters(result) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        metrics = result.metrics().query(MetricsFilter())
    except Exception as exc:  # some runners cannot report metrics; the report then relies on the outputs
        log.warning("runner reported no metrics: %s", exc)
        return out
    for counter in metrics.get("counters", []):
        name = f"{counter.key.metric.namespace}/{counter.key.metric.name}"
        value = counter.committed if counter.committed is not None else counter.attempted
        out[name] = out.get(name, 0) + int(value or 0)
    return out


def _beam_options(beam_args: list[str]) -> PipelineOptions:
    """The user's Beam options, plus an explicit runner (the DirectRunner, Beam's default, which otherwise warns
    that none was given) and, unless the user chose levels, workers at WARNING with vlmloom's own lines at INFO."""
    args = list(beam_args)
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args.append("--runner=DirectRunner")
    if not console.wants_beam_logs(args):
        args += ["--default_sdk_harness_log_level=WARNING", '--sdk_harness_log_level_overrides={"vlmloom": "INFO"}']
    return PipelineOptions(args)


_DIRECT_RUNNERS = ("directrunner", "switchingdirectrunner")


def new_pipeline(options: PipelineOptions) -> beam.Pipeline:
    """A Pipeline on the runner the options name. A batch job on Beam's DirectRunner (our default) goes straight to
    the runner the DirectRunner would run it on, the FnApiRunner (in-process or with worker processes), set up as
    the DirectRunner sets it up: since Beam 2.6x the DirectRunner first tries its Prism runner, which downloads a
    Go binary at run time (the job must not reach the network; where it can, a runner we do not build or measure
    for, without our spill or worker set-up) and otherwise fails over after a second translation of the graph."""
    if (spill.runner_name(options) or "DirectRunner").lower() not in _DIRECT_RUNNERS or \
            options.view_as(StandardOptions).streaming:
        return beam.Pipeline(options=options)
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    provision = beam_provision_api_pb2.ProvisionInfo(
        pipeline_options=JobServiceHandle.encode_pipeline_options(options.get_all_options()))
    return beam.Pipeline(runner=fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(provision)),
                         options=options)


def _subprocess_workers(options: PipelineOptions) -> bool:
    """Does this run start worker subprocesses that write to our stderr (the DirectRunner's multi_processing)?"""
    runner = options.view_as(StandardOptions).runner or ""
    return "Direct" in str(runner) and options.view_as(DirectOptions).direct_running_mode == "multi_processing"


def _render_html(work_dir: str, report: dict[str, Any], config: CurateConfig) -> None:
    """report.html is a view of report.json: if drawing it fails, the finished job's data is kept and the
    failure is logged (and named in report.json) instead of discarding the whole output."""
    try:
        tar_inputs = {cfg.source_name(): files for cfg in config.inputs
                      for fmt, files in [resolve_input(cfg)] if fmt == "webdataset"}
        page = render_html(work_dir, report, tar_inputs)
    except Exception as exc:  # noqa: BLE001 - a view of the data must not cost the data
        log.error("report.html not written (%s: %s); report.json is complete", type(exc).__name__, exc,
                  exc_info=True)
        report["report_html_error"] = f"{type(exc).__name__}: {exc}"
        return
    write_atomic(curated.report_html_path(work_dir, BEAM_FILES), page.encode())


def curate(config: CurateConfig, beam_args: list[str] | None = None, progress: bool | None = None) -> dict[str, Any]:
    """Run the job; returns the report (also written to OUTPUT/report.json). `progress`: draw live counts on
    stderr (None: only when stdout is a terminal)."""
    if not config.inputs:
        raise ConfigError("no inputs: pass INPUT paths or set inputs: in the job YAML")
    if config.chunk:
        from vlmloom.pipelines.chunked import curate_chunked

        return curate_chunked(config, beam_args, progress)
    output = config.output
    work_dir = _prepare_output(output, config.overwrite)
    started = time.time()
    pipeline = None
    try:
        options = _beam_options(list(beam_args or []))
        pipeline = new_pipeline(options)
        stage_names = build_pipeline(pipeline, config, work_dir)
        try:
            counters = run_job(pipeline, options, stage_names, progress)
        finally:
            spill.discard(work_dir)  # the kept samples' wait files (pipelines/spill.py), read by the writer
        check_every_input_read(config.inputs, counters)  # an input that yielded nothing fails the job, named
        report = report_mod.build_report(work_dir, stage_names, counters, config, time.time() - started)
        report["disabled_model_stages"] = describe_disabled(config.models)
        _render_html(work_dir, report, config)
        write_atomic(curated.report_path(work_dir, BEAM_FILES), json.dumps(report, indent=2, sort_keys=True).encode())
        report_mod.check_accounting(report)
        write_atomic(curated.success_path(work_dir, BEAM_FILES), b"")
    except BaseException:
        if pipeline is not None:  # a graph that failed to build never ran: Beam's run() would have removed it
            shutil.rmtree(pipeline.local_tempdir, ignore_errors=True)
        if _is_local(output) and work_dir != output:
            discard_staging(work_dir)
        raise
    if _is_local(output) and work_dir != output:
        publish_directory(work_dir, output, config.overwrite)
    return report

