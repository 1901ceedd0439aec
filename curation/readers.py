"""Turn raw input units (webdataset tars, manifest rows, image folders) into Samples or Rejections.

Pure Python over file objects, no Beam: `pipelines/sources.py` opens the files through Beam's
FileSystems and calls these. Every raw record yields exactly one `Sample` or one `Rejection`
(reason codes: `unsafe_member_path`, `text_not_utf8`, `invalid_json`, `missing_image_file`,
`read_error`), so nothing is lost between the input and the first stage.
"""
from __future__ import annotations

import io
import json
import posixpath
import tarfile
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from vlmloom.curation.decode import TextDecodeError, decode_text
from vlmloom.schemas.records import KINDS, ImageRef, Message, Rejection, Sample, Segment, make_key
from vlmloom.schemas.tars import group_members, split_member_name

READ_STAGE = "read"
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
TEXT_EXTENSIONS = ("txt", "caption")
MAX_MEMBER_BYTES = 256 * 2**20  # a single tar member larger than this is refused (read_error)


def is_unsafe_member(name: str) -> bool:
    """Absolute paths and any `..` component are refused (tar path traversal)."""
    if name.startswith("/") or name.startswith("\\") or ":" in name.split("/")[0][1:2]:
        return True
    return any(part == ".." for part in name.replace("\\", "/").split("/"))


@dataclass
class RawRecord:
    """The members of one webdataset sample (or one manifest row), before interpretation."""
    source_id: str
    files: dict[str, bytes]  # ext -> bytes ("jpg", "1.png", "txt", "json")
    uri: str


def iter_tar_records(fileobj, uri: str) -> Iterator[RawRecord | tuple[str, str, str]]:
    """Stream a tar: yield one RawRecord per key (consecutive members sharing it), or one
    (source_id, reason, detail) for a key with a refused member: the whole record is refused."""
    errors: list[BaseException] = []

    def members():  # (name, bytes | refusal reason); a broken stream ends it and is reported after the last key
        try:
            with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
                for member in tar:
                    if member.isdir():
                        continue
                    if is_unsafe_member(member.name) or not member.isfile():
                        yield member.name, _Refused("unsafe_member_path", member.name)
                    elif member.size > MAX_MEMBER_BYTES:
                        yield member.name, _Refused("read_error", member.name)
                    else:
                        yield member.name, tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError) as exc:
            errors.append(exc)

    for key, files in group_members(members()):
        refused = [value for value in files.values() if isinstance(value, _Refused)]
        if refused:  # the whole record is refused, with the first refused member's reason
            reason = refused[0].reason
            yield (key, reason, f"tar {uri}: member(s) {[r.name for r in refused]} " + _REASON_TEXT[reason])
        else:
            yield RawRecord(key, files, f"{uri}#{key}")
    for exc in errors:
        yield (f"{posixpath.basename(uri)}:<tar>", "read_error", f"{uri}: {type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class _Refused:
    reason: str
    name: str  # the member's name in the tar


_REASON_TEXT = {
    "unsafe_member_path": "escape the archive (absolute path or '..') or are not regular files",
    "read_error": f"exceed {MAX_MEMBER_BYTES} bytes",
}


def _image_files(files: dict[str, bytes]) -> list[tuple[int, str, bytes]]:
    out = []
    for ext, data in files.items():
        parts = ext.split(".")
        if parts[-1] not in IMAGE_EXTENSIONS:
            continue
        if len(parts) == 1:
            index = 0
        elif len(parts) == 2 and parts[0].isdigit():
            index = int(parts[0])
        else:
            continue
        out.append((index, parts[-1], data))
    return sorted(out)


def sample_from_meta(source: str, source_id: str, text: str | None, meta: dict[str, Any],
                     images: list[ImageRef], default_kind: str) -> Sample:
    """Build a Sample from the common metadata fields (kind, messages, segments, answer, domain, text)."""
    kind = meta.get("kind") or default_kind
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    if text is None:
        text = meta.get("text") or meta.get("caption")
    messages = [Message(str(m["role"]), str(m["content"])) for m in meta.get("messages") or []]
    segments = [Segment(str(s["type"]), s.get("text"), s.get("image_index")) for s in meta.get("segments") or []]
    answer = meta.get("answer")
    sample = Sample(
        key=make_key(source, source_id), source=source, source_id=source_id, kind=kind, images=images,
        segments=segments, text=text, messages=messages,
        answer=None if answer is None else str(answer), domain=meta.get("domain"), meta=meta,
    )
    return sample.validate()


def record_to_sample(raw: RawRecord, source: str, default_kind: str = "caption") -> Sample | Rejection:
    """Interpret one webdataset record; bad text/json becomes a Rejection with a reason."""
    key = make_key(source, raw.source_id)

    def reject(reason: str, detail: str) -> Rejection:
        return Rejection(key, source, raw.source_id, READ_STAGE, reason, detail)

    text = None
    for ext in TEXT_EXTENSIONS:
        if ext in raw.files:
            try:
                text = decode_text(raw.files[ext])
            except TextDecodeError as exc:
                return reject("text_not_utf8", f"{raw.uri}.{ext}: {exc}")
            break
    meta: dict[str, Any] = {}
    if "json" in raw.files:
        try:
            meta = json.loads(decode_text(raw.files["json"]) or "{}")
        except (TextDecodeError, json.JSONDecodeError) as exc:
            return reject("invalid_json", f"{raw.uri}.json: {exc}")
        if not isinstance(meta, dict):
            return reject("invalid_json", f"{raw.uri}.json: top level is {type(meta).__name__}, expected an object")
    images = [ImageRef(bytes=data, uri=f"{raw.uri}.{ext}" if index == 0 else f"{raw.uri}.{index}.{ext}")
              for index, ext, data in _image_files(raw.files)]
    try:
        return sample_from_meta(source, raw.source_id, text, meta, images, default_kind)
    except (KeyError, TypeError, ValueError) as exc:
        return reject("invalid_json", f"{raw.uri}: {type(exc).__name__}: {exc}")


def row_to_sample(row: dict[str, Any], source: str, row_index: int, open_relative: Callable[[str], bytes],
                  default_kind: str = "caption") -> Sample | Rejection:
    """Interpret one Parquet/JSONL manifest row: `id|key`, `image_bytes` or `image_path`, `caption|text`,
    optional `kind` and `meta` (JSON string or object)."""
    source_id = str(row.get("id") if row.get("id") is not None else row.get("key", row_index))
    key = make_key(source, source_id)

    def reject(reason: str, detail: str) -> Rejection:
        return Rejection(key, source, source_id, READ_STAGE, reason, detail)

    meta = row.get("meta") or {}
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError as exc:
            return reject("invalid_json", f"row {row_index} meta: {exc}")
    if row.get("kind"):
        meta = {**meta, "kind": row["kind"]}
    text = row.get("caption", row.get("text"))
    if isinstance(text, bytes):
        try:
            text = decode_text(text)
        except TextDecodeError as exc:
            return reject("text_not_utf8", f"row {row_index}: {exc}")
    images: list[ImageRef] = []
    if row.get("image_bytes") is not None:
        images.append(ImageRef(bytes=bytes(row["image_bytes"]), uri=f"row:{row_index}"))
    elif row.get("image_path"):
        path = str(row["image_path"])
        try:
            images.append(ImageRef(bytes=open_relative(path), uri=path))
        except (OSError, IOError) as exc:
            return reject("missing_image_file", f"row {row_index}: {path}: {exc}")
    try:
        return sample_from_meta(source, source_id, text, meta, images, default_kind)
    except (KeyError, TypeError, ValueError) as exc:
        return reject("invalid_json", f"row {row_index}: {type(exc).__name__}: {exc}")


def group_folder_files(paths: Iterable[str], root: str) -> dict[str, dict[str, str]]:
    """Image folder: group files by their path (relative to root) up to the first dot → {id: {ext: path}}."""
    groups: dict[str, dict[str, str]] = {}
    for path in sorted(paths):
        rel = posixpath.relpath(path.replace("\\", "/"), root.replace("\\", "/"))
        key, ext = split_member_name(rel)
        if ext:
            groups.setdefault(key, {})[ext] = path
    return {k: v for k, v in groups.items() if any(e.split(".")[-1] in IMAGE_EXTENSIONS for e in v)}


def read_bytes(fileobj) -> bytes:
    buf = io.BytesIO()
    while True:
        chunk = fileobj.read(1 << 20)
        if not chunk:
            return buf.getvalue()
        buf.write(chunk)
