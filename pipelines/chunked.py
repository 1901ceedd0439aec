"""Chunked local curation: memory bounded by a chunk of the inputs, not by the corpus (`curate --chunk N`).

    vlmloom curate data/*.tar --output out --chunk 8        # 8 input units (files, tars) per Beam job
    (config: `chunk: 8`)

On the DirectRunner every shuffled collection lives in the runner's memory, so one job's peak RSS grows with the
records it holds (README, "What one machine can curate"). Here:
  1. the inputs' units (sources.planned_units: tars, row files, folder records, in input then unit order) are cut
     into groups of N; each group is curated by its own, ordinary job (`curate.build_pipeline`) into
     OUTPUT.tmp-*/.chunks/cNNNNN/ (the same layout and bucket count as the final output);
  2. key uniqueness across chunks (`_resolve_keys`): records kept by two chunks under one source key go through
     `readers.resolve_shared_key`, the one job's rule (byte-identical raw → one kept, the others `duplicate_key`;
     different content → each renamed, `renamed_key`), found from the chunks' manifests one bucket at a time;
  3. one global dedup job over the chunk survivors: the curate job's own dedup step (`Dedup`, pipelines/dedup.py:
     exact, pHash, MinHash and the embedding stages as configured) on the kept samples read back from the chunk
     shards as metadata (images and videos stay in the shards as spans); its decisions are written per bucket;
  4. the merge, one bucket at a time: every chunk's samples of the bucket (spans, streamed), less the ones the
     global steps drop (moved to rejected/ with the one job's reason and detail), are cut into shards by
     `curated.bucket_shards` and written with the chunks' rejections by `curated.bucket_parts`, the sink's own
     layout code; report.json's figures are summed per bucket (report.ReportStats) and the usual report.json,
     report.html and `_SUCCESS` follow. Everything is written in the staging directory that is renamed into place
     at the end (as `curate`): a failed or killed chunk leaves no visible output.
Memory: a chunk job holds its chunk; the global dedup job holds what the dedup step shuffles for each surviving
record (a ~200-byte row; MinHash's bands and signatures are most of it: README, "Chunked local curation"); the
merge holds one bucket's metadata and the cross-chunk decisions.

How decisions can differ from one job (tests/test_chunked.py checks each):
  * exact duplicates, and near-duplicate clusters whose members are all within the threshold of each other: the
    same records are kept (each chunk keeps its best member by `representative_rank`, the global pass the best
    of those, which is the best of the cluster);
  * chained clusters (A~B, B~C, A and C farther apart than the threshold): representatives are chosen among the
    chunk survivors, so a member that one job keeps because it is too far from the cluster's representative may
    be dropped here, as a duplicate of its chunk's representative; not the reverse: a record one job drops lies
    within the threshold of that job's representative, the best of its cluster, which survives its own chunk;
  * stages after dedup (CLIP, concepts, contamination, recaption, OCR, grounding, renderable) run in the chunk,
    before the global pass: a cross-chunk duplicate is judged (and costs their compute) before it is dropped, and
    a representative that such a stage drops in its chunk no longer removes its copies in other chunks;
  * a near-duplicate dropped inside its chunk names its chunk's representative (the record it was compared with),
    which the global pass may drop in turn; one job names the cluster's representative (exact duplicates name the
    final one in both: identity is transitive);
  * key uniqueness sees the records each chunk kept: a record rejected inside its chunk keeps the key its chunk
    read it under;
  * the funnel counts global drops at their dedup stage (`exact_dedup` ...) or at `read` (`duplicate_key`), as one
    job does; per-stage counters are corrected for them, `report.chunked` gives the cross-chunk figures.
With N >= the number of units the output is the one job's, byte for byte (one chunk, nothing to decide).
"""
from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterator

import apache_beam as beam

from vlmloom.curation import readers
from vlmloom.pipelines import report as report_mod, spill
from vlmloom.pipelines.curate import (CurateConfig, _beam_options, _counters, _is_local, _prepare_output,
                                      _render_html, build_pipeline, new_pipeline, run_job)
from vlmloom.pipelines.dedup import EXACT_STAGE, REASONS
from vlmloom.pipelines.files import BEAM_FILES
from vlmloom.pipelines.model_config import describe_disabled
from vlmloom.pipelines.sink import write_atomic
from vlmloom.pipelines.sources import check_every_input_read, planned_units
from vlmloom.pipelines.stage_registry import stages_in_order
from vlmloom.schemas import curated
from vlmloom.schemas.config import ConfigError
from vlmloom.schemas.publish import discard_staging, publish_directory
from vlmloom.schemas.records import Rejection, Sample
from vlmloom.schemas.signals import RENAMED_SIGNAL

log = logging.getLogger("vlmloom.curate")

CHUNKS_DIR = ".chunks"  # inside the staging directory: hidden from every reader's globs, removed before publishing
DECISIONS_DIR = "decisions"  # the global dedup job's decisions, one JSON file per bucket that has any


# --- planning -------------------------------------------------------------------------------------------------
def plan_chunks(config: CurateConfig) -> list[dict[int, tuple[int, int]]]:
    """The chunks of a run: each {input index: (start, stop)} of that input's planned units, `config.chunk` units
    a chunk, in input order then unit order (sources.planned_units: deterministic)."""
    units = [(i, u) for i, cfg in enumerate(config.inputs) for u in range(len(planned_units(cfg)[1]))]
    chunks = []
    for start in range(0, len(units), config.chunk):
        chunk: dict[int, tuple[int, int]] = {}
        for i, u in units[start:start + config.chunk]:
            first, _ = chunk.get(i, (u, u))
            chunk[i] = (first, u + 1)
        chunks.append(chunk)
    return chunks


# --- the chunk survivors, read back as metadata ------------------------------------------------------------------
def spanned_samples(shard: str) -> Iterator[Sample]:
    """A chunk shard's samples, images and videos left in the shard as spans (no bytes held: the writer reads them
    again, checked against their sha256)."""
    return curated.iter_shard_samples(os.path.abspath(shard), spans=True)


def _uncount(counters: dict[str, int], sample: Sample, from_stage: str | None) -> None:
    """A record its chunk kept and the global steps drop: its chunk counted it kept at every stage of its lineage
    from `from_stage` on (all of them when None)."""
    counting = from_stage is None
    for entry in sample.lineage:
        counting = counting or entry.stage == from_stage
        name = f"{entry.stage}/kept"
        if counting and counters.get(name):
            counters[name] -= 1


# --- key uniqueness across chunks --------------------------------------------------------------------------------
@dataclass
class KeyPlan:
    """What key uniqueness across chunks decided: copies to leave out where their chunk put them (renamed or
    rejected), renamed copies by the bucket of their new key, `duplicate_key` rejections by bucket."""
    moved: dict[tuple[int, str], str | None] = field(default_factory=dict)  # (chunk, key) → new key, None: rejected
    kept_as: dict[tuple[int, str], str] = field(default_factory=dict)  # a rejected copy → the key its twin is kept as
    renamed_into: dict[int, list[tuple[int, str, str, str]]] = field(default_factory=lambda: defaultdict(list))
    rejections: dict[int, list[Rejection]] = field(default_factory=lambda: defaultdict(list))
    renamed: int = 0  # records renamed by the cross-chunk rule (not by their own chunk)


def _resolve_keys(chunk_dirs: list[str], buckets: int, counters: dict[str, int]) -> KeyPlan:
    """Records that two chunks kept under one source key (their key, or the `renamed_from` their chunk gave them)
    → `readers.resolve_shared_key` over those copies, as `UniqueKeys` decides in one job. Found one bucket of the
    chunks' manifests at a time (plus the few rows a chunk renamed); only the colliding copies are loaded."""
    renamed_rows: dict[str, list[tuple[int, str, str]]] = defaultdict(list)  # read key → (chunk, key, shard)
    for c, chunk_dir in enumerate(chunk_dirs):
        for rows in curated.iter_parts(chunk_dir, curated.MANIFEST, ["key", "shard", "signals"]):
            for row in rows:
                read_key = json.loads(row["signals"] or "{}").get(RENAMED_SIGNAL)
                if read_key:
                    renamed_rows[read_key].append((c, row["key"], row["shard"]))
    renamed_copies = {(c, key) for copies in renamed_rows.values() for c, key, _ in copies}
    plan = KeyPlan()
    groups: list[tuple[str, list[tuple[int, str, str]]]] = []
    for bucket in range(buckets):
        by_key: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
        for c, chunk_dir in enumerate(chunk_dirs):
            part = curated.bucket_part_path(chunk_dir, curated.MANIFEST, bucket)
            for row in curated.read_part(part, ["key", "shard"]).to_pylist():
                if (c, row["key"]) not in renamed_copies:
                    by_key[row["key"]].append((c, row["key"], row["shard"]))
        for key in sorted(by_key):
            copies = by_key[key] + renamed_rows.pop(key, [])
            if len({c for c, _, _ in copies}) > 1:
                groups.append((key, copies))
    groups += [(key, copies) for key, copies in sorted(renamed_rows.items()) if len({c for c, _, _ in copies}) > 1]
    for read_key, copies in groups:
        _resolve_group(read_key, copies, chunk_dirs, buckets, plan, counters)
    return plan


def _resolve_group(read_key: str, copies: list[tuple[int, str, str]], chunk_dirs: list[str], buckets: int,
                   plan: KeyPlan, counters: dict[str, int]) -> None:
    loaded = []
    for c, key, shard in copies:
        sample = Sample.from_row(curated.read_sample_json(chunk_dirs[c], shard, key, BEAM_FILES))
        sample.signals.pop(RENAMED_SIGNAL, None)
        sample.key = read_key  # as UniqueKeys sees it: the key the source gave it
        loaded.append((c, key, shard, sample))
    kept, rejections = readers.resolve_shared_key([sample for *_, sample in loaded])
    kept_ids = {id(sample) for sample in kept}
    twin = {readers.raw_digest_of(sample): sample.key for sample in kept}
    for c, key, shard, sample in loaded:
        if id(sample) not in kept_ids:
            plan.moved[(c, key)] = None
            plan.kept_as[(c, key)] = twin[readers.raw_digest_of(sample)]
            _uncount(counters, sample, None)
            continue
        if sample.key != key:
            plan.moved[(c, key)] = sample.key
            plan.renamed_into[curated.key_bucket(sample.key, buckets)].append((c, shard, key, sample.key))
            if key == read_key:  # renamed here, not already by its chunk
                plan.renamed += 1
                for name in (f"{readers.READ_STAGE}/{readers.RENAMED_KEY}",
                             f"inputs/{sample.source}/{readers.RENAMED_KEY}"):
                    counters[name] = counters.get(name, 0) + 1
    for rejection in rejections:
        plan.rejections[curated.key_bucket(rejection.key, buckets)].append(rejection)
        name = f"{readers.READ_STAGE}/dropped_{readers.DUPLICATE_KEY}"
        counters[name] = counters.get(name, 0) + 1


def _renamed(sample: Sample, new_key: str) -> Sample:
    """The copy under the key the cross-chunk rule gave it (its source key kept in `renamed_from`)."""
    sample.signals.setdefault(RENAMED_SIGNAL, sample.key)
    sample.key = new_key
    return sample


# --- the global dedup job ---------------------------------------------------------------------------------------
class _ChunkSurvivors(beam.DoFn):
    """(chunk, shard) → its samples as spans, under their final keys; copies the key rule rejected left out."""

    def __init__(self, moved: dict[tuple[int, str], str | None]):
        self._moved = moved

    def process(self, element):
        chunk, shard = element
        for sample in spanned_samples(shard):
            if (chunk, sample.key) not in self._moved:
                yield sample
            elif (new_key := self._moved[(chunk, sample.key)]) is not None:
                yield _renamed(sample, new_key)


@dataclass(frozen=True)
class _WriteDecisions:
    directory: str

    def __call__(self, bucket: int, decisions) -> int:
        found = {key: [stage, rep] for key, stage, rep in decisions}
        write_atomic(os.path.join(self.directory, f"part-{bucket:05d}.json"),
                     json.dumps(found, sort_keys=True).encode())
        return bucket


def _dedup_step(config: CurateConfig):
    """The curate job's own dedup step, as its registry builds it (parts switched off by the config and
    `disable:`), or None when every part is off."""
    stage = next(s for s in stages_in_order() if s.name == "dedup")
    return stage.build(stage, config, config.max_error_ratio)


def _global_dedup(config: CurateConfig, chunk_dirs: list[str], plan: KeyPlan, decisions_dir: str,
                  beam_args: list[str]) -> dict[str, int]:
    """One job: the dedup step over every chunk's survivors → decisions per bucket under `decisions_dir`."""
    dedup = _dedup_step(config)
    if dedup is None:
        return {}
    shards = [(c, os.path.abspath(s)) for c, d in enumerate(chunk_dirs) for s in curated.shard_paths(d)]
    if not shards:
        return {}
    os.makedirs(decisions_dir, exist_ok=True)
    buckets = config.output_format.buckets
    pipeline = new_pipeline(_beam_options(beam_args))
    try:
        samples = (pipeline
                   | "Shards" >> beam.Create(shards, reshuffle=False)
                   | "Spread" >> beam.Reshuffle()
                   | "Survivors" >> beam.ParDo(_ChunkSurvivors(plan.moved)).with_output_types(Sample))
        decisions = (samples | "Dedup" >> dedup)["pending"].decisions
        _ = (decisions
             | "ByBucket" >> beam.MapTuple(lambda key, d: (curated.key_bucket(key, buckets), (key, *d)))
             | "GroupByBucket" >> beam.GroupByKey()
             | "Write" >> beam.MapTuple(_WriteDecisions(decisions_dir)))
        result = pipeline.run()
        result.wait_until_finish()
    except BaseException:
        shutil.rmtree(pipeline.local_tempdir, ignore_errors=True)
        raise
    return _counters(result)


def _decisions(decisions_dir: str) -> dict[str, tuple[str, str]]:
    """Every cross-chunk dedup decision, {key: (stage, representative)}: one small entry per record the global pass
    drops (the duplicates across chunks), which the merge looks up by the key of a chunk's representative."""
    found: dict[str, tuple[str, str]] = {}
    for path in sorted(glob.glob(os.path.join(decisions_dir, "part-*.json"))):
        with open(path, encoding="utf-8") as fh:
            found.update((key, (stage, rep)) for key, (stage, rep) in json.load(fh).items())
    return found


# --- the merge ---------------------------------------------------------------------------------------------------
@dataclass
class _Merge:
    config: CurateConfig
    work_dir: str
    chunk_dirs: list[str]
    plan: KeyPlan
    decisions_dir: str
    counters: dict[str, int]
    stats: report_mod.ReportStats = field(default_factory=report_mod.ReportStats)
    dropped: dict[str, int] = field(default_factory=dict)  # cross-chunk drops by reason
    shards: int = 0

    def __post_init__(self):
        self.decided = _decisions(self.decisions_dir)

    def _survivors(self, bucket: int, rejections: list[Rejection]) -> Iterator[Sample]:
        decided = self.decided
        for c, chunk_dir in enumerate(self.chunk_dirs):
            for shard in curated.bucket_shard_paths(chunk_dir, bucket):
                for sample in spanned_samples(shard):
                    if (c, sample.key) not in self.plan.moved:
                        yield from self._decided(sample, decided, rejections)
        for c, shard, key, new_key in self.plan.renamed_into.get(bucket, []):
            path = curated.shard_path(self.chunk_dirs[c], shard)
            sample = next(s for s in spanned_samples(path) if s.key == key)
            yield from self._decided(_renamed(sample, new_key), decided, rejections)

    def _decided(self, sample: Sample, decided: dict, rejections: list[Rejection]) -> Iterator[Sample]:
        if sample.key not in decided:
            yield sample
            return
        stage, rep = decided[sample.key]
        reason = REASONS[stage]
        _uncount(self.counters, sample, stage)
        name = f"{stage}/dropped_{reason}"
        self.counters[name] = self.counters.get(name, 0) + 1
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        sample.signals["duplicate_of"] = rep
        rejections.append(Rejection.of(sample, stage, reason, f"duplicate of {rep}", {"duplicate_of": rep}))

    def _final_representative(self, chunk: int, rejection: Rejection) -> Rejection:
        """A duplicate its chunk dropped names its chunk's representative. When the key rule renamed that one, it
        names the new key; when the global exact stage dropped it for an identical record, it names that record, as
        one job does (identity is transitive). A near-duplicate keeps naming the record it was compared with (its
        chunk's representative, possibly rejected in turn: near is not transitive)."""
        rep = rejection.field_values().get("duplicate_of") if rejection.stage in REASONS else None
        if not rep:
            return rejection
        final = self.plan.moved.get((chunk, rep)) or self.plan.kept_as.get((chunk, rep)) or rep
        stage, better = self.decided.get(final, (None, ""))
        final = better if stage == rejection.stage == EXACT_STAGE else final
        if final == rep:
            return rejection
        fields = {**rejection.field_values(), "duplicate_of": final}
        return dataclasses.replace(rejection, detail=f"duplicate of {final}", fields=json.dumps(fields, sort_keys=True))

    def bucket(self, bucket: int) -> None:
        out = self.config.output_format
        rejections: list[Rejection] = list(self.plan.rejections.get(bucket, []))
        rows: list[dict] = []
        for relative, data in curated.bucket_shards(bucket, self._survivors(bucket, rejections), rows,
                                                    samples_per_shard=out.samples_per_shard,
                                                    bytes_per_shard=out.bytes_per_shard):
            write_atomic(os.path.join(self.work_dir, relative), data)
            self.shards += 1
        for c, chunk_dir in enumerate(self.chunk_dirs):
            part = curated.bucket_part_path(chunk_dir, curated.REJECTED, bucket)
            rejections += [self._final_representative(c, Rejection(**row)) for row in curated.read_part(part).to_pylist()]
        for relative, data in curated.bucket_parts(bucket, rows, rejections):
            write_atomic(os.path.join(self.work_dir, relative), data)
        self.stats.add(rows, (dict(r.__dict__) for r in rejections))


# --- the run -----------------------------------------------------------------------------------------------------
def _run_chunk(config: CurateConfig, units: dict[int, tuple[int, int]], chunk_dir: str, beam_args: list[str],
               progress: bool | None) -> tuple[list[str], dict[str, int]]:
    """One chunk: the ordinary curate job over `units`, written under `chunk_dir` → (stage names, counters)."""
    curated.make_local_dirs(chunk_dir)
    options = _beam_options(beam_args)
    pipeline = new_pipeline(options)
    try:
        stage_names = build_pipeline(pipeline, config, chunk_dir, read_units=units)
        counters = run_job(pipeline, options, stage_names, progress)
    except BaseException:
        shutil.rmtree(pipeline.local_tempdir, ignore_errors=True)
        raise
    finally:
        spill.discard(chunk_dir)
    return stage_names, counters


def _add_counters(into: dict[str, int], other: dict[str, int]) -> None:
    for name, value in other.items():
        into[name] = into.get(name, 0) + value


def curate_chunked(config: CurateConfig, beam_args: list[str] | None = None,
                   progress: bool | None = None) -> dict[str, Any]:
    """`curate` in chunks of `config.chunk` input units (module docstring); returns the report, as `curate`."""
    output = config.output
    if not _is_local(output):
        raise ConfigError(f"chunk: the chunked mode writes local outputs only, not {output!r}; on an object store "
                          "run one job on a cluster runner (chunk: 0)")
    beam_args = list(beam_args or [])
    work_dir = _prepare_output(output, config.overwrite)
    started = time.time()
    chunks_dir = os.path.join(work_dir, CHUNKS_DIR)
    try:
        chunks = plan_chunks(config)
        chunk_dirs, counters, stage_names = [], {}, []
        for index, units in enumerate(chunks):
            chunk_dir = os.path.join(chunks_dir, f"c{index:05d}")
            log.info("chunk %d/%d: units %s", index + 1, len(chunks), units)
            stage_names, found = _run_chunk(config, units, chunk_dir, beam_args, progress)
            _add_counters(counters, found)
            chunk_dirs.append(chunk_dir)
        check_every_input_read(config.inputs, counters)
        buckets = config.output_format.buckets
        plan = _resolve_keys(chunk_dirs, buckets, counters)
        decisions_dir = os.path.join(chunks_dir, DECISIONS_DIR)
        if len(chunk_dirs) > 1:
            _add_counters(counters, _global_dedup(config, chunk_dirs, plan, decisions_dir, beam_args))
        merge = _Merge(config, work_dir, chunk_dirs, plan, decisions_dir, counters)
        for bucket in range(buckets):
            merge.bucket(bucket)
        counters["write/shards"], counters["write/samples"] = merge.shards, merge.stats.counts.get("kept", 0)
        shutil.rmtree(chunks_dir)
        report = report_mod.build_report(work_dir, stage_names, counters, config, time.time() - started,
                                         stats=merge.stats)
        report["disabled_model_stages"] = describe_disabled(config.models)
        report["chunked"] = {"units_per_chunk": config.chunk, "chunks": len(chunks),
                             "cross_chunk_dropped": dict(sorted(merge.dropped.items())),
                             "cross_chunk_duplicate_key": sum(len(r) for r in plan.rejections.values()),
                             "cross_chunk_renamed_key": plan.renamed}
        _render_html(work_dir, report, config)
        write_atomic(curated.report_path(work_dir, BEAM_FILES), json.dumps(report, indent=2, sort_keys=True).encode())
        report_mod.check_accounting(report)
        write_atomic(curated.success_path(work_dir, BEAM_FILES), b"")
    except BaseException:
        discard_staging(work_dir)
        raise
    publish_directory(work_dir, output, config.overwrite)
    return report
