"""The curation report (report.json): funnel per stage (in, kept, dropped by reason), accounting, histograms.
The HTML page is report_html.py; the thumbnails it shows are read back by thumbnails.py.

Built from what the job wrote (the manifest/ and rejected/ parts) and Beam's counters, not from separate
bookkeeping: the funnel's drops are the rejection rows, and `read/records` (every raw record the
sources saw) must equal kept + rejected. The rows are summed where they are written, one bucket per worker
(`ReportStats`, one small file per bucket that the driver merges), so the driver never reads the corpus' rows
back: at a billion records the report costs a file per bucket, not a pass over every part.
"""
from __future__ import annotations

import json
from fractions import Fraction
from typing import Any, Iterable, Iterator

from apache_beam.io.filesystems import FileSystems

from vlmloom.pipelines.files import BEAM_FILES
from vlmloom.schemas import curated, formats
from vlmloom.schemas.charts import histogram
from vlmloom.schemas.config import to_dict


class AccountingError(RuntimeError):
    pass


def part_paths(out_dir: str, table: str) -> list[str]:
    """The parts of `table` (curated.MANIFEST or curated.REJECTED) of a curated directory, in bucket order."""
    return curated.part_paths(out_dir, table, BEAM_FILES)


def iter_parts(out_dir: str, table: str, columns: list[str] | None = None) -> Iterator[list[dict[str, Any]]]:
    """curated.iter_parts on any filesystem: the rows of each part, one part at a time."""
    return curated.iter_parts(out_dir, table, columns, BEAM_FILES)


def rows_for_keys(out_dir: str, table: str, keys: set[str], columns: list[str] | None = None) -> list[dict[str, Any]]:
    """curated.rows_for_keys on any filesystem: the rows of `keys`, from their buckets' parts only."""
    return curated.rows_for_keys(out_dir, table, keys, columns, BEAM_FILES)


def read_manifest(out_dir: str) -> list[dict[str, Any]]:
    """The kept samples' manifest rows of a curated directory (local or object store), all at once: for tools
    and tests on small outputs (the report streams, or uses the job's aggregates)."""
    return curated.read_manifest(out_dir, BEAM_FILES)


def read_rejections(out_dir: str) -> list[dict[str, Any]]:
    """Every dropped record's row (records.REJECTION_SCHEMA) of a curated directory, all at once."""
    return curated.read_rejections(out_dir, BEAM_FILES)


SIDE_EDGES = [0, 128, 256, 512, 1024, 2048, None]
ASPECT_EDGES = [None, 0.5, 0.75, 0.9, 1.1, 1.33, 2, None]
TEXT_EDGES = [0, 16, 64, 256, 1024, 4096, None]
HISTOGRAM_EDGES = {"width": SIDE_EDGES, "height": SIDE_EDGES, "aspect_ratio": ASPECT_EDGES, "text_chars": TEXT_EDGES}
# Histograms are {"edges": [...], "counts": [...]} (schemas/charts.histogram): None opens an end, so negative
# values (a CLIP cosine below 0) are ordinary numbers and bins keep their order in JSON.
VALUE_SECTIONS = {  # numeric signal on kept samples → (report section, its count's name, histogram edges)
    "clip_score": ("clip", "scored", [None, 0, 0.1, 0.2, 0.3, 0.4, 0.5, None]),
    "ocr_char_accuracy": ("ocr_char_accuracy", "count", [None, 0.5, 0.8, 0.9, 0.95, 0.99, None]),
    "ocr_lines": ("ocr_lines", "count", [0, 1, 2, 4, 8, 16, None]),
    "grounding_boxes": ("grounding_boxes", "count", [0, 1, 2, 4, 8, 16, None]),
    "video_duration": ("video_duration", "count", [0, 1, 5, 30, 120, 600, None]),  # seconds
    "video_fps": ("video_fps", "count", [0, 10, 20, 26, 31, 61, None]),
    "video_motion": ("video_motion", "count", [0, 1, 2, 5, 10, 20, 40, None]),  # grey levels between frames 1/2 s apart
}
STATS_COLUMNS = {  # what ReportStats reads of each part
    curated.MANIFEST: ["source", "kind", "shard", "width", "height", "text_chars", "signals"],
    curated.REJECTED: ["source", "stage", "reason", "fields"],
}


def _add(into: dict, other: dict) -> None:
    """Add nested counts: ints add, lists add by position, dicts recurse."""
    for key, value in other.items():
        if isinstance(value, dict):
            _add(into.setdefault(key, {}), value)
        elif isinstance(value, list):
            have = into.setdefault(key, [0] * len(value))
            into[key] = [a + b for a, b in zip(have, value)]
        else:
            into[key] = into.get(key, 0) + value


def _count(into: dict, *path: str) -> None:
    for name in path[:-1]:
        into = into.setdefault(name, {})
    into[path[-1]] = into.get(path[-1], 0) + 1


class ReportStats:
    """What report.json says of the kept and dropped rows, as bounded aggregates that merge in any order to the
    same result: counts per kind, source, language, stage and reason; histogram bins on fixed edges; exact sums
    (fractions) for means. Its size grows with the number of distinct sources, languages and reason codes,
    never with the number of records, so the job computes it where the rows are written (one bucket per
    worker, `sink._WriteParts`, beside the bucket's parts) and the driver merges the buckets' (`load_stats`);
    `from_parts` streams a finished directory part by part instead (the same numbers: tests/test_report.py).

    `shards` counts distinct shard names per `add` call and sums them: each call must see whole buckets (a
    shard never spans buckets)."""

    def __init__(self, counts: dict | None = None, sums: dict[str, Fraction] | None = None):
        self.counts: dict[str, Any] = counts or {}
        self.sums: dict[str, Fraction] = sums or {}

    def add(self, rows: Iterable[dict[str, Any]], rejections: Iterable[dict[str, Any]]) -> "ReportStats":
        """Manifest rows (formats.MANIFEST_SCHEMA) and rejection rows (records.REJECTION_SCHEMA) of one bucket."""
        c = self.counts
        shards: set[str] = set()
        sides: dict[str, list[float]] = {name: [] for name in HISTOGRAM_EDGES}
        values: dict[str, list[float]] = {name: [] for name in VALUE_SECTIONS}
        for row in rows:
            _count(c, "kept")
            _count(c, "kinds", row["kind"])
            _count(c, "sources", row["source"])
            _count(c, "by_source", row["source"], "kept")
            shards.add(row["shard"])
            width, height = row["width"], row["height"]
            if width:
                sides["width"].append(width)
            if height:
                sides["height"].append(height)
            if width and height:
                sides["aspect_ratio"].append(width / height)
            sides["text_chars"].append(row["text_chars"])
            signals = json.loads(row["signals"]) if row["signals"] else {}
            _count(c, "languages", str(signals.get("lang", "und")))
            for name in VALUE_SECTIONS:
                if signals.get(name) is not None:
                    values[name].append(signals[name])
            if "text_choice" in signals:
                _count(c, "text_choices", str(signals["text_choice"]))
        c["shards"] = c.get("shards", 0) + len(shards)
        _add(c, {"histograms": {name: histogram(v, HISTOGRAM_EDGES[name])["counts"] for name, v in sides.items()}})
        for name, found in values.items():
            if found:
                _add(c, {"values": {name: {"count": len(found),
                                           "bins": histogram(found, VALUE_SECTIONS[name][2])["counts"]}}})
                self.sums[name] = self.sums.get(name, Fraction(0)) + sum(map(Fraction, found))
        for row in rejections:
            source = row["source"] or "?"
            _count(c, "rejected")
            _count(c, "dropped", row["stage"], row["reason"])
            _count(c, "by_source", source, "rejected")
            _count(c, "by_source_reasons", source, row["reason"])
            if row["stage"] == "contamination" and row["reason"].startswith("benchmark_"):
                fields = json.loads(row["fields"]) if row.get("fields") else {}
                _count(c, "contamination", str(fields.get("contamination_benchmark", "?")), row["reason"])
        return self

    def merge(self, other: "ReportStats") -> "ReportStats":
        _add(self.counts, other.counts)
        for name, total in other.sums.items():
            self.sums[name] = self.sums.get(name, Fraction(0)) + total
        return self

    def to_json(self) -> bytes:
        sums = {name: [total.numerator, total.denominator] for name, total in self.sums.items()}
        return json.dumps({"counts": self.counts, "sums": sums}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "ReportStats":
        raw = json.loads(data)
        return cls(raw["counts"], {name: Fraction(n, d) for name, (n, d) in raw["sums"].items()})

    @classmethod
    def from_parts(cls, out_dir: str) -> "ReportStats":
        """Stream a finished curated directory's parts (one bucket in memory at a time)."""
        stats = cls()
        for rows in iter_parts(out_dir, curated.MANIFEST, STATS_COLUMNS[curated.MANIFEST]):
            stats.add(rows, [])
        for rows in iter_parts(out_dir, curated.REJECTED, STATS_COLUMNS[curated.REJECTED]):
            stats.add([], rows)
        return stats

    def sections(self) -> dict[str, Any]:
        """report.json's `sections`: summaries of the signals model stages leave, contamination hits."""
        out: dict[str, Any] = {}
        for name, (section, count_name, edges) in VALUE_SECTIONS.items():
            found = self.counts.get("values", {}).get(name)
            if found:
                out[section] = {count_name: found["count"],
                                "mean": round(float(self.sums[name] / found["count"]), 4),
                                "histogram": {"edges": list(edges), "counts": found["bins"]}}
        if self.counts.get("text_choices"):
            out["recaption"] = dict(sorted(self.counts["text_choices"].items()))
        if self.counts.get("contamination"):
            out["contamination"] = {name: dict(sorted(c.items())) for name, c in
                                    sorted(self.counts["contamination"].items())}
        return out

    def report_fields(self, stage_names: list[str], input_records: int) -> dict[str, Any]:
        """The parts of report.json that come from the rows: funnel, kinds, sources, shards, languages,
        by_source, histograms, sections."""
        c = self.counts
        dropped = {stage: dict(reasons) for stage, reasons in c.get("dropped", {}).items()}
        funnel, remaining = [], input_records
        for stage in stage_names:
            reasons = dict(sorted(dropped.pop(stage, {}).items()))
            out = remaining - sum(reasons.values())
            funnel.append({"stage": stage, "in": remaining, "kept": out, "dropped": reasons})
            remaining = out
        for stage, reasons in sorted(dropped.items()):  # stages outside the main chain (none expected)
            funnel.append({"stage": stage, "in": None, "kept": None, "dropped": dict(sorted(reasons.items()))})
        by_source = {name: {"kept": v.get("kept", 0), "rejected": v.get("rejected", 0),
                            "reasons": dict(sorted(c.get("by_source_reasons", {}).get(name, {}).items()))}
                     for name, v in sorted(c.get("by_source", {}).items())}
        histograms = c.get("histograms", {})
        return {
            "funnel": funnel,
            "kinds": dict(sorted(c.get("kinds", {}).items())),
            "sources": dict(sorted(c.get("sources", {}).items())),
            "shards": c.get("shards", 0),
            "languages": dict(sorted(c.get("languages", {}).items(), key=lambda kv: (-kv[1], kv[0]))),
            "by_source": by_source,
            "histograms": {name: {"edges": list(e), "counts": histograms.get(name, [0] * (len(e) - 1))}
                           for name, e in HISTOGRAM_EDGES.items()},
            "sections": self.sections(),
        }


def load_stats(out_dir: str) -> ReportStats:
    """The aggregates the job's buckets left (curated.report_stats_dir, merged, then removed: report.json holds
    them), or, for a directory without them, the same aggregates streamed from its parts. A bucket whose parts
    were lost has no aggregates either, so the accounting check still sees the loss."""
    stats_dir = curated.report_stats_dir(out_dir, BEAM_FILES)
    paths = sorted(m.path for m in FileSystems.match([FileSystems.join(stats_dir, "*.json")])[0].metadata_list)
    if not paths:
        return ReportStats.from_parts(out_dir)
    stats = ReportStats()
    for path in paths:
        with FileSystems.open(path) as fh:
            stats.merge(ReportStats.from_json(fh.read()))
    FileSystems.delete(paths)
    if FileSystems.exists(stats_dir):  # object stores have no directories; a local one is left empty
        FileSystems.delete([stats_dir])
    return stats


def build_report(out_dir: str, stage_names: list[str], counters: dict[str, int], config, seconds: float,
                 stats: ReportStats | None = None) -> dict[str, Any]:
    """report.json from the job's counters and the rows it wrote (their aggregates: `stats`, else load_stats)."""
    stats = stats if stats is not None else load_stats(out_dir)
    kept, dropped = stats.counts.get("kept", 0), stats.counts.get("rejected", 0)
    read_records = counters.get("read/records")
    input_records = read_records if read_records is not None else kept + dropped
    fields = stats.report_fields(stage_names, input_records)
    # What each source's readers counted (`inputs/<source>/<code>` counters: records, read_file:<ext>,
    # ignored_member:<ext>, ignored_file:<ext>, unreadable_file:<ext>, renamed_key, ...), beside its kept/rejected.
    for name, value in sorted(counters.items()):
        if name.startswith("inputs/"):
            source, code = name[len("inputs/"):].rsplit("/", 1)
            entry = fields["by_source"].setdefault(source, {"kept": 0, "rejected": 0, "reasons": {}})
            entry.setdefault("read", {})[code] = value
    return {
        "format_version": formats.CURATED_FORMAT_VERSION,
        "seconds": round(seconds, 2),
        "accounting": {
            "input_records": input_records, "kept": kept, "rejected": dropped,
            "balanced": input_records == kept + dropped, "input_count_from": "read/records counter"
            if read_records is not None else "outputs (the runner reported no counters)",
        },
        **fields,
        "images_removed": images_removed(counters),
        "counters": dict(sorted(counters.items())),
        "config": to_dict(config),
    }


def images_removed(counters: dict[str, int]) -> dict[str, dict[str, int]]:
    """Images taken out of records that go on (documents' failed downloads, repeated and irrelevant images), per
    stage and reason, from the `<stage>/images_removed_<reason>` counters."""
    out: dict[str, dict[str, int]] = {}
    for name, value in sorted(counters.items()):
        stage, _, counter = name.partition("/")
        if counter.startswith("images_removed_") and value:
            out.setdefault(stage, {})[counter[len("images_removed_"):]] = value
    return out


def _model_sections(signals: list[dict[str, Any]]) -> dict[str, Any]:
    """The `sections` of kept samples with these signals (for tests and callers with signals in hand)."""
    rows = [{"source": "", "kind": "", "shard": "", "width": None, "height": None, "text_chars": 0,
             "signals": json.dumps(s)} for s in signals]
    return ReportStats().add(rows, []).sections()


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
    if report.get("images_removed"):
        lines.append(f"images removed from documents: {json.dumps(report['images_removed'], sort_keys=True)}")
    for name, section in report.get("sections", {}).items():
        if isinstance(section, dict):  # histograms are for the HTML page, not the terminal
            section = {k: v for k, v in section.items() if k != "histogram"}
        lines.append(f"{name}: {json.dumps(section, sort_keys=True)}")
    return "\n".join(lines)
