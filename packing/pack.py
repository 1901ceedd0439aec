"""The pack step: curated directories (+ a mixture recipe) → fixed-length packed shards + manifest + report.

    pass 1  read every source, render each sample (builder.py), keep its length or its rejection; an interleaved
            document longer than seq_len becomes parts (split.py) that travel together as the one input sample
    plan    per-source multipliers from the recipe (mixture.py), a smooth interleave of the sources
    pass 2  re-read and render the selected samples in mixed order → bin packing over a bounded window
            (packers.py) → assemble each bin into one row of seq_len tokens → compute-balanced order
            (balance.py) → deterministic tars, `manifest.parquet`, `rejected.parquet`, `pack_report.json`

Everything is written under a staging directory (schemas/publish.py) renamed to OUTPUT at the end, with `_SUCCESS` last.
The same inputs, recipe and config give byte-identical shards.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from array import array
from dataclasses import dataclass, field
from typing import Iterator, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vlmloom.schemas.charts import histogram
from vlmloom.schemas.config import ConfigError, config_hash, to_dict
from vlmloom.schemas import packed as layout
from vlmloom.schemas.formats import PACKED_FORMAT_VERSION
from vlmloom.schemas.kinds import KIND_TABLE
from vlmloom.schemas.packed import IGNORE_INDEX, PACKED_MANIFEST_SCHEMA, TOKENIZER_DIR
from vlmloom.schemas.progress import progress_bar, show_progress
from vlmloom.schemas.publish import discard_staging, publish_directory, staging_directory
from vlmloom.schemas.records import REJECTION_SCHEMA, Rejection, Sample

from . import tokenizer as T
from .balance import BalanceConfig, attention_cost, balanced_order, imbalance
from .builder import STAGE, BuilderConfig, BuiltSample, SequenceBuilder
from .curated import curated_shards, iter_curated_samples
from .mixture import Recipe, default_recipe, interleave, multipliers, recipe_hash, resolve_recipe, select
from .packers import PACKERS, plan_bins
from .report_html import write_pack_html
from .shards import ShardWriter, assemble, entry_members
from .split import split_document, splittable

log = logging.getLogger("vlmloom.pack")


@dataclass(frozen=True, kw_only=True)
class PackConfig:
    """`vlmloom pack` job."""
    inputs: list[str] = field(default_factory=list)  # curated directories (CURATED_DIR arguments)
    output: str = ""  # packed directory to create
    seq_len: int = 8192  # tokens per packed sequence (L)
    tokenizer: str = ""  # tokenizer directory; "" trains the demo BPE on the inputs into OUTPUT/tokenizer
    tokenizer_vocab_size: int = 4096  # vocabulary of the demo tokenizer
    packer: str = "best_fit_decreasing"  # best_fit_decreasing | first_fit_decreasing | greedy
    window: int = 4096  # samples per packing window (held in memory with their image bytes); 0 = whole set
    carry_bins: int = 64  # partly filled sequences kept open from one window to the next
    overlong: Literal["drop", "truncate"] = "drop"  # samples longer than seq_len: drop, or cut (text-only pre-training)
    # interleaved documents longer than seq_len are split into parts KEY#p0, KEY#p1, … at segment boundaries
    # (packing/split.py) before the overlong policy; false: they follow `overlong` like any other sample
    split_documents: bool = True
    sequences_per_shard: int = 256  # packed sequences per tar
    cache_mb: int = 512  # keep rendered samples (with image bytes) from pass 1 up to this size; 0 re-reads always
    overwrite: bool = False  # replace an existing output directory
    builder: BuilderConfig = field(default_factory=BuilderConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    recipe: Recipe | None = None  # mixture; None = every input once (weight 1.0)

    def validate(self) -> None:
        if self.seq_len < 16:
            raise ConfigError(f"seq_len ({self.seq_len}) must be >= 16")
        if self.packer not in PACKERS:
            raise ConfigError(f"packer {self.packer!r}: known packers are {', '.join(PACKERS.names())}")
        if self.sequences_per_shard < 1 or self.window < 0 or self.carry_bins < 0:
            raise ConfigError("sequences_per_shard must be >= 1, window and carry_bins >= 0")


def pack(config: PackConfig, progress: bool | None = None) -> dict:
    """Run the pack step; returns the report (also written to OUTPUT/pack_report.json). `progress`: draw both
    passes' progress on stderr (None: only when stdout is a terminal)."""
    if not config.output:
        raise ConfigError("output: give --output DIR")
    if os.path.exists(config.output) and not config.overwrite:
        raise ConfigError(f"output {config.output} exists: pass --overwrite or choose another directory")
    recipe = resolve_recipe(config.recipe, config.inputs) if config.recipe else default_recipe(config.inputs)
    if not recipe.sources:
        raise ConfigError("no inputs: give one or more CURATED_DIRs or a recipe with paths")
    for s in recipe.sources:
        curated_shards(s.path)  # refuses unfinished directories up front

    tmp = staging_directory(config.output)
    os.makedirs(layout.shards_dir(tmp))
    try:
        report = _pack_into(config, recipe, tmp, show_progress(progress))
        with open(layout.success_path(tmp), "w") as fh:
            fh.write("")
        publish_directory(tmp, config.output, config.overwrite)
    except BaseException:
        discard_staging(tmp)
        raise
    return report


def _pack_into(config: PackConfig, recipe: Recipe, out: str, progress: bool = False) -> dict:
    """The whole step into the staging directory `out`: tokenizer, pass 1, mixture plan, pass 2, tables, report."""
    tokenizer = _tokenizer(config, recipe, layout.tokenizer_dir(out))
    builder = SequenceBuilder(tokenizer, config.builder)
    measured = _measure(config, recipe, builder, progress)
    mult, order, passes = _plan_mixture(recipe, measured.lengths)
    streams = [_source_stream(builder, s.path, ps, config, s.name, cache)
               for s, ps, cache in zip(recipe.sources, passes, measured.caches)]
    measured.caches = []  # pass 2's streams hold them now
    writer, costs_before, costs_after = _pack_sequences(config, builder, streams, order,
                                                        layout.shards_dir(out), progress)
    _write_tables(out, writer, measured.rejections)
    report = _report(config, recipe, tokenizer, measured.lengths, measured.rejections, measured.truncated, mult,
                     writer, costs_before, costs_after)
    report["rendering"] = measured.rendering
    report["split"] = measured.split
    with open(layout.report_path(out), "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2, sort_keys=True)
    try:  # the page is a view of the JSON: failing to draw it must not cost the packed data
        write_pack_html(layout.report_html_path(out), report, [r["num_tokens"] for r in writer.manifest])
    except Exception as exc:  # noqa: BLE001
        log.error("pack_report.html not written (%s: %s); pack_report.json is complete", type(exc).__name__, exc,
                  exc_info=True)
    return report


def _tokenizer(config: PackConfig, recipe: Recipe, tok_dir: str):
    """The given tokenizer (copied into the output), or the demo BPE trained on the inputs' texts."""
    if config.tokenizer:
        tokenizer = T.load_tokenizer(config.tokenizer)
        tokenizer.save_pretrained(tok_dir)
        return tokenizer
    texts = (t for s in recipe.sources for sample in iter_curated_samples(s.path) for t in sample_texts(sample))
    return T.train_tokenizer(texts, tok_dir, vocab_size=config.tokenizer_vocab_size)


@dataclass
class _Measured:
    """Pass 1's result: per source, every sample's length (-1: rejected; a split document: its parts' sum) and,
    within cache_mb, its rendering (a list: the sample, or its parts)."""
    lengths: list[np.ndarray] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    truncated: int = 0
    caches: list[list[list[BuiltSample] | None] | None] = field(default_factory=list)
    split: dict = field(default_factory=lambda: {"documents": 0, "parts": 0})  # documents split, parts they made
    rendering: dict = field(default_factory=lambda: new_rendering_counts())  # how samples were rendered (chat/document)


def _measure(config: PackConfig, recipe: Recipe, builder: SequenceBuilder, progress: bool = False) -> _Measured:
    """Pass 1: render every sample of every source once, keeping its length or its rejection."""
    measured = _Measured()
    bar = progress_bar("pack: measure", None, enabled=progress, unit="sample")
    budget = config.cache_mb << 20
    for s in recipe.sources:
        source_lengths = []
        cache: list[list[BuiltSample] | None] | None = []
        for sample in iter_curated_samples(s.path):
            built = _render(builder, sample, config)
            bar.update(1)
            if isinstance(built, Rejection):
                measured.rejections.append(built)
                source_lengths.append(-1)
                built = None
            else:
                measured.truncated += sum(int(part.truncated_from > 0) for part in built)
                count_rendering(measured.rendering, built[0])
                if len(built) > 1:
                    measured.split["documents"] += 1
                    measured.split["parts"] += len(built)
                source_lengths.append(sum(len(part) for part in built))
                budget -= sum(12 * len(part) * 4 + sum(len(b) for b in part.images) for part in built)
            if cache is not None:
                cache.append(built)
                if budget < 0:
                    cache = None  # this source is re-read in pass 2
        measured.caches.append(cache)
        measured.lengths.append(np.asarray(source_lengths, np.int64))
        bar.set_postfix_str(f"dropped {len(measured.rejections)}")
    bar.close()
    return measured


def _plan_mixture(recipe: Recipe, lengths: list[np.ndarray]) -> tuple[list[float], np.ndarray, list]:
    """Per-source multipliers from the recipe, the samples each pass selects, and their interleaved order."""
    tokens = [int(x[x > 0].sum()) for x in lengths]
    mult = multipliers(recipe, tokens)
    passes = [select(x, m, recipe.seed, i) for i, (x, m) in enumerate(zip(lengths, mult))]
    order = interleave([sum(p.size for p in ps) for ps in passes])
    return mult, order, passes


def _pack_sequences(config: PackConfig, builder: SequenceBuilder, streams: list[Iterator[list[BuiltSample]]],
                    order: np.ndarray, shard_dir: str, progress: bool = False
                    ) -> tuple["_StreamWriter", list[int], list[int]]:
    """Pass 2: samples in mixed order → bins over a bounded window → rows of seq_len → balanced, written."""
    pending: dict[int, BuiltSample] = {}
    bar = progress_bar("pack: write", len(order), enabled=progress, unit="sample")

    def feed() -> Iterator[int]:
        i = 0  # packing items: a sample, or each part of a split document (in document order)
        for source_id in order.tolist():
            for built in next(streams[source_id]):
                pending[i] = built
                i += 1
                yield len(built)
            bar.update(1)

    world, steps = config.balance.world_size, config.balance.window_steps
    writer = _StreamWriter(shard_dir, world, config.sequences_per_shard)
    window: list[dict] = []
    costs_before: list[int] = []
    costs_after: list[int] = []
    for bin_items in plan_bins(feed(), config.seq_len, packer=config.packer, window=config.window,
                               carry=config.carry_bins):
        seq = assemble([pending.pop(i) for i in bin_items], config.seq_len, builder.pad_id)
        seq["attention_cost"] = attention_cost(seq["seq_lens"])
        window.append(seq)
        costs_before.append(seq["attention_cost"])
        if len(window) >= world * steps:
            costs_after += _flush(window, writer, world, steps)
            window = []
    costs_after += _flush(window, writer, world, steps)
    writer.close()
    bar.close()
    return writer, costs_before, costs_after


def _write_tables(out: str, writer: "_StreamWriter", rejections: list[Rejection]) -> None:
    pq.write_table(pa.Table.from_pylist(sorted(writer.manifest, key=lambda r: r["key"]),
                                        schema=PACKED_MANIFEST_SCHEMA), layout.manifest_path(out))
    pq.write_table(pa.Table.from_pylist([dataclasses.asdict(r) for r in rejections], schema=REJECTION_SCHEMA),
                   layout.rejected_path(out))


def _flush(window: list[dict], writer: "_StreamWriter", world: int, window_steps: int) -> list[int]:
    costs = np.array([s["attention_cost"] for s in window], np.int64)
    order = balanced_order(costs, world, window_steps, seed=writer.written)
    for i in order.tolist():
        writer.write(window[i])
    return costs[order].tolist()


class _StreamWriter:
    """Sequence p goes to rank stream p % W; stream r's k-th shard is file k·W + r, so the reader's
    rank split (shard i → rank i % W) hands every rank its own, step-aligned stream."""

    def __init__(self, shard_dir: str, world: int, per_shard: int):
        self.dir, self.world, self.per_shard = shard_dir, world, per_shard
        self.open: dict[int, ShardWriter] = {}
        self.shard_count = [0] * world
        self.shards: list[str] = []
        self.manifest: list[dict] = []
        self.written = 0
        self.tokens_by_source: dict[str, int] = {}
        self.samples_by_source: dict[str, int] = {}
        self.sample_lengths = array("i")

    def write(self, seq: dict) -> None:
        r = self.written % self.world
        key = f"{self.written:09d}"
        w = self.open.get(r)
        if w is None:
            name = layout.shard_name(self.shard_count[r] * self.world + r)
            w = self.open[r] = ShardWriter(os.path.join(self.dir, name))
            self.shards.append(name)
        w.write(entry_members(key, seq))
        self.manifest.append({
            "key": key, "shard": os.path.basename(w.path), "num_samples": int(seq["seq_lens"].size),
            "num_tokens": int(seq["seq_lens"].sum()),
            "num_label_tokens": int(np.count_nonzero(seq["labels"] != IGNORE_INDEX)),
            "num_images": len(seq["images"]), "attention_cost": int(seq["attention_cost"]),
            "sample_keys": seq["sample_keys"], "sources": seq["sources"],
        })
        for source, n in zip(seq["sources"], seq["seq_lens"].tolist()):
            self.tokens_by_source[source] = self.tokens_by_source.get(source, 0) + n
            self.samples_by_source[source] = self.samples_by_source.get(source, 0) + 1
            self.sample_lengths.append(n)
        if w.count >= self.per_shard:
            w.close()
            del self.open[r]
            self.shard_count[r] += 1
        self.written += 1

    def close(self) -> None:
        for r in sorted(self.open):
            self.open[r].close()
        self.open.clear()


def _source_stream(builder: SequenceBuilder, path: str, passes: list[np.ndarray], config: PackConfig,
                   name: str, cache: list[list[BuiltSample] | None] | None) -> Iterator[list[BuiltSample]]:
    """Pass 2's samples of one source in selected order, each as a list: the sample, or its parts."""
    if cache is not None:
        for selected in passes:
            for i in selected.tolist():
                yield [dataclasses.replace(part, source=name) for part in cache[i]]
        return
    for selected in passes:
        wanted = set(selected.tolist())
        for i, sample in enumerate(iter_curated_samples(path)):
            if i in wanted:
                built = _render(builder, sample, config)
                if isinstance(built, Rejection):  # pass 1 accepted it: the inputs changed under us
                    raise RuntimeError(f"record {sample.key!r}: rendered differently in pass 2 ({built.reason})")
                for part in built:
                    part.source = name
                yield built


def _render(builder: SequenceBuilder, sample: Sample, config: PackConfig) -> list[BuiltSample] | Rejection:
    """One input sample → what pack places: [the sample] (over-long policy applied), or a long document's parts."""
    built = builder.build(sample)
    if (config.split_documents and not isinstance(built, Rejection) and len(built) > config.seq_len
            and splittable(builder, sample, built)):
        return split_document(builder, sample, built, config.seq_len)
    built = _fit(built, sample, builder, config.seq_len, config.overlong)
    return built if isinstance(built, Rejection) else [built]


def _fit(built: BuiltSample | Rejection, sample: Sample, builder: SequenceBuilder, L: int,
         overlong: str) -> BuiltSample | Rejection:
    """Apply the over-long policy. Truncation applies to kinds that render as "pretrain" (the kinds table) and
    never cuts an image block."""
    if isinstance(built, Rejection) or len(built) <= L:
        return built
    if overlong == "truncate" and KIND_TABLE.get(built.kind).render == "pretrain":
        begins = np.flatnonzero(built.input_ids == builder.ids[T.BEGIN_OF_IMAGE])
        ends = np.flatnonzero(built.input_ids == builder.ids[T.END_OF_IMAGE])
        if ((begins < L) & (ends >= L)).any():
            return Rejection.of(sample, STAGE, "too_long_image_cut",
                                f"{len(built)} tokens > seq_len {L}; truncation would cut an image")
        if not (built.labels[:L] != IGNORE_INDEX).any():
            return Rejection.of(sample, STAGE, "too_long", f"{len(built)} tokens > seq_len {L}; no text before it")
        kept = int((ends < L).sum())
        return dataclasses.replace(
            built, input_ids=built.input_ids[:L].copy(), labels=built.labels[:L].copy(),
            rope_position_ids=built.rope_position_ids[:, :L].copy(), image_grid_thw=built.image_grid_thw[:kept],
            images=built.images[:kept], image_formats=built.image_formats[:kept], truncated_from=len(built))
    return Rejection.of(sample, STAGE, "too_long",
                        f"{len(built)} tokens > seq_len {L}: raise seq_len or set overlong=truncate")


def new_rendering_counts() -> dict:
    """The report's `rendering` section, over the input samples (before the mixture): how each kind was rendered,
    the samples whose chat turns were unusable (trained as documents instead) by reason, and what samples rendered
    as chat left out of their turns (their document text; grounding boxes no answer gives)."""
    return {"chat": {}, "document": {}, "turns_unusable": {}, "text_left_out": 0, "boxes_left_out": 0}


def count_rendering(counts: dict, built: BuiltSample) -> None:
    by_kind = counts[built.rendered_as]
    by_kind[built.kind] = by_kind.get(built.kind, 0) + 1
    if built.turns_unusable:
        counts["turns_unusable"][built.turns_unusable] = counts["turns_unusable"].get(built.turns_unusable, 0) + 1
    counts["text_left_out"] += int(built.text_left_out)
    counts["boxes_left_out"] += built.boxes_left_out


def sample_texts(sample: Sample) -> Iterator[str]:
    """The texts a sample contributes to tokenizer training."""
    for text in (sample.training_text(), *(seg.text for seg in sample.segments),
                 *(m.content for m in sample.messages), *(o.text for o in sample.annotations.ocr),
                 *(g.phrase for g in sample.annotations.grounding)):
        if text:
            yield text


def _histogram(values, edges) -> dict:
    """schemas/charts.histogram (the curation report's): bins [lo, hi), None opens the last bin (drawn "≥129", not
    as a made-up upper edge), a value past a closed end in the nearest bin (seq_len itself in the last)."""
    return histogram([float(v) for v in values], [None if e is None else float(e) for e in edges])


def _report(config, recipe, tokenizer, lengths, rejections, truncated, mult, writer, costs_before,
            costs_after) -> dict:
    L = config.seq_len
    manifest = writer.manifest
    sequences = len(manifest)
    tokens = sum(r["num_tokens"] for r in manifest)
    dropped: dict[str, int] = {}
    for r in rejections:
        dropped[r.reason] = dropped.get(r.reason, 0) + 1
    sources = {}
    for s, x, m in zip(recipe.sources, lengths, mult):
        used = writer.tokens_by_source.get(s.name, 0)
        sources[s.name] = {
            "path": s.path, "samples": int(x.size), "usable": int((x > 0).sum()),
            "tokens_available": int(x[x > 0].sum()), "multiplier": round(m, 6),
            "target_share": s.token_share if s.token_share >= 0 else None,
            "samples_used": writer.samples_by_source.get(s.name, 0), "tokens_used": used,
            "realised_share": round(used / tokens, 6) if tokens else 0.0,
        }
    samples_per_seq = [r["num_samples"] for r in manifest]
    edges = [0] + [2 ** k for k in range(4, int(math.log2(L)) + 1)] + ([L] if L & (L - 1) else [])
    return {
        "format_version": PACKED_FORMAT_VERSION,
        "seq_len": L, "sequences": sequences, "shards": len(writer.shards),
        "samples_packed": sum(samples_per_seq), "tokens": tokens,
        "label_tokens": sum(r["num_label_tokens"] for r in manifest),
        "fill_efficiency": round(tokens / (sequences * L), 6) if sequences else 0.0,
        "lower_bound_sequences": math.ceil(tokens / L),
        "dropped_by_reason": dict(sorted(dropped.items())), "dropped": len(rejections), "truncated": truncated,
        "histograms": {
            "sample_length": _histogram(writer.sample_lengths, edges),
            "sequence_fill": _histogram([r["num_tokens"] / L for r in manifest], np.linspace(0, 1, 11)),
            "samples_per_sequence": _histogram(samples_per_seq, [1, 2, 3, 5, 9, 17, 33, 65, 129, None]),
        },
        "sources": sources,
        "recipe": to_dict(recipe), "recipe_hash": recipe_hash(recipe),
        "balance": {"world_size": config.balance.world_size,
                    # without balancing a shuffled loader deals sequences to ranks in random order
                    "before": imbalance(np.random.default_rng(0).permutation(np.array(costs_before, np.int64)),
                                        config.balance.world_size),
                    "pack_order": imbalance(np.array(costs_before), config.balance.world_size),
                    "after": imbalance(np.array(costs_after), config.balance.world_size)},
        "config": to_dict(config),
        # what determines the shards: everything but where they go
        "config_hash": config_hash({k: v for k, v in to_dict(config).items() if k not in ("output", "overwrite")}),
        "tokenizer": {"dir": TOKENIZER_DIR, "vocab_size": len(tokenizer), "pad_id": int(tokenizer.pad_token_id),
                      "special_token_ids": T.special_token_ids(tokenizer)},
    }
