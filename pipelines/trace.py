"""`vlmloom trace`: one record's whole history, from its raw input through every curation decision to its
place in the packed output, or why it was dropped.

    vlmloom trace KEY         --curated curated/ [--packed packed/] [--json]   # a curated key
    vlmloom trace SOURCE_ID   --curated curated/ [--packed packed/]            # a raw source id (every source)
    vlmloom trace SHARD:INDEX --curated curated/ --packed packed/             # entry INDEX (0-based) of a
                                                                               # packed shard, e.g. 00000.tar:3

WHAT + curated DIR (+ packed DIR) → {"what", "matched", "sequence"?, "samples": [history, ...]}; a history holds
    raw          source, source id, origin (file#member or FILE:LINE), the source's input path from report.json
    curation     kept (shard, each stage's decision with its config hash and the signals it wrote) or dropped
                 (the stages it passed, then stage, reason, detail and structured fields)
    duplicates   the kept representative it duplicated, and the records that duplicated it
    packed       every sequence holding it (shard, entry, sample position, token span, labelled tokens),
                 or the pack step's rejection

Lookups read the tables once and filter them by key or source id; only the one curated shard that holds a kept
key and the packed shards of its sequences are opened. Every read goes through Beam's FileSystems, so local and
object-store directories (gs://, s3://, ...) work alike. Both layouts are read through their one reader:
schemas/curated.py and schemas/packed.py.
"""
from __future__ import annotations

import argparse
import io
import json
import posixpath
import re
import sys
from typing import Any, Iterator

import numpy as np
import pyarrow.compute as pc

from vlmloom.pipelines.files import BEAM_FILES
from vlmloom.schemas import curated as curated_layout, packed as packed_layout
from vlmloom.schemas.packed import IGNORE_INDEX, PART_SEPARATOR, document_key
from vlmloom.schemas.records import RecordError
from vlmloom.schemas.signals import ORIGIN_SIGNAL, SIGNALS

_SEQUENCE_REF = re.compile(r"^(?P<shard>[^:/\\]+?):(?P<index>\d+)$")


class TraceError(ValueError):
    """WHAT names nothing in the given directories, or a directory is not a finished output."""


def representative_key(rejection: dict[str, Any]) -> str | None:
    """The kept representative a dedup rejection names, or None when the rejection is not a duplicate.

    Structured `fields` first (a dedup stage that records its representative there), then the detail
    "duplicate of KEY" that pipelines/dedup.py writes. The one place that knows how a rejection names it."""
    fields = _fields(rejection)
    for name in ("representative", "representative_key", "duplicate_of"):
        if fields.get(name):
            return str(fields[name])
    if rejection.get("reason", "").endswith(("duplicate", "duplicate_image", "duplicate_text")):
        match = re.search(r"\bduplicate of ([A-Za-z0-9_-]+)", rejection.get("detail") or "")
        if match:
            return match.group(1)
    return None


def _fields(rejection: dict[str, Any]) -> dict[str, Any]:
    try:
        value = json.loads(rejection.get("fields") or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _require_success(directory: str, what: str) -> None:
    layout = curated_layout if what == "curate" else packed_layout
    if not layout.is_finished(directory, BEAM_FILES):
        marker = posixpath.basename(layout.success_path(directory, BEAM_FILES))
        raise TraceError(f"{directory}: no {marker}; not a finished {what} output "
                         f"(pass the directory `vlmloom {what} --output` wrote)")


class CuratedIndex:
    """A curated directory's manifest and rejections, indexed by key and by source id."""

    def __init__(self, directory: str):
        _require_success(directory, "curate")
        self.dir = directory
        self.kept: dict[str, dict[str, Any]] = {r["key"]: r
                                                for r in curated_layout.read_manifest(directory, BEAM_FILES)}
        self.rejected: dict[str, list[dict[str, Any]]] = {}
        self.by_source_id: dict[str, set[str]] = {}
        self.duplicated_by: dict[str, list[dict[str, Any]]] = {}
        for row in self.kept.values():
            self.by_source_id.setdefault(row["source_id"], set()).add(row["key"])
        for row in curated_layout.read_rejections(directory, BEAM_FILES):
            self.rejected.setdefault(row["key"], []).append(row)
            self.by_source_id.setdefault(row["source_id"], set()).add(row["key"])
            rep = representative_key(row)
            if rep:
                self.duplicated_by.setdefault(rep, []).append(row)
        report = curated_layout.read_report(directory, BEAM_FILES) or {}
        self.stage_order = [row["stage"] for row in report.get("funnel", []) if row.get("in") is not None]
        self.input_paths = {i.get("name", ""): i.get("path", "") for i in report.get("config", {}).get("inputs", [])}

    def sample_json(self, key: str) -> dict[str, Any] | None:
        """The Sample JSON of a kept key, read from the one shard the manifest names (image bytes skipped)."""
        return curated_layout.read_sample_json(self.dir, self.kept[key]["shard"], key, BEAM_FILES)

    def fate(self, key: str) -> str:
        if key in self.kept:
            return f"kept in {curated_layout.shard_label(self.kept[key]['shard'])}"
        rows = self.rejected.get(key)
        return f"dropped at {rows[0]['stage']}: {rows[0]['reason']}" if rows else "not in this curated output"


class PackedIndex:
    """A packed directory's manifest (as an Arrow table, filtered by compute kernels) and its rejections."""

    def __init__(self, directory: str):
        _require_success(directory, "pack")
        self.dir = directory
        self.manifest = packed_layout.read_manifest(directory, BEAM_FILES)
        self.rejected: dict[str, list[dict[str, Any]]] = {}
        for row in packed_layout.read_rejections(directory, BEAM_FILES):
            self.rejected.setdefault(row["key"], []).append(row)
        self._entries: dict[str, dict[str, Any]] = {}

    def sequence_ref(self, what: str) -> tuple[str, int] | None:
        """(shard file, entry index) when WHAT is SHARD:INDEX of a shard in this packed output."""
        match = _SEQUENCE_REF.match(what)
        if not match:
            return None
        shard = match["shard"] if match["shard"].endswith(".tar") else match["shard"] + ".tar"
        shards = set(self.manifest.column("shard").to_pylist())
        return (shard, int(match["index"])) if shard in shards else None

    def rows_of_shard(self, shard: str) -> list[dict[str, Any]]:
        """The shard's sequences in written order (keys grow in write order, so sorting by key gives it)."""
        rows = self.manifest.filter(pc.equal(self.manifest.column("shard"), shard)).to_pylist()
        return sorted(rows, key=lambda r: r["key"])

    def sequences_with(self, key: str) -> list[dict[str, Any]]:
        """Manifest rows of the sequences that hold `key` or its parts (several when a mixture upsampled its source
        or pack split the document)."""
        column = self.manifest.column("sample_keys")
        flat = pc.list_flatten(column)
        parents = pc.list_parent_indices(column)
        hit = pc.or_(pc.equal(flat, key), pc.starts_with(flat, key + PART_SEPARATOR))
        rows = sorted(set(pc.filter(parents, hit).to_pylist()))
        return [self.manifest.slice(i, 1).to_pylist()[0] for i in rows]

    def sequence(self, row: dict[str, Any]) -> dict[str, Any]:
        """One sequence: its place and, per sample, the token span and labelled tokens (read from its shard)."""
        if row["key"] in self._entries:
            return self._entries[row["key"]]
        index = [r["key"] for r in self.rows_of_shard(row["shard"])].index(row["key"])
        members = self._entry_members(row["shard"], index, row["key"])
        labels = np.load(io.BytesIO(members["labels.npy"]), allow_pickle=False)
        seq_lens = np.load(io.BytesIO(members["seq_lens.npy"]), allow_pickle=False).tolist()
        samples, at = [], 0
        for position, (sample_key, source, n) in enumerate(zip(row["sample_keys"], row["sources"], seq_lens)):
            samples.append({"position": position, "key": sample_key, "source": source, "token_start": at,
                            "token_end": at + n, "tokens": n,
                            "labelled_tokens": int(np.count_nonzero(labels[at:at + n] != IGNORE_INDEX))})
            at += n
        entry = {"shard": row["shard"], "index": index, "sequence_key": row["key"], "seq_len": int(labels.size),
                 "num_tokens": row["num_tokens"], "num_label_tokens": row["num_label_tokens"],
                 "num_images": row["num_images"], "fill": round(row["num_tokens"] / max(1, labels.size), 4),
                 "samples": samples}
        self._entries[row["key"]] = entry
        return entry

    def _entry_members(self, shard: str, index: int, key: str) -> dict[str, bytes]:
        """The label and length arrays of entry `index` of `shard` (other members are passed over)."""
        try:
            return packed_layout.entry_members(self.dir, shard, index, key, ("labels.npy", "seq_lens.npy"),
                                               BEAM_FILES)
        except RecordError as exc:
            raise TraceError(str(exc)) from exc


# ----------------------------------------------------------------------------------------------
def trace(what: str, curated_dir: str, packed_dir: str | None = None) -> dict[str, Any]:
    """WHAT (a curated key, a raw source id, or SHARD:INDEX with a packed dir) → its history (module docstring)."""
    curated = CuratedIndex(curated_dir)
    packed = PackedIndex(packed_dir) if packed_dir else None
    ref = packed.sequence_ref(what) if packed else None
    if ref is not None:
        shard, index = ref
        rows = packed.rows_of_shard(shard)
        if index >= len(rows):
            raise TraceError(f"{what}: shard {shard} holds {len(rows)} sequences (entries 0..{len(rows) - 1})")
        sequence = packed.sequence(rows[index])
        return {"what": what, "matched": "packed_sequence", "sequence": sequence,
                "samples": [history(document_key(s["key"]), curated, packed) for s in sequence["samples"]]}
    if what in curated.kept or what in curated.rejected:
        matched, keys = "key", [what]
    elif what in curated.by_source_id:
        matched, keys = "source_id", sorted(curated.by_source_id[what])
    else:
        hint = " or SHARD:INDEX of a packed sequence" if packed else " (SHARD:INDEX needs --packed)"
        raise TraceError(f"{what!r} is neither a key nor a source id in {curated_dir}{hint}; "
                         "`vlmloom inspect DIR` lists some keys")
    return {"what": what, "matched": matched, "samples": [history(k, curated, packed) for k in keys]}


def history(key: str, curated: CuratedIndex, packed: PackedIndex | None) -> dict[str, Any]:
    """One key's history across the curated (and packed) output."""
    kept = curated.kept.get(key)
    rejections = curated.rejected.get(key, [])
    if kept is None and not rejections:
        return {"key": key, "fate": "not in the curated output (packed from another curated directory?)",
                "packed": _placements(key, packed)}
    first = kept or rejections[0]
    out: dict[str, Any] = {"key": key, "source": first["source"], "source_id": first["source_id"]}
    raw = {"source": first["source"], "source_id": first["source_id"],
           "input": curated.input_paths.get(first["source"], "")}
    if kept is not None:
        sample = curated.sample_json(key) or {}
        signals = json.loads(kept["signals"] or "{}")
        raw["origin"] = signals.get(ORIGIN_SIGNAL, "")
        out.update(kind=kept["kind"], fate=curated.fate(key), raw=raw,
                   curation={"kept": True, "shard": kept["shard"], "stages": _stages_of_kept(sample, signals),
                             "text": (sample.get("text") or "")[:200]})
        # other raw records read under the same key (`duplicate_key`) lost to this one
        out["same_key_rejected"] = [_rejection(r) for r in rejections]
        if sample.get("videos"):
            out["videos"] = [_video_frames(v) for v in sample["videos"]]
    else:
        rejection = rejections[0]
        raw["origin"] = _fields(rejection).get(ORIGIN_SIGNAL, "")
        passed = curated.stage_order[:curated.stage_order.index(rejection["stage"])] \
            if rejection["stage"] in curated.stage_order else []
        out.update(fate=curated.fate(key), raw=raw,
                   curation={"kept": False, "passed": passed, "dropped": _rejection(rejection)})
    out["duplicates"] = _duplicates(key, rejections if kept is None else [], curated)
    if packed is not None:
        out["packed"] = _placements(key, packed)
        if key in packed.rejected:
            out["pack_rejected"] = [_rejection(r) for r in packed.rejected[key]]
    return out


def _video_frames(video: dict[str, Any]) -> dict[str, Any]:
    """What decodes of a kept clip and the frames GLM-4.1V sees of it (processor defaults, schemas/video.py)."""
    from vlmloom.schemas.video import VideoSizeError, plan_video

    out = {k: video.get(k) for k in ("uri", "codec", "width", "height", "fps", "duration", "frame_count",
                                     "claimed_frames")}
    try:
        plan = plan_video(video["frame_count"], video["fps"], video["width"], video["height"])
    except (VideoSizeError, KeyError) as exc:
        return out | {"unplannable": str(exc)}
    return out | {"sampled_frames": list(plan.frame_indices), "timestamps": list(plan.timestamps),
                  "resized": [plan.resized_height, plan.resized_width], "grid_thw": list(plan.grid_thw),
                  "image_tokens": plan.num_tokens}


def _stages_of_kept(sample: dict[str, Any], signals: dict[str, Any]) -> list[dict[str, Any]]:
    """Each lineage entry with the signals its stage wrote (schemas/signals.py says which stage writes which);
    signals no stage of the lineage owns (custom judges') go in a first `read` entry; the origin is in `raw`."""
    stages = [{"stage": e["stage"], "config_hash": e["config_hash"], "decision": e["decision"], "signals": {}}
              for e in sample.get("lineage") or []]
    by_stage = {s["stage"]: s for s in stages}
    rest = {}
    for name, value in sorted(signals.items()):
        if name == ORIGIN_SIGNAL:
            continue
        owner = SIGNALS.get(name)
        if owner is not None and owner.stage in by_stage:
            by_stage[owner.stage]["signals"][name] = value
        else:
            rest[name] = value
    if rest:
        stages.insert(0, {"stage": "read", "config_hash": "", "decision": "read", "signals": rest})
    return stages


def _rejection(row: dict[str, Any]) -> dict[str, Any]:
    return {"stage": row["stage"], "reason": row["reason"], "detail": row.get("detail") or "",
            "fields": _fields(row), "source_id": row["source_id"]}


def _duplicates(key: str, own_rejections: list[dict[str, Any]], curated: CuratedIndex) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for row in own_rejections:
        rep = representative_key(row)
        if rep:
            rep_row = curated.kept.get(rep) or (curated.rejected.get(rep) or [{}])[0]
            origin = json.loads(rep_row["signals"] or "{}").get(ORIGIN_SIGNAL, "") if rep in curated.kept else ""
            out["representative"] = {"key": rep, "source_id": rep_row.get("source_id", ""), "origin": origin,
                                     "fate": curated.fate(rep), "stage": row["stage"], "reason": row["reason"],
                                     "fields": _fields(row),
                                     "cluster": sorted(r["key"] for r in curated.duplicated_by.get(rep, []))}
    if curated.duplicated_by.get(key):
        out["duplicated_by"] = [{"key": r["key"], **_rejection(r)} for r in curated.duplicated_by[key]]
    return out


def _placements(key: str, packed: PackedIndex | None) -> list[dict[str, Any]]:
    if packed is None:
        return []
    placements = []
    for row in packed.sequences_with(key):
        sequence = packed.sequence(row)
        for sample in sequence["samples"]:
            if sample["key"] == key or document_key(sample["key"]) == key:  # the sample, or a part of it
                placements.append({k: sequence[k] for k in ("shard", "index", "sequence_key", "seq_len")}
                                  | {k: v for k, v in sample.items() if k != "key"}
                                  | ({"part_key": sample["key"]} if sample["key"] != key else {}))
    return placements


# ----------------------------------------------------------------------------------------------
def render(result: dict[str, Any]) -> str:
    """The human-readable history (`--json` prints `result` itself)."""
    lines: list[str] = []
    sequence = result.get("sequence")
    if sequence:
        lines.append(f"packed sequence {sequence['shard']}:{sequence['index']} (key {sequence['sequence_key']}): "
                     f"{len(sequence['samples'])} samples, {sequence['num_tokens']}/{sequence['seq_len']} tokens "
                     f"(fill {sequence['fill']:.1%}), {sequence['num_label_tokens']} labelled, "
                     f"{sequence['num_images']} images")
        for s in sequence["samples"]:
            lines.append(f"  [{s['position']}] tokens {s['token_start']}-{s['token_end']} ({s['labelled_tokens']} "
                         f"labelled)  {s['key']}  ({s['source']})")
        lines.append("")
    for sample in result["samples"]:
        lines.extend(_render_history(sample))
        lines.append("")
    return "\n".join(lines).rstrip()


def _render_history(h: dict[str, Any]) -> Iterator[str]:
    yield f"{h['key']}  {h['fate']}"
    raw = h.get("raw")
    if raw:  # a dropped record's origin is not stored: its source id within the source's input names it
        where = raw.get("origin") or f"record {raw['source_id']!r} of {raw.get('input') or 'its input'}"
        relative = raw.get("origin") and not raw["origin"].startswith("/") and "://" not in raw["origin"]
        yield f"  raw input   {where}  (source {raw['source']!r}, source id {raw['source_id']!r}" + \
            (f", input {raw['input']})" if relative and raw.get("input") else ")")
    curation = h.get("curation")
    if curation and curation["kept"]:
        yield f"  curation    kept → {curated_layout.shard_label(curation['shard'])}  kind {h.get('kind')}"
        for stage in curation["stages"]:
            signals = " ".join(f"{k}={_short(v)}" for k, v in stage["signals"].items())
            yield f"    {stage['stage']:<16}{stage['config_hash'][:12]:<14}{stage['decision']:<12}{signals}".rstrip()
    elif curation:
        if curation["passed"]:
            yield f"  passed      {', '.join(curation['passed'])}"
        d = curation["dropped"]
        yield f"  dropped     {d['stage']}: {d['reason']}  {d['detail']}"
        if d["fields"]:
            yield f"    fields    {json.dumps(d['fields'], sort_keys=True)}"
    for i, v in enumerate(h.get("videos", [])):
        yield (f"  video {i}     {v['frame_count']} frames decode (container says {v['claimed_frames']}) at "
               f"{v['fps']:g} fps, {v['duration']:.2f} s, {v['width']}x{v['height']} {v['codec']}")
        if "sampled_frames" in v:
            yield (f"    GLM-4.1V  frames {v['sampled_frames']} at {v['resized'][1]}x{v['resized'][0]}, grid "
                   f"{tuple(v['grid_thw'])}, {v['image_tokens']} image tokens, timestamps {v['timestamps']} s")
    for r in h.get("same_key_rejected", []):
        yield f"  same key    another record {r['reason']} ({r['stage']}): {r['detail']}"
    dup = h.get("duplicates", {})
    if "representative" in dup:
        rep = dup["representative"]
        extra = f"  {json.dumps(rep['fields'], sort_keys=True)}" if rep["fields"] else ""
        yield f"  duplicate   of {rep['key']} (source id {rep['source_id']!r}; {rep['fate']}){extra}"
        if rep["origin"]:
            yield f"    its raw input {rep['origin']}"
        others = [k for k in rep["cluster"] if k != h["key"]]
        if others:
            yield f"    also dropped as its duplicates: {', '.join(others)}"
    for d in dup.get("duplicated_by", []):
        yield f"  duplicated  by {d['key']} (source id {d['source_id']!r}; dropped at {d['stage']}: {d['reason']})"
    for p in h.get("packed", []):
        part = f" as part {p['part_key']}" if p.get("part_key") else ""
        yield (f"  packed      {p['shard']}:{p['index']} (sequence {p['sequence_key']}) sample {p['position']}{part}, "
               f"tokens {p['token_start']}-{p['token_end']} of {p['seq_len']}, {p['labelled_tokens']} labelled")
    for r in h.get("pack_rejected", []):
        yield f"  not packed  {r['stage']}: {r['reason']}  {r['detail']}"
    if "packed" in h and not h["packed"] and not h.get("pack_rejected") and h.get("curation", {}).get("kept"):
        yield "  not packed  (not selected by the packed output's recipe or kind filter)"


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vlmloom trace", description=__doc__.split("\n\n")[0])
    parser.add_argument("what", help="a curated key, a raw source id, or SHARD:INDEX of a packed sequence")
    parser.add_argument("--curated", required=True, help="the curated directory (`vlmloom curate --output`)")
    parser.add_argument("--packed", help="the packed directory (`vlmloom pack --output`)")
    parser.add_argument("--json", action="store_true", help="print the history as JSON")
    args = parser.parse_args(argv)
    try:
        result = trace(args.what, args.curated, args.packed)
    except TraceError as exc:
        print(f"vlmloom trace: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1, sort_keys=True, ensure_ascii=False) if args.json else render(result))
    return 0
