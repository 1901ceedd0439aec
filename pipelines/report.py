"""The curation report (report.json): funnel per stage (in, kept, dropped by reason), accounting, histograms.
The HTML page is report_html.py; the thumbnails it shows are read back by thumbnails.py.

Built from what the job wrote (the manifest/ and rejected/ parts) and Beam's counters, not from separate
bookkeeping: the funnel's drops are the rejection rows, and `read/records` (every raw record the
sources saw) must equal kept + rejected.
"""
from __future__ import annotations

import collections
import io
import json
import posixpath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from vlmloom.schemas import formats
from vlmloom.schemas.charts import histogram
from vlmloom.schemas.config import to_dict
from vlmloom.schemas.records import REJECTION_SCHEMA


class AccountingError(RuntimeError):
    pass


def read_table(path: str):
    with FileSystems.open(path) as fh:
        return pq.read_table(io.BytesIO(fh.read()))


def read_parts(out_dir: str, sub: str, schema) -> list[dict[str, Any]]:
    """The rows of every `sub/*.parquet` part of a curated directory (formats.py), in part order."""
    match = FileSystems.match([FileSystems.join(out_dir, sub, "*.parquet")])[0].metadata_list
    paths = sorted(m.path for m in match if not posixpath.basename(m.path).startswith((".", "_")))
    return pa.concat_tables([read_table(p) for p in paths] or [schema.empty_table()]).to_pylist()


def read_manifest(out_dir: str) -> list[dict[str, Any]]:
    """The kept samples' manifest rows of a curated directory (local or object store). Every reader of the
    curated layout (report, HTML page, inspect, trace) goes through here, so the layout changes in one place."""
    return read_parts(out_dir, formats.MANIFEST_DIR, formats.MANIFEST_SCHEMA)


def read_rejections(out_dir: str) -> list[dict[str, Any]]:
    """Every dropped record's row (records.REJECTION_SCHEMA) of a curated directory."""
    return read_parts(out_dir, formats.REJECTED_DIR, REJECTION_SCHEMA)


SIDE_EDGES = [0, 128, 256, 512, 1024, 2048, None]
# Histograms are {"edges": [...], "counts": [...]} (schemas/charts.histogram): None opens an end, so negative
# values (a CLIP cosine below 0) are ordinary numbers and bins keep their order in JSON.


def build_report(out_dir: str, stage_names: list[str], counters: dict[str, int], config, seconds: float) -> dict[str, Any]:
    manifest, rejected = read_manifest(out_dir), read_rejections(out_dir)
    kept, dropped = len(manifest), len(rejected)
    read_records = counters.get("read/records")
    input_records = read_records if read_records is not None else kept + dropped

    by_stage: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for row in rejected:
        by_stage[row["stage"]][row["reason"]] += 1
    funnel, remaining = [], input_records
    for stage in stage_names:
        reasons = dict(sorted(by_stage.pop(stage, collections.Counter()).items()))
        out = remaining - sum(reasons.values())
        funnel.append({"stage": stage, "in": remaining, "kept": out, "dropped": reasons})
        remaining = out
    for stage, reasons in sorted(by_stage.items()):  # stages outside the main chain (none expected)
        funnel.append({"stage": stage, "in": None, "kept": None, "dropped": dict(reasons)})

    signals = [json.loads(r["signals"]) for r in manifest]
    langs = collections.Counter(s.get("lang", "und") for s in signals)
    return {
        "format_version": formats.CURATED_FORMAT_VERSION,
        "seconds": round(seconds, 2),
        "accounting": {
            "input_records": input_records, "kept": kept, "rejected": dropped,
            "balanced": input_records == kept + dropped, "input_count_from": "read/records counter"
            if read_records is not None else "outputs (the runner reported no counters)",
        },
        "funnel": funnel,
        "kinds": dict(sorted(collections.Counter(r["kind"] for r in manifest).items())),
        "sources": dict(sorted(collections.Counter(r["source"] for r in manifest).items())),
        "shards": len({r["shard"] for r in manifest}),
        "languages": dict(langs.most_common()),
        "by_source": _by_source(manifest, rejected),
        "histograms": {
            "width": histogram([r["width"] for r in manifest if r["width"]], SIDE_EDGES),
            "height": histogram([r["height"] for r in manifest if r["height"]], SIDE_EDGES),
            "aspect_ratio": histogram([r["width"] / r["height"] for r in manifest if r["width"] and r["height"]],
                                      [None, 0.5, 0.75, 0.9, 1.1, 1.33, 2, None]),
            "text_chars": histogram([r["text_chars"] for r in manifest], [0, 16, 64, 256, 1024, 4096, None]),
        },
        "sections": {**_model_sections(signals), **_rejection_sections(rejected)},
        "counters": dict(sorted(counters.items())),
        "config": to_dict(config),
    }


def _model_sections(signals: list[dict[str, Any]]) -> dict[str, Any]:
    """Summaries of signals that model-backed stages leave on kept samples."""
    sections: dict[str, Any] = {}
    clip = [s["clip_score"] for s in signals if "clip_score" in s]
    if clip:
        sections["clip"] = {"scored": len(clip), "mean": round(sum(clip) / len(clip), 4),
                            "histogram": histogram(clip, [None, 0, 0.1, 0.2, 0.3, 0.4, 0.5, None])}
    for name, edges in (("ocr_char_accuracy", [None, 0.5, 0.8, 0.9, 0.95, 0.99, None]),
                        ("ocr_lines", [0, 1, 2, 4, 8, 16, None]), ("grounding_boxes", [0, 1, 2, 4, 8, 16, None])):
        values = [s[name] for s in signals if s.get(name) is not None]
        if values:
            sections[name] = {"count": len(values), "mean": round(sum(values) / len(values), 4),
                              "histogram": histogram(values, edges)}
    choices = collections.Counter(s["text_choice"] for s in signals if "text_choice" in s)
    if choices:
        sections["recaption"] = dict(choices)
    return sections


def _by_source(manifest: list[dict[str, Any]], rejected: list[dict[str, Any]]) -> dict[str, Any]:
    """Per input source: kept, rejected, and rejections by reason."""
    out: dict[str, Any] = {}
    for row in manifest:
        out.setdefault(row["source"], {"kept": 0, "rejected": 0, "reasons": {}})["kept"] += 1
    for row in rejected:
        entry = out.setdefault(row["source"] or "?", {"kept": 0, "rejected": 0, "reasons": {}})
        entry["rejected"] += 1
        entry["reasons"][row["reason"]] = entry["reasons"].get(row["reason"], 0) + 1
    return {name: {**v, "reasons": dict(sorted(v["reasons"].items()))} for name, v in sorted(out.items())}


def _rejection_sections(rejected: list[dict[str, Any]]) -> dict[str, Any]:
    """Contamination hits per benchmark, from the rejections' structured `fields`."""
    hits: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for row in rejected:
        if row["stage"] == "contamination" and row["reason"].startswith("benchmark_"):
            fields = json.loads(row["fields"]) if row.get("fields") else {}
            hits[fields.get("contamination_benchmark", "?")][row["reason"]] += 1
    return {"contamination": {name: dict(c) for name, c in sorted(hits.items())}} if hits else {}


def check_accounting(report: dict[str, Any]) -> None:
    acc = report["accounting"]
    if not acc["balanced"]:
        raise AccountingError(
            f"records lost: read {acc['input_records']} but kept {acc['kept']} + rejected {acc['rejected']} = "
            f"{acc['kept'] + acc['rejected']}; do not use this output (see the runner notes in README)")


def summary_table(report: dict[str, Any]) -> str:
    lines = [f"{'stage':<18}{'in':>9}{'kept':>9}  dropped by reason", "-" * 72]
    for row in report["funnel"]:
        reasons = ", ".join(f"{k}={v}" for k, v in row["dropped"].items()) or "-"
        lines.append(f"{row['stage']:<18}{row['in'] if row['in'] is not None else '':>9}"
                     f"{row['kept'] if row['kept'] is not None else '':>9}  {reasons}")
    acc = report["accounting"]
    lines.append("-" * 72)
    lines.append(f"input {acc['input_records']} = kept {acc['kept']} + rejected {acc['rejected']}"
                 f"  ({'balanced' if acc['balanced'] else 'NOT BALANCED'}); shards {report['shards']};"
                 f" {report['seconds']} s")
    for name, section in report.get("sections", {}).items():
        if isinstance(section, dict):  # histograms are for the HTML page, not the terminal
            section = {k: v for k, v in section.items() if k != "histogram"}
        lines.append(f"{name}: {json.dumps(section, sort_keys=True)}")
    return "\n".join(lines)
