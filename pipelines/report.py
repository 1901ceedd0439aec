"""The curation report: funnel per stage (in, kept, dropped by reason), accounting, histograms, HTML page.

Built from what the job wrote (manifest.parquet, rejected/) and Beam's counters, not from separate
bookkeeping: the funnel's drops are the rejection rows, and `read/records` (every raw record the
sources saw) must equal kept + rejected.
"""
from __future__ import annotations

import base64
import collections
import html
import io
import json
import tarfile
from typing import Any

import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from vlmloom.schemas import formats
from vlmloom.schemas.config import to_dict


class AccountingError(RuntimeError):
    pass


def _read_table(path: str):
    with FileSystems.open(path) as fh:
        return pq.read_table(io.BytesIO(fh.read()))


def _histogram(values: list[float], edges: list[float]) -> dict[str, int]:
    counts = collections.Counter()
    for v in values:
        label = f">={edges[-1]:g}"
        for lo, hi in zip(edges, edges[1:]):
            if lo <= v < hi:
                label = f"{lo:g}-{hi:g}"
                break
        counts[label] += 1
    return dict(sorted(counts.items(), key=lambda kv: float(kv[0].lstrip(">=").split("-")[0])))


def build_report(out_dir: str, stage_names: list[str], counters: dict[str, int], config, seconds: float) -> dict[str, Any]:
    manifest = _read_table(FileSystems.join(out_dir, formats.MANIFEST_FILE)).to_pylist()
    rejected = _read_table(FileSystems.join(out_dir, formats.REJECTED_DIR, "rejected.parquet")).to_pylist()
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
        "histograms": {
            "width": _histogram([r["width"] for r in manifest], [0, 128, 256, 512, 1024, 2048]),
            "height": _histogram([r["height"] for r in manifest], [0, 128, 256, 512, 1024, 2048]),
            "text_chars": _histogram([r["text_chars"] for r in manifest], [0, 16, 64, 256, 1024, 4096]),
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
                            "histogram": _histogram(clip, [-1, 0, 0.1, 0.2, 0.3, 0.4, 0.5])}
    for name in ("ocr_char_accuracy", "ocr_lines", "grounding_boxes"):
        values = [s[name] for s in signals if name in s]
        if values:
            sections[name] = {"count": len(values), "mean": round(sum(values) / len(values), 4)}
    choices = collections.Counter(s["text_choice"] for s in signals if "text_choice" in s)
    if choices:
        sections["recaption"] = dict(choices)
    return sections


def _rejection_sections(rejected: list[dict[str, Any]]) -> dict[str, Any]:
    """Contamination hits per benchmark, from the rejection details (`benchmark=NAME item_id=ID ...`)."""
    hits: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for row in rejected:
        if row["stage"] == "contamination" and row["reason"].startswith("benchmark_"):
            fields = dict(part.split("=", 1) for part in row["detail"].split() if "=" in part)
            hits[fields.get("benchmark", "?")][row["reason"]] += 1
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
        lines.append(f"{name}: {json.dumps(section, sort_keys=True)}")
    return "\n".join(lines)


def _thumbnails(out_dir: str, limit: int = 12) -> list[tuple[str, str]]:
    """(key, data URL) of the first images in the first shard."""
    from PIL import Image

    match = FileSystems.match([FileSystems.join(out_dir, formats.SHARDS_DIR, "*.tar")])[0].metadata_list
    if not match:
        return []
    out = []
    with FileSystems.open(sorted(m.path for m in match)[0]) as fh, tarfile.open(fileobj=io.BytesIO(fh.read())) as tar:
        for member in tar:
            base = member.name.split("/")[-1]
            if base.count(".") == 1 and base.rsplit(".", 1)[1] in ("jpg", "png", "webp"):
                img = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
                img.thumbnail((128, 128))
                buf = io.BytesIO()
                img.save(buf, "JPEG", quality=80)
                out.append((base.split(".")[0], "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()))
                if len(out) >= limit:
                    break
    return out


def _thumbnail_url(data: bytes) -> str | None:
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data))
        if img.size[0] * img.size[1] > 50_000_000:
            return None
        img = img.convert("RGB")
        img.thumbnail((96, 96))
    except Exception:  # noqa: BLE001 - a rejected image is often undecodable: it just gets no thumbnail
        return None
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=75)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def rejected_thumbnails(input_paths: dict[str, list[str]], wanted: dict[tuple[str, str], str],
                        max_bytes_scanned: int = 512 * 2**20) -> dict[tuple[str, str], str]:
    """Thumbnails for a few rejected (source, source_id) pairs, read back from webdataset tar inputs.
    Stops when all are found or after `max_bytes_scanned`; records from other input formats get none."""
    from vlmloom.curation import readers

    found: dict[tuple[str, str], str] = {}
    scanned = 0
    for source, paths in sorted(input_paths.items()):
        ids = {sid for (src, sid) in wanted if src == source}
        for path in paths:
            if not ids or scanned > max_bytes_scanned:
                break
            with FileSystems.open(path) as fh:
                for item in readers.iter_tar_records(fh, path):
                    if isinstance(item, tuple) or item.source_id not in ids:
                        continue
                    ids.discard(item.source_id)
                    scanned += sum(len(v) for v in item.files.values())
                    images = [v for k, v in sorted(item.files.items()) if k.split(".")[-1] in readers.IMAGE_EXTENSIONS]
                    url = _thumbnail_url(images[0]) if images else None
                    if url:
                        found[(source, item.source_id)] = url
                    if not ids:
                        break
    return found


def render_html(out_dir: str, report: dict[str, Any], input_paths: dict[str, list[str]] | None = None) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(r['stage'])}</td><td>{r['in']}</td><td>{r['kept']}</td>"
        f"<td>{html.escape(', '.join(f'{k}={v}' for k, v in r['dropped'].items()))}</td></tr>" for r in report["funnel"])
    rejected = _read_table(FileSystems.join(out_dir, formats.REJECTED_DIR, "rejected.parquet")).to_pylist()
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
                     for key, url in _thumbnails(out_dir))
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
