"""The pack report as one self-contained HTML page (pack_report.html next to pack_report.json): the JSON report +
the packed manifest (one row per sequence) → HTML text with inline SVG charts (schemas/charts.py), no network.

Charts: fill of every sequence (points, in written order), fill histogram, sample-length histogram, samples per
sequence, mixture shares realised vs the recipe's target per source, dropped samples by reason.
The chart ids and bar/point counts follow pack_report.json one to one (tests/test_report_browser.py counts them).
"""
from __future__ import annotations

import json
import os
from typing import Any

from vlmloom.schemas import charts

MAX_POINTS = 4000  # beyond this, the fill-per-sequence chart shows every k-th sequence (the histogram has all)


def fill_points(num_tokens: list[int], seq_len: int) -> list[float]:
    fills = [n / seq_len for n in num_tokens]
    step = max(1, -(-len(fills) // MAX_POINTS))
    return fills[::step]


def render_pack_html(report: dict[str, Any], num_tokens: list[int]) -> str:
    """`num_tokens`: tokens of each packed sequence, in written order (the packed manifest's column)."""
    L = report["seq_len"]
    body = [charts.cards([("sequences", report["sequences"]), ("samples packed", report["samples_packed"]),
                          ("fill efficiency", f"{100 * report['fill_efficiency']:.2f}%"),
                          ("lower bound", report["lower_bound_sequences"]), ("tokens", report["tokens"]),
                          ("label tokens", report["label_tokens"]), ("dropped", report["dropped"]),
                          ("truncated", report["truncated"]), ("seq_len", L)])]
    points = fill_points(num_tokens, L)
    note = "" if len(points) == len(num_tokens) else f"every {-(-len(num_tokens) // MAX_POINTS)}-th sequence"
    h = report["histograms"]
    body.append("<h2>Fill</h2><section><div class='charts'>"
                + charts.points_chart("fill_per_sequence", f"Fill of each sequence (tokens / {L})" +
                                      (f", {note}" if note else ""), points, y_max=1.0)
                + charts.histogram_chart("sequence_fill", "Sequences by fill", h["sequence_fill"])
                + "</div></section>")
    body.append("<h2>Lengths</h2><section><div class='charts'>"
                + charts.histogram_chart("sample_length", "Sample length (tokens)", h["sample_length"])
                + charts.histogram_chart("samples_per_sequence", "Samples per sequence", h["samples_per_sequence"])
                + "</div></section>")

    sources = report["sources"]
    names = list(sources)
    series = {"realised share": [sources[n]["realised_share"] for n in names]}
    if any(sources[n]["target_share"] is not None for n in names):
        series["recipe target"] = [sources[n]["target_share"] or 0.0 for n in names]
    body.append("<h2>Mixture</h2><section><div class='charts'>"
                + charts.grouped_bar_chart("mixture", "Token share per source", names, series) + "</div>"
                + charts.table(["source", "samples used / usable", "multiplier", "tokens used", "realised share",
                                "target share"],
                               [(n, f"{s['samples_used']} / {s['usable']}", f"x{s['multiplier']:.3f}", s["tokens_used"],
                                 f"{100 * s['realised_share']:.2f}%",
                                 "—" if s["target_share"] is None else f"{100 * s['target_share']:.2f}%")
                                for n, s in sources.items()]) + "</section>")

    dropped = report["dropped_by_reason"]
    body.append("<h2>Dropped samples</h2><section>" + (
        charts.bar_chart("dropped", "Dropped samples by reason", list(dropped), list(dropped.values()),
                         color=charts.DROPPED_COLOR) if dropped else "<p>none dropped</p>") + "</section>")
    rendering = report.get("rendering")
    if rendering:
        body.append("<h2>Rendering</h2><section>" + charts.table(
            ["rendered as", "by kind"],
            [("chat", json.dumps(rendering["chat"])), ("document", json.dumps(rendering["document"])),
             ("chat turns unusable (trained as documents)", json.dumps(rendering["turns_unusable"])),
             ("left out of chat turns", f"{rendering['text_left_out']} texts, {rendering['boxes_left_out']} boxes")])
            + "</section>")
    body.append("<h2>Details</h2><section><details><summary>recipe, balance, config</summary><pre>"
                + charts.esc(json.dumps({k: report.get(k) for k in ("recipe", "recipe_hash", "balance", "config",
                                                                    "config_hash", "tokenizer")},
                                        indent=1, sort_keys=True, default=str)) + "</pre></details></section>")
    return charts.page("vlmloom pack report", "".join(body))


def write_pack_html(path: str, report: dict[str, Any], num_tokens: list[int]) -> None:
    """Write the page at `path` (schemas/packed.report_html_path) atomically (a staging directory is renamed into
    place later; this just avoids half files)."""
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        fh.write(render_pack_html(report, num_tokens))
    os.replace(path + ".tmp", path)
