"""Self-contained HTML for the reports: inline SVG charts drawn here, one page shell, no network, no JavaScript
library. Used by the curation report (pipelines/report_html.py) and the pack report (packing/report_html.py),
so it imports neither Beam nor torch.

    histogram([3, 700, 5000], [0, 128, 1024, None])  → {"edges": [0, 128, 1024, None], "counts": [1, 1, 1]}
    bar_chart("width", "Image width", bin_labels(h["edges"]), h["counts"])  → '<figure class="chart" ...><svg>...'
    page("Curation report", body_html)  → a whole HTML document

Every chart is a `<figure class="chart" data-chart=ID data-bars=N>` whose SVG holds one `<rect class="bar">` per
bar (or one `<circle class="point">` per point), so a browser test can count what was drawn against the JSON.
Histogram edges may be None at either end for an open bin ("<0", "≥2048"): negative values are ordinary numbers.
"""
from __future__ import annotations

import bisect
import html
from typing import Sequence

PALETTE = ("#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6", "#9D755D")
KEPT_COLOR, DROPPED_COLOR = "#4C78A8", "#E45756"


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def histogram(values: Sequence[float], edges: Sequence[float | None]) -> dict:
    """Counts of `values` in the bins [edges[i], edges[i+1]); None as the first/last edge opens that end, and a
    value outside closed ends is counted in the nearest bin so no value is left out."""
    inner = [e for e in edges if e is not None]
    if inner != sorted(inner) or len(edges) < 2 or any(e is None for e in edges[1:-1]):
        raise ValueError(f"histogram edges {list(edges)} must be increasing, with None only at the ends")
    counts = [0] * (len(edges) - 1)
    lo = 1 if edges[0] is None else 0  # index in `edges` of the first finite edge
    for v in values:
        i = bisect.bisect_right(inner, float(v)) - 1 + lo  # bin whose lower edge is the last one <= v
        counts[min(max(i, 0), len(counts) - 1)] += 1
    return {"edges": list(edges), "counts": counts}


def edge_label(value: float) -> str:
    """A bin edge as a reader writes it: whole numbers in full (8192, 1048576, never 1.04858e+06), others short."""
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.3g}"


def bin_labels(edges: Sequence[float | None]) -> list[str]:
    labels = []
    for lo, hi in zip(edges, edges[1:]):
        if lo is None:
            labels.append(f"<{edge_label(hi)}")
        elif hi is None:
            labels.append(f"≥{edge_label(lo)}")
        else:
            labels.append(f"{edge_label(lo)}–{edge_label(hi)}")
    return labels


def _figure(chart_id: str, title: str, svg: str, bars: int, note: str = "") -> str:
    return (f'<figure class="chart" id="chart-{esc(chart_id)}" data-chart="{esc(chart_id)}" data-bars="{bars}">'
            f"<figcaption>{esc(title)}</figcaption>{svg}"
            + (f'<p class="note">{esc(note)}</p>' if note else "") + "</figure>")


def bar_chart(chart_id: str, title: str, labels: Sequence[str], values: Sequence[float], *, color: str = KEPT_COLOR,
              value_format: str = "{:g}", note: str = "") -> str:
    """Vertical bars, one per label, value printed above each."""
    n = len(values)
    longest = max([len(str(label)) for label in labels] + [1])
    spill = min(longest, 40) * 5  # rotated labels reach right and down past their bar
    width, height, left, bottom, top = max(320, 24 + 56 * n + spill), 190 + spill, 40, 16 + spill, 18
    plot_h = height - bottom - top
    vmax = max([float(v) for v in values] + [1e-12])
    slot = (width - left - 10 - spill) / max(n, 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 10 - spill}" y2="{top + plot_h}" class="axis"/>']
    for i, (label, value) in enumerate(zip(labels, values)):
        h = plot_h * float(value) / vmax if vmax > 0 else 0
        x = left + i * slot + slot * 0.15
        y = top + plot_h - h
        parts.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{slot * 0.7:.1f}" height="{h:.1f}" '
                     f'fill="{color}" data-label="{esc(label)}" data-value="{esc(value)}">'
                     f"<title>{esc(label)}: {esc(value_format.format(value))}</title></rect>")
        parts.append(f'<text x="{x + slot * 0.35:.1f}" y="{y - 3:.1f}" class="value">'
                     f"{esc(value_format.format(value))}</text>")
        parts.append(f'<text x="{x + slot * 0.35:.1f}" y="{top + plot_h + 14}" class="label" '
                     f'transform="rotate(35 {x + slot * 0.35:.1f} {top + plot_h + 14})">{esc(label)}</text>')
    parts.append("</svg>")
    return _figure(chart_id, title, "".join(parts), n, note)


def histogram_chart(chart_id: str, title: str, hist: dict, **kwargs) -> str:
    return bar_chart(chart_id, title, bin_labels(hist["edges"]), hist["counts"], **kwargs)


def funnel_chart(chart_id: str, title: str, stages: Sequence[tuple[str, int, int]]) -> str:
    """Horizontal bars, one per (stage, kept, dropped): the kept part in blue, what the stage dropped in red."""
    n = len(stages)
    left, bar_h, gap, width = 130, 22, 8, 760
    plot_w = width - left - 150
    vmax = max([k + d for _, k, d in stages] + [1])
    height = 12 + n * (bar_h + gap)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    for i, (stage, kept, dropped) in enumerate(stages):
        y = 6 + i * (bar_h + gap)
        wk, wd = plot_w * kept / vmax, plot_w * dropped / vmax
        parts.append(f'<text x="{left - 8}" y="{y + 15}" class="label" text-anchor="end">{esc(stage)}</text>')
        parts.append(f'<rect class="bar" x="{left}" y="{y}" width="{wk:.1f}" height="{bar_h}" fill="{KEPT_COLOR}" '
                     f'data-label="{esc(stage)}" data-value="{kept}"><title>{esc(stage)}: kept {kept}</title></rect>')
        parts.append(f'<rect class="dropped" x="{left + wk:.1f}" y="{y}" width="{wd:.1f}" height="{bar_h}" '
                     f'fill="{DROPPED_COLOR}"><title>{esc(stage)}: dropped {dropped}</title></rect>')
        parts.append(f'<text x="{left + wk + wd + 6:.1f}" y="{y + 15}" class="label">{kept} kept'
                     + (f", {dropped} dropped" if dropped else "") + "</text>")
    parts.append("</svg>")
    return _figure(chart_id, title, "".join(parts), n)


def grouped_bar_chart(chart_id: str, title: str, labels: Sequence[str], series: dict[str, Sequence[float]],
                      value_format: str = "{:.3f}") -> str:
    """Bars for several series side by side per label (e.g. realised share vs the recipe's target)."""
    names = list(series)
    n = len(labels) * len(names)
    width, height, left, bottom, top = max(360, 60 + 40 * n + 30 * len(labels)), 230, 40, 50, 30
    plot_h = height - bottom - top
    vmax = max([float(v) for s in series.values() for v in s] + [1e-12])
    slot = (width - left - 10) / max(len(labels), 1)
    bw = slot * 0.8 / max(len(names), 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 10}" y2="{top + plot_h}" class="axis"/>']
    for j, name in enumerate(names):
        parts.append(f'<rect x="{left + j * 110}" y="4" width="10" height="10" fill="{PALETTE[j % len(PALETTE)]}"/>'
                     f'<text x="{left + j * 110 + 14}" y="13" class="label">{esc(name)}</text>')
    for i, label in enumerate(labels):
        for j, name in enumerate(names):
            value = float(series[name][i])
            h = plot_h * value / vmax
            x = left + i * slot + slot * 0.1 + j * bw
            parts.append(f'<rect class="bar" x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bw * 0.92:.1f}" '
                         f'height="{h:.1f}" fill="{PALETTE[j % len(PALETTE)]}" data-label="{esc(label)}" '
                         f'data-series="{esc(name)}" data-value="{value}">'
                         f"<title>{esc(label)} {esc(name)}: {esc(value_format.format(value))}</title></rect>")
        parts.append(f'<text x="{left + i * slot + slot / 2:.1f}" y="{top + plot_h + 16}" class="label" '
                     f'text-anchor="middle">{esc(label)}</text>')
    parts.append("</svg>")
    return _figure(chart_id, title, "".join(parts), n)


def points_chart(chart_id: str, title: str, values: Sequence[float], *, y_max: float = 1.0,
                 y_label: str = "") -> str:
    """One point per value in order (e.g. fill of each packed sequence), y from 0 to y_max."""
    n = len(values)
    width, height, left, bottom, top = 760, 200, 44, 24, 12
    plot_w, plot_h = width - left - 10, height - bottom - top
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 10}" y2="{top + plot_h}" class="axis"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" class="axis"/>',
             f'<text x="{left - 4}" y="{top + 8}" class="label" text-anchor="end">{y_max:g}</text>',
             f'<text x="{left - 4}" y="{top + plot_h}" class="label" text-anchor="end">0</text>']
    for i, v in enumerate(values):
        x = left + (i + 0.5) * plot_w / max(n, 1)
        y = top + plot_h - plot_h * min(float(v), y_max) / y_max
        parts.append(f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{KEPT_COLOR}" '
                     f'data-value="{v}"><title>#{i}: {float(v):.4f} {esc(y_label)}</title></circle>')
    parts.append("</svg>")
    return _figure(chart_id, title, "".join(parts), n)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, raw_columns: Sequence[int] = ()) -> str:
    """An HTML table; cells are escaped except in `raw_columns` (already HTML, e.g. thumbnails)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell if i in raw_columns else esc(cell)}</td>"
                                    for i, cell in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def cards(items: Sequence[tuple[str, object]]) -> str:
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="card-value">{esc(v)}</div><div class="card-label">{esc(k)}</div></div>'
        for k, v in items) + "</div>"


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#222;background:#f6f7f9}
main{max-width:1200px;margin:0 auto;padding:24px}
h1{margin:0 0 12px} h2{margin:32px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
section{background:#fff;border-radius:8px;padding:8px 16px 16px;margin-bottom:16px;box-shadow:0 1px 2px #0001}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border-radius:8px;padding:10px 16px;box-shadow:0 1px 2px #0002;min-width:110px}
.card-value{font-size:22px;font-weight:600} .card-label{font-size:12px;color:#666}
.charts{display:flex;flex-wrap:wrap;gap:16px}
figure.chart{margin:0;background:#fff;border:1px solid #eee;border-radius:6px;padding:8px}
figure.chart figcaption{font-weight:600;font-size:13px;margin-bottom:4px}
svg text{font-size:11px;fill:#333} svg text.value{font-size:10px;fill:#555;text-anchor:middle}
svg .axis{stroke:#999} svg rect.bar:hover,svg rect.dropped:hover{opacity:.8}
p.note{font-size:11px;color:#666;margin:2px 0 0}
table{border-collapse:collapse;font-size:13px;margin:6px 0} td,th{border:1px solid #ddd;padding:4px 8px;vertical-align:top}
th{background:#f0f2f5;text-align:left}
.pair{display:flex;gap:8px;align-items:flex-start}
figure.thumb{display:inline-block;margin:4px;font-size:11px;max-width:140px;word-break:break-all}
figure.thumb img{display:block;max-width:128px;max-height:128px;border:1px solid #ccc}
.ok{color:#2a7} .bad{color:#c33} details pre{font-size:11px;max-height:400px;overflow:auto}
"""
# Sets data-images-loaded on <body> once every <img> has decoded (checked by the browser tests).
_IMAGES_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images', String(imgs.length));
  document.body.setAttribute('data-images-loaded', String(ok));
});
"""


def thumb(url: str | None, caption: str = "") -> str:
    img = f'<img src="{esc(url)}" alt="{esc(caption)}">' if url else '<div class="note">(no image)</div>'
    return f'<figure class="thumb">{img}<figcaption>{esc(caption)}</figcaption></figure>'


def page(title: str, body: str) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{_STYLE}</style><script>{_IMAGES_SCRIPT}</script></head>"
            f"<body><main><h1>{esc(title)}</h1>{body}</main></body></html>")
