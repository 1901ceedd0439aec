"""The curation report as one HTML page (report.html): funnel, example rejections per reason with thumbnails,
kept samples, histograms, model-stage sections. report.json (report.py) → HTML text.
"""
from __future__ import annotations

import html
import json
from typing import Any


from vlmloom.pipelines.report import read_rejections
from vlmloom.pipelines.thumbnails import kept_thumbnails, rejected_thumbnails


def render_html(out_dir: str, report: dict[str, Any], input_paths: dict[str, list[str]] | None = None) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(r['stage'])}</td><td>{r['in']}</td><td>{r['kept']}</td>"
        f"<td>{html.escape(', '.join(f'{k}={v}' for k, v in r['dropped'].items()))}</td></tr>" for r in report["funnel"])
    rejected = read_rejections(out_dir)
    examples: dict[str, list[dict]] = {}
    for row in rejected:
        if len(examples.setdefault(row["reason"], [])) < 3:
            examples[row["reason"]].append(row)
    wanted = {(r["source"], r["source_id"]): r["reason"] for rows in examples.values() for r in rows}
    thumbs_rejected = rejected_thumbnails(input_paths or {}, wanted)

    def thumb(r):
        url = thumbs_rejected.get((r["source"], r["source_id"]))
        return f'<img src="{url}">' if url else ""

    reject_rows = "".join(
        f"<tr><td>{html.escape(r['reason'])}</td><td>{html.escape(r['stage'])}</td><td>{html.escape(r['source_id'])}</td>"
        f"<td>{html.escape(r['detail'][:200])}</td><td>{thumb(r)}</td></tr>" for rows in examples.values() for r in rows)
    thumbs = "".join(f'<figure><img src="{url}"><figcaption>{html.escape(key)}</figcaption></figure>'
                     for key, url in kept_thumbnails(out_dir))
    hists = "".join(f"<h3>{html.escape(name)}</h3><pre>{html.escape(json.dumps(h, indent=1))}</pre>"
                    for name, h in report["histograms"].items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>vlmloom curation report</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px 8px}}
figure{{display:inline-block;margin:4px;font-size:10px}}</style></head><body>
<h1>Curation report</h1><p>{html.escape(json.dumps(report['accounting']))}</p>
<h2>Funnel</h2><table><tr><th>stage</th><th>in</th><th>kept</th><th>dropped by reason</th></tr>{rows}</table>
<h2>Rejected: examples per reason</h2><table><tr><th>reason</th><th>stage</th><th>source id</th><th>detail</th><th>image</th></tr>{reject_rows}</table>
<h2>Kept samples</h2>{thumbs}<h2>Histograms</h2>{hists}
<h2>Model stages</h2><pre>{html.escape(json.dumps(report.get('sections', {}), indent=1))}</pre>
</body></html>"""
