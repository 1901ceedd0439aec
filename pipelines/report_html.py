"""The curation report as one self-contained HTML page (report.html): report.json (report.py) + the curated
tables + thumbnails → HTML text with inline SVG charts (schemas/charts.py), no network.

Sections: accounting cards; the funnel as a chart; per-source breakdown; histograms (image sides, aspect ratio,
text length, language, CLIP score, OCR accuracy, boxes per sample — those the report has); near-duplicate
rejections beside the kept representative they duplicate, with the distance; contamination hits beside the
benchmark item; every reason code with its count and examples; kept samples; model stages and config.
The chart ids and bar counts follow report.json one to one (tests/test_report_browser.py counts them).
"""
from __future__ import annotations

import json
from typing import Any

from vlmloom.pipelines.report import iter_parts, rows_for_keys
from vlmloom.pipelines.thumbnails import benchmark_items, kept_records, kept_thumbnails, kept_video_strips, \
    rejected_records
from vlmloom.schemas import charts, curated
from vlmloom.schemas.charts import esc
from vlmloom.schemas.signals import DEDUP_STAGES  # every dedup stage, the embedding ones too

EXAMPLES_PER_REASON = 3
NEAR_DUPLICATE_PAIRS = 12
HISTOGRAM_TITLES = {"width": "Image width (px)", "height": "Image height (px)", "aspect_ratio": "Aspect ratio (w/h)",
                    "text_chars": "Text length (characters)"}
SECTION_HISTOGRAMS = {"clip": "CLIP score", "ocr_char_accuracy": "OCR character accuracy",
                      "ocr_lines": "OCR lines per sample", "grounding_boxes": "Boxes per sample",
                      "video_duration": "Video duration (s)", "video_fps": "Video frame rate",
                      "video_motion": "Video motion (grey levels per 1/2 s)"}


def _fields(row: dict[str, Any]) -> dict[str, Any]:
    try:
        return json.loads(row["fields"]) if row.get("fields") else {}
    except ValueError:
        return {}


def representative_of(row: dict[str, Any]) -> str | None:
    """The kept key a dedup rejection duplicates: its `duplicate_of` field, else the detail's 'duplicate of KEY'."""
    rep = _fields(row).get("duplicate_of")
    if rep:
        return str(rep)
    detail = row.get("detail") or ""
    return detail.split("duplicate of ", 1)[1].split()[0].rstrip(",;") if "duplicate of " in detail else None


def _distance(stage: str, rejected, kept, rep_signals: dict[str, Any], fields: dict[str, Any]) -> str:
    """What the stage measured, where the rejection carries it; otherwise measured here from the two records."""
    from vlmloom.curation import hashing

    for name in ("distance", "phash_distance", "hamming_distance", "jaccard", "estimated_jaccard", "similarity"):
        if name in fields:
            return f"{name} {fields[name]}"
    if stage == "exact_dedup":
        return "identical content"
    if stage == "near_dup_image" and rejected and rejected.phash and rep_signals.get("phash"):
        d = hashing.hamming(hashing.phash_int(rejected.phash), hashing.phash_int(rep_signals["phash"]))
        return f"pHash Hamming distance {d} / 64"
    if stage == "near_dup_text" and rejected and kept:
        a, b = hashing.text_shingles(rejected.text), hashing.text_shingles(kept.text)
        if a and b:
            return f"shingle Jaccard {len(a & b) / len(a | b):.2f}"
    return "—"


def _selection(out_dir: str, report: dict[str, Any]):
    """What the page shows of the rejections: EXAMPLES_PER_REASON rows per (stage, reason), the first
    NEAR_DUPLICATE_PAIRS dedup rejections that name their representative, as many contamination hits. The
    rejected parts are read one at a time and no further than needed (report.json's funnel says how many rows
    each reason has), so the page holds a bucket's rows at most, never the corpus'."""
    need = {(row["stage"], reason): min(n, EXAMPLES_PER_REASON)
            for row in report["funnel"] for reason, n in row["dropped"].items()}
    dropped_at: dict[str, int] = {}
    for row in report["funnel"]:
        dropped_at[row["stage"]] = dropped_at.get(row["stage"], 0) + sum(row["dropped"].values())
    # at most this many can exist (a row that names no representative or item makes it fewer: then all is read)
    most_pairs = min(NEAR_DUPLICATE_PAIRS, sum(dropped_at.get(stage, 0) for stage in DEDUP_STAGES))
    most_hits = min(NEAR_DUPLICATE_PAIRS, dropped_at.get("contamination", 0))
    examples: dict[tuple[str, str], list[dict]] = {}
    pairs: list[tuple[dict, str]] = []
    hits: list[dict] = []
    for rows in iter_parts(out_dir, curated.REJECTED):
        for row in rows:
            bucket = examples.setdefault((row["stage"], row["reason"]), [])
            if len(bucket) < EXAMPLES_PER_REASON:
                bucket.append(row)
            if row["stage"] in DEDUP_STAGES and len(pairs) < NEAR_DUPLICATE_PAIRS:
                rep = representative_of(row)
                if rep:
                    pairs.append((row, rep))
            if (row["stage"] == "contamination" and len(hits) < NEAR_DUPLICATE_PAIRS
                    and _fields(row).get("contamination_item_id")):
                hits.append(row)
        if (all(len(examples.get(reason, ())) >= n for reason, n in need.items())
                and len(pairs) >= most_pairs and len(hits) >= most_hits):
            break
    return examples, pairs, hits


def render_html(out_dir: str, report: dict[str, Any], input_paths: dict[str, list[str]] | None = None) -> str:
    examples, pairs, hits = _selection(out_dir, report)
    reps = {rep for _, rep in pairs}
    rep_rows = rows_for_keys(out_dir, curated.MANIFEST, reps, ["key", "shard", "signals"]) if reps else []
    signals_by_key = {r["key"]: json.loads(r["signals"]) for r in rep_rows}
    wanted = {(r["source"], r["source_id"]) for rows in examples.values() for r in rows}
    wanted |= {(r["source"], r["source_id"]) for r, _ in pairs} | {(r["source"], r["source_id"]) for r in hits}
    shown_rejected = rejected_records(input_paths or {}, wanted)
    shown_kept = kept_records(out_dir, rep_rows, reps) if pairs else {}
    benchmarks = report.get("config", {}).get("models", {}).get("contamination", {}).get("benchmarks", [])
    shown_bench = benchmark_items(list(benchmarks), {(f["contamination_benchmark"], f["contamination_item_id"])
                                                     for f in map(_fields, hits)}) if hits else {}

    def rejected_thumb(r):
        s = shown_rejected.get((r["source"], r["source_id"]))
        return charts.thumb(s.url if s else None, r["source_id"])

    acc = report["accounting"]
    body = [charts.cards([("input records", acc["input_records"]), ("kept", acc["kept"]),
                          ("rejected", acc["rejected"]), ("balanced", "yes" if acc["balanced"] else "NO"),
                          ("shards", report["shards"]), ("seconds", report["seconds"])])]

    funnel = [(r["stage"], r["kept"] or 0, sum(r["dropped"].values())) for r in report["funnel"]]
    body.append("<h2>Funnel</h2><section>" + charts.funnel_chart("funnel", "Records kept and dropped per stage",
                                                                  funnel) + "</section>")

    by_source = report.get("by_source") or {}
    if by_source:
        names = list(by_source)
        body.append("<h2>Sources</h2><section><div class='charts'>" + charts.grouped_bar_chart(
            "sources", "Kept and rejected per source", names,
            {"kept": [by_source[n]["kept"] for n in names], "rejected": [by_source[n]["rejected"] for n in names]},
            value_format="{:g}") + "</div>" + charts.table(
            ["source", "kept", "rejected", "rejected by reason", "read (files, records, what was not used)"],
            [(n, v["kept"], v["rejected"], ", ".join(f"{k}={c}" for k, c in v["reasons"].items()) or "—",
              ", ".join(f"{k}={c}" for k, c in sorted((v.get("read") or {}).items())) or "—")
             for n, v in by_source.items()]) + "</section>")

    figs = [charts.histogram_chart(name, HISTOGRAM_TITLES.get(name, name), h)
            for name, h in report["histograms"].items()]
    if report.get("languages"):
        langs = report["languages"]
        figs.append(charts.bar_chart("languages", "Language", list(langs), list(langs.values())))
    for name, section in report.get("sections", {}).items():
        if isinstance(section, dict) and "histogram" in section:
            figs.append(charts.histogram_chart(name, SECTION_HISTOGRAMS.get(name, name), section["histogram"],
                                               note=f"mean {section.get('mean')} over "
                                                    f"{section.get('scored', section.get('count'))} samples"))
    body.append("<h2>Distributions of kept samples</h2><section><div class='charts'>" + "".join(figs)
                + "</div></section>")

    if pairs:
        rows = []
        for row, rep in pairs:
            s_rej = shown_rejected.get((row["source"], row["source_id"]))
            s_rep = shown_kept.get(rep)
            pair = ("<div class='pair'>" + charts.thumb(s_rej.url if s_rej else None, f"dropped: {row['source_id']}")
                    + charts.thumb(s_rep.url if s_rep else None, f"kept: {rep}") + "</div>")
            rows.append((row["stage"], pair, esc(_distance(row["stage"], s_rej, s_rep, signals_by_key.get(rep, {}),
                                                           _fields(row))), esc(row["detail"][:200])))
        body.append("<h2>Duplicates beside what they duplicate</h2><section>" + charts.table(
            ["stage", "dropped → kept representative", "distance", "detail"], rows, raw_columns=(1, 2, 3))
            + "</section>")

    if hits:
        rows = []
        for row in hits[:NEAR_DUPLICATE_PAIRS]:
            f = _fields(row)
            item = shown_bench.get((f["contamination_benchmark"], f["contamination_item_id"]))
            pair = ("<div class='pair'>" + rejected_thumb(row) + charts.thumb(
                item.url if item else None, f"{f['contamination_benchmark']}: {f['contamination_item_id']}")
                + "</div>")
            rows.append((row["reason"], pair, esc((item.text if item else "")[:200]), esc(row["detail"][:200])))
        body.append("<h2>Contamination hits beside the benchmark item</h2><section>" + charts.table(
            ["reason", "dropped sample → benchmark item", "benchmark question", "detail"], rows,
            raw_columns=(1, 2, 3)) + "</section>")

    counts = {(row["stage"], reason): n for row in report["funnel"] for reason, n in row["dropped"].items()}
    reason_rows = []
    for (stage, reason), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        shown = examples.get((stage, reason), [])
        reason_rows.append((stage, reason, n, "<div class='pair'>" + "".join(map(rejected_thumb, shown)) + "</div>",
                            "<br>".join(esc(f"{r['source_id']}: {r['detail'][:160]}") for r in shown)))
    if reason_rows:
        body.append("<h2>Every reason code</h2><section><div class='charts'>" + charts.bar_chart(
            "reasons", "Rejections per reason", [f"{s}/{r}" for s, r, *_ in reason_rows], [n for _, _, n, *_ in
                                                                                          reason_rows],
            color=charts.DROPPED_COLOR) + "</div>" + charts.table(
            ["stage", "reason", "count", "examples", "detail"], reason_rows, raw_columns=(3, 4)) + "</section>")

    thumbs = "".join(charts.thumb(url, key) for key, url in kept_thumbnails(out_dir))
    body.append(f"<h2>Kept samples</h2><section>{thumbs or '<p>none</p>'}</section>")
    # the report's kind counts say whether any video was kept: without one no manifest part is read for strips
    strips = kept_video_strips(out_dir) if (report.get("kinds") or {}).get("video") else []
    if strips:
        body.append("<h2>Kept videos</h2><section class='strips'>" + "".join(
            f"<figure><img src='{url}' alt='frames of {esc(key)}'><figcaption>{esc(key)}</figcaption></figure>"
            for key, url in strips) + "</section>")
    body.append("<h2>Details</h2><section><details><summary>kinds, model stages, counters, config</summary><pre>"
                + esc(json.dumps({k: report.get(k) for k in ("kinds", "sections", "disabled_model_stages", "counters",
                                                             "config")}, indent=1, sort_keys=True, default=str))
                + "</pre></details></section>")
    return charts.page("vlmloom curation report", "".join(body))
