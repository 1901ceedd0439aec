"""The shared pieces of the input readers (curation/formats/, one module per format): raw webdataset and folder
records → Samples, manifest rows → Samples, field checks, the key-uniqueness rule.

Pure Python over file objects, no Beam: `pipelines/sources.py` opens the files through Beam's FileSystems and
calls the registered readers. Whatever the bytes, every raw record yields exactly one `Sample` or one
`Rejection` with a specific reason, and nothing here raises on input data:

  archive      `unsafe_member_path` (absolute/`..`/link member), `duplicate_member`, `member_too_large`,
               `truncated_input` (the archive ends inside a member or header, or without its end marker),
               `empty_input`, `corrupt_member` (a `.gz` member that does not decompress),
               `corrupt_archive` (an invalid header after valid members), `not_an_archive`
  text/json    `text_not_utf8`, `invalid_json`, `json_too_deep`, `record_not_object`, `meta_not_object`,
               `caption_not_text`, `invalid_field` (a field of the wrong type), `unknown_kind`, `unknown_role`
  content      `empty_record` (no text, no image, no messages, no segments), `missing_url`, `invalid_url`
  files        `missing_image_file`, `unsafe_image_path` (a path leaving its folder), `read_error`,
               `corrupt_parquet`, `unreadable_file`, `not_coco`

`resolve_shared_key` decides between records that share one key (`duplicate_key` for byte-identical copies,
`renamed_key` for different records).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import posixpath
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator
from zlib import error as zlib_error

from vlmloom.curation.decode import TextDecodeError, decode_text
from vlmloom.curation import video
from vlmloom.schemas.records import KINDS, ImageRef, Message, Rejection, Sample, Segment, make_key
from vlmloom.schemas.signals import ORIGIN_SIGNAL, RAW_DIGEST_SIGNAL, RENAMED_SIGNAL
from vlmloom.schemas.tars import MemberStream, RefusedMember, group_members, split_member_name

READ_STAGE = "read"
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
TEXT_EXTENSIONS = ("txt", "caption")
MAX_MEMBER_BYTES = 256 * 2**20  # a single tar member larger than this is refused (member_too_large)
MAX_JSON_DEPTH = 64  # metadata nested deeper than this is refused (json_too_deep): no real corpus needs more
DUPLICATE_KEY = "duplicate_key"


class InvalidRecord(ValueError):
    """A raw record that cannot become a Sample; carries the reason code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def printable(text: str) -> str:
    """Names decoded with surrogateescape (non-UTF-8 file names) → valid UTF-8 text for Parquet/JSON."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def is_unsafe_member(name: str) -> bool:
    """Absolute paths and any `..` component are refused (tar path traversal)."""
    if name.startswith("/") or name.startswith("\\") or ":" in name.split("/")[0][1:2]:
        return True
    return any(part == ".." for part in name.replace("\\", "/").split("/"))


def split_file_name(name: str) -> tuple[str, str]:
    """Folder convention: key = path up to the *last* dot (`holiday.2020.01.jpg` → `holiday.2020.01`, `jpg`)."""
    dirname, base = posixpath.split(name)
    if "." not in base.lstrip("."):
        return name, ""
    stem, ext = base.rsplit(".", 1)
    return (posixpath.join(dirname, stem) if dirname else stem), ext.lower()


@dataclass
class RawRecord:
    """The members of one webdataset sample (or one folder record), before interpretation."""
    source_id: str
    files: dict[str, bytes]  # ext -> bytes ("jpg", "1.png", "txt", "json")
    uri: str
    member_uris: dict[str, str] = field(default_factory=dict)  # ext -> where it was read; default `uri.ext`
    # ext -> (local file, offset, length) where the member's bytes lie unchanged (ImageRef.span); uncompressed
    # local tars and local folder files only
    spans: dict[str, tuple[str, int, int]] = field(default_factory=dict)


# --- tars -------------------------------------------------------------------------------------------------

def iter_tar_records(fileobj, uri: str, local_file: str | None = None) -> Iterator[RawRecord | tuple[str, str, str]]:
    """Stream a tar: yield one RawRecord per key (consecutive members sharing it), or one
    (source_id, reason, detail) for a key that cannot be read whole: a refused member refuses the record,
    and a record open when the archive is cut or corrupt is refused with that reason (records before are kept).
    An archive that yields no record and fails is one (`<basename>:<tar>`, reason, detail).

    `local_file`: the local file `fileobj` reads byte for byte from its start; given (and the tar is not
    compressed), each record's `spans` say where its members' bytes lie in it."""
    stream = MemberStream(fileobj, local_file=local_file, max_member_bytes=MAX_MEMBER_BYTES,
                          is_unsafe=is_unsafe_member, name_of=printable)
    failure, open_key = stream.failure, stream.open_key

    def record(key: str, files: dict) -> RawRecord | tuple[str, str, str]:
        refused = [value for value in files.values() if isinstance(value, RefusedMember)]
        if refused:  # the whole record is refused, with the first refused member's reason
            reason = refused[0].reason
            return (key, reason, f"tar {uri}: member(s) {[r.name for r in refused]} " + _REASON_TEXT[reason])
        return RawRecord(key, {ext: m.data for ext, m in files.items()}, f"{uri}#{key}",
                         spans={ext: m.span for ext, m in files.items() if m.span})

    pending = None  # one group of lookahead: the group open when the stream fails is refused with the failure
    for key, files in group_members(stream):
        if pending is not None:
            yield record(*pending)
        pending = (key, files)
    if not failure:
        if pending is not None:
            yield record(*pending)
        return
    reason, detail = failure[0]
    if not open_key:  # nothing was read: the file itself is the record
        yield (f"{printable(posixpath.basename(uri))}:<tar>", reason, f"{uri}: {detail}")
        return
    cut = None if pending is None or pending[0] != open_key[0] else record(*pending)
    if pending is not None and cut is None:
        yield record(*pending)  # complete: the stream failed on the next record's first member
    if isinstance(cut, tuple):  # a refused member's reason names the member: keep it
        yield cut
    else:
        yield (open_key[0], reason, f"tar {uri}: record {open_key[0]!r}: {detail}")


_REASON_TEXT = {
    "unsafe_member_path": "escape the archive (absolute path or '..') or are not regular files",
    "member_too_large": f"exceed {MAX_MEMBER_BYTES} bytes",
    "duplicate_member": "appear more than once in the record",
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
        out.append((index, ext, data))
    return sorted(out, key=lambda x: (x[0], x[1]))


# --- field checks: each raises InvalidRecord with a specific reason -------------------------------------------

def _depth(value: Any) -> int:
    """Nesting depth of a JSON-like value, iteratively (never recurses)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > MAX_JSON_DEPTH:
            return deepest
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def _has_surrogates(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return False


def parse_json(raw: bytes | str, where: str) -> Any:
    """Bytes of a JSON document → value; InvalidRecord for bad encoding, syntax, nesting or lone surrogates."""
    # Nesting is bounded *before* parsing: the decoder recurses, and 100k '[' would overflow the stack.
    text = _text(raw, where)
    if _bracket_depth(text) > MAX_JSON_DEPTH:
        raise InvalidRecord("json_too_deep", f"{where}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        value = json.loads(text)
    except RecursionError:
        raise InvalidRecord("json_too_deep", f"{where}: JSON nested too deeply to parse") from None
    except ValueError as exc:  # JSONDecodeError, and int-digit limits
        raise InvalidRecord("invalid_json", f"{where}: {str(exc)[:200]}") from None
    if _has_surrogates(value):
        raise InvalidRecord("text_not_utf8", f"{where}: JSON string escapes a lone UTF-16 surrogate")
    return value


def _bracket_depth(text: str) -> int:
    """Upper bound on JSON nesting (brackets inside strings count too: a bound, not a parse)."""
    depth = deepest = 0
    for char in text:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _text(raw: bytes | str, where: str) -> str:
    try:
        return decode_text(raw) or ""
    except TextDecodeError as exc:
        raise InvalidRecord("text_not_utf8", f"{where}: {exc}") from None


def _optional_str(value: Any, name: str, where: str, reason: str = "invalid_field") -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise InvalidRecord(reason, f"{where}: field {name!r} is {type(value).__name__}, expected a string")


def _list_of_objects(value: Any, name: str, where: str) -> list[dict]:
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, dict) for v in value):
        raise InvalidRecord("invalid_field", f"{where}: field {name!r} must be a list of objects")
    return list(value)


def _check_meta(meta: Any, where: str) -> dict[str, Any]:
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise InvalidRecord("meta_not_object", f"{where}: metadata is {type(meta).__name__}, expected an object")
    if _depth(meta) > MAX_JSON_DEPTH:
        raise InvalidRecord("json_too_deep", f"{where}: metadata nested deeper than {MAX_JSON_DEPTH} levels")
    if _has_surrogates(meta):
        raise InvalidRecord("text_not_utf8", f"{where}: metadata holds a lone UTF-16 surrogate")
    return meta


def sample_from_meta(source: str, source_id: str, text: str | None, meta: dict[str, Any],
                     images: list[ImageRef], default_kind: str, where: str = "", answer_lists: bool = False) -> Sample:
    """Build a Sample from the common metadata fields (kind, messages, segments, answer, domain, text).
    Raises InvalidRecord naming the field when a field has the wrong type. `answer_lists` (benchmarks): a list
    of accepted answers stays in meta only, the Sample has no single answer."""
    where = where or source_id
    meta = _check_meta(meta, where)
    kind = meta.get("kind") or default_kind
    if not isinstance(kind, str) or kind not in KINDS:
        raise InvalidRecord("unknown_kind", f"{where}: unknown kind {kind!r}; expected one of {KINDS}")
    if text is None:
        text = meta.get("text") if meta.get("text") is not None else meta.get("caption")
        text = _optional_str(text, "caption", where, reason="caption_not_text")
    messages = []
    for m in _list_of_objects(meta.get("messages"), "messages", where):
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise InvalidRecord("invalid_field", f"{where}: messages need string 'role' and 'content'")
        messages.append(Message(role, content))
    segments = []
    for s in _list_of_objects(meta.get("segments"), "segments", where):
        index = s.get("image_index")
        if not isinstance(s.get("type"), str) or (index is not None and (type(index) is not int)):
            raise InvalidRecord("invalid_field", f"{where}: segments need a string 'type' and an int 'image_index'")
        segments.append(Segment(s["type"], _optional_str(s.get("text"), "segments.text", where), index))
    answer = meta.get("answer")
    if answer_lists and isinstance(answer, list) and all(isinstance(a, (str, int, float)) for a in answer):
        answer = None
    if answer is not None and not isinstance(answer, (str, int, float)):
        raise InvalidRecord("invalid_field", f"{where}: field 'answer' is {type(answer).__name__}")
    domain = _optional_str(meta.get("domain"), "domain", where)
    sample = Sample(
        key=make_key(source, source_id), source=source, source_id=source_id, kind=kind, images=images,
        segments=segments, text=text, messages=messages,
        answer=None if answer is None else str(answer), domain=domain, meta=meta,
    )
    try:
        return sample.validate()
    except ValueError as exc:
        raise InvalidRecord("invalid_field", f"{where}: {exc}") from None


# --- webdataset and folder records ----------------------------------------------------------------------------

def record_to_sample(raw: RawRecord, source: str, default_kind: str = "caption",
                     fields: dict[str, str] | None = None,
                     count: Callable[[str], None] = lambda code: None,
                     answer_lists: bool = False) -> Sample | Rejection:
    """Interpret one webdataset or folder record; bad members become a Rejection with a specific reason.
    `fields`: `text`/`image` name the member extension to read them from; `count` receives
    `ignored_member:<ext>` for members nothing uses or carries."""
    source_id = printable(raw.source_id)
    try:
        sample = _record_to_sample(raw, source, source_id, default_kind, fields or {}, count, answer_lists)
    except InvalidRecord as exc:
        return Rejection(make_key(source, source_id), source, source_id, READ_STAGE, exc.reason, printable(exc.detail))
    sample.signals[ORIGIN_SIGNAL] = printable(raw.uri)
    return sample


# Members carried into meta as their text (JSON members as their value) when no stage reads them: labels,
# ids, extra captions. Other members nothing reads (`.npy`, `.mp`, `.seg.png`, ...) are counted.
CARRIED_TEXT_EXTENSIONS = ("cls", "cls2", "label", "labels", "id", "key", "url", "txt", "caption", "text", "md",
                           "html", "csv", "tsv", "json")


def _gunzipped(data: bytes, where: str) -> bytes:
    """A `.gz` member's content, at most MAX_MEMBER_BYTES (a decompression bomb is refused, not expanded)."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as fh:
            out = fh.read(MAX_MEMBER_BYTES + 1)
    except (OSError, EOFError, zlib_error) as exc:
        raise InvalidRecord("corrupt_member", f"{where}: not a valid gzip stream ({type(exc).__name__}: {exc})") \
            from None
    if len(out) > MAX_MEMBER_BYTES:
        raise InvalidRecord("member_too_large", f"{where}: decompresses to more than {MAX_MEMBER_BYTES} bytes")
    return out


def _record_to_sample(raw: RawRecord, source: str, source_id: str, default_kind: str,
                      fields: dict[str, str] | None = None, count: Callable[[str], None] = lambda code: None,
                      answer_lists: bool = False) -> Sample:
    fields = fields or {}

    def where(ext: str) -> str:
        return printable(raw.member_uris.get(ext) or f"{raw.uri}.{ext}")

    files = dict(raw.files)
    for ext in sorted(e for e in raw.files if e.endswith(".gz")):  # `.txt.gz` is read as `.txt`
        inner = ext[:-3]
        if inner in files:
            count(f"ignored_member:{ext}")  # the plain copy is read; the compressed one is not read twice
        else:
            files[inner] = _gunzipped(files[ext], where(ext))
        del files[ext]
    used: set[str] = set()
    text = None
    for ext in ((fields["text"],) if fields.get("text") else TEXT_EXTENSIONS):
        if ext in files:
            text = _text(files[ext], where(ext))
            used.add(ext)
            break
    meta: Any = {}
    if "json" in files:
        meta = parse_json(files["json"], where("json")) if files["json"].strip() else {}
        if not isinstance(meta, dict):
            raise InvalidRecord("meta_not_object", f"{where('json')}: top level is {type(meta).__name__}, "
                                                   "expected an object")
        used.add("json")
    image_files = _image_files(files)
    if fields.get("image"):
        image_files = [(0, ext, data) for _, ext, data in image_files if ext == fields["image"]]
    images = [ImageRef(bytes=data, uri=where(ext), span=raw.spans.get(ext) if ext in raw.files else None)
              for _, ext, data in image_files]
    used.update(ext for _, ext, _ in image_files)
    videos = video.video_members(files, where, raw.spans)  # a record with a video member is kind video
    used.update(ext for ext in files if _is_video_member(ext))
    for ext in sorted(set(files) - used):
        carried = _carried_member(ext, files[ext])
        if carried is None or ext in meta:
            count(f"ignored_member:{ext}")
        else:
            meta = {**meta, ext: carried[0]}
    sample = sample_from_meta(source, source_id, text, meta, images, "video" if videos else default_kind,
                              where=printable(raw.uri), answer_lists=answer_lists)
    sample.videos = videos
    return sample


def _is_video_member(ext: str) -> bool:
    """The members video.video_members reads (`mp4`, `1.webm`, ...)."""
    parts = ext.split(".")
    return parts[-1] in video.VIDEO_EXTENSIONS and (len(parts) == 1 or (len(parts) == 2 and parts[0].isdigit()))


def _carried_member(ext: str, data: bytes) -> tuple[Any] | None:
    """(value,) to carry into meta for a text member (`.cls` → its text, `.meta.json` → its value), else None."""
    last = ext.rsplit(".", 1)[-1]
    if last not in CARRIED_TEXT_EXTENSIONS:
        return None
    try:
        text = decode_text(data) or ""
    except TextDecodeError:
        return None
    if last == "json":
        try:
            return (parse_json(text, ext),)
        except InvalidRecord:
            return None
    return (text,)


def group_folder_files(paths: Iterable[str], root: str) -> dict[str, dict[str, str]]:
    """Image folder: group files by their path relative to root up to the *last* dot → {id: {ext: path}}.
    (The webdataset first-dot rule is for tars: in folders `holiday.2020.01.jpg` is its own record.)"""
    groups: dict[str, dict[str, str]] = {}
    for path in sorted(paths):
        rel = posixpath.relpath(path.replace("\\", "/"), root.replace("\\", "/"))
        key, ext = split_file_name(rel)
        if ext:
            groups.setdefault(key, {})[ext] = path
    return {k: v for k, v in groups.items() if any(e in IMAGE_EXTENSIONS or e in video.VIDEO_EXTENSIONS for e in v)}


# --- manifests (Parquet rows, JSONL lines) ---------------------------------------------------------------------

def parse_jsonl_line(line: bytes | str, where: str) -> dict[str, Any]:
    """One JSONL line → its object; InvalidRecord for bad text, JSON, nesting or a non-object."""
    value = parse_json(line, where)
    if not isinstance(value, dict):
        raise InvalidRecord("record_not_object", f"{where}: line is a JSON {type(value).__name__}, expected an object")
    return value


def row_source_id(row: dict[str, Any], fallback: str) -> str:
    """The row's own id (`id`, else `key`) verbatim; rows without one are named by file and position."""
    for name in ("id", "key"):
        value = row.get(name)
        if value is None or value == "":
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            return fallback  # an id of the wrong type is reported by row_to_sample
        return printable(str(value))
    return fallback


def check_relative_path(path: str, allowed_root: str = "") -> str | None:
    """Why a manifest `image_path` may not be read (it leaves the manifest's folder), or None.

    Relative paths must stay inside the folder; absolute paths and URLs only under `allowed_root`."""
    normalized = path.replace("\\", "/")
    if "\0" in normalized:
        return "contains a NUL byte"
    if "://" in normalized or normalized.startswith("/") or normalized[1:3] == ":/":
        if not allowed_root:
            return "is absolute or a URL (set inputs[].image_root to allow one root for such paths)"
        root = allowed_root.rstrip("/") + "/"
        if any(part == ".." for part in normalized.split("/")) or not normalized.startswith(root):
            return f"is outside inputs[].image_root {allowed_root!r}"
        return None
    if any(part == ".." for part in normalized.split("/")):
        return "leaves the manifest's folder ('..')"
    return None


def row_to_sample(row: Any, source: str, row_index: int, open_relative: Callable[[str], bytes],
                  default_kind: str = "caption", fallback_id: str | None = None,
                  image_root: str = "") -> Sample | Rejection:
    """Interpret one Parquet/JSONL manifest row: `id|key`, `image_bytes` or `image_path`, `caption|text`,
    optional `kind` and `meta` (JSON string or object). Rows without an id are named `fallback_id`
    (default `row:<index>`); `open_relative(path)` reads an image path that `check_relative_path` allows."""
    fallback = fallback_id or f"row:{row_index}"
    if not isinstance(row, dict):
        return Rejection(make_key(source, fallback), source, fallback, READ_STAGE, "record_not_object",
                         f"{fallback}: row is {type(row).__name__}, expected an object")
    source_id = row_source_id(row, fallback)
    try:
        sample = _row_to_sample(row, source, source_id, fallback, open_relative, default_kind, image_root)
    except InvalidRecord as exc:
        return Rejection(make_key(source, source_id), source, source_id, READ_STAGE, exc.reason, printable(exc.detail))
    sample.signals[ORIGIN_SIGNAL] = fallback
    return sample


MANIFEST_COLUMNS = ("id", "key", "image_bytes", "image_path", "video_bytes", "video_path", "caption", "text", "kind",
                    "meta")


def _carried_columns(extra: dict[str, Any], count: Callable[[str], None]) -> dict[str, Any]:
    """Extra manifest columns for meta; binary values are not carried but counted `ignored_field:<name>`."""
    out = {}
    for name, value in extra.items():
        if isinstance(value, (bytes, bytearray, memoryview)):
            count(f"ignored_field:{name}")
        elif value is not None:
            out[str(name)] = value if isinstance(value, (str, int, float, bool, list, dict)) else str(value)
    return out


def _row_to_sample(row: dict[str, Any], source: str, source_id: str, where: str,
                   open_relative: Callable[[str], bytes], default_kind: str, image_root: str,
                   count: Callable[[str], None] = lambda code: None, answer_lists: bool = False) -> Sample:
    for name in ("id", "key"):
        value = row.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
            raise InvalidRecord("invalid_field", f"{where}: field {name!r} is {type(value).__name__}, "
                                                 "expected a string or an integer")
    meta = row.get("meta")
    if isinstance(meta, (bytes, bytearray, str)):
        meta = parse_json(meta, f"{where} meta") if meta.strip() else {}
    meta = _check_meta(meta, f"{where} meta")
    # Columns the manifest does not name are carried into meta (the meta column's own keys win); `kind`,
    # `messages`, `segments`, `answer`, `domain` columns mean what they mean in meta.
    extra = {name: value for name, value in row.items() if name not in MANIFEST_COLUMNS}
    if extra:
        meta = {**_check_meta(_carried_columns(extra, count), f"{where} columns"), **meta}
    if row.get("kind") is not None:
        meta = {**meta, "kind": row["kind"]}
    text = row.get("caption") if row.get("caption") is not None else row.get("text")
    if isinstance(text, (bytes, bytearray)):
        text = _text(bytes(text), where)
    text = _optional_str(text, "caption", where, reason="caption_not_text")
    if text is not None and _has_surrogates(text):
        raise InvalidRecord("text_not_utf8", f"{where}: caption holds a lone UTF-16 surrogate")
    images: list[ImageRef] = []
    data, path = row.get("image_bytes"), row.get("image_path")
    if data is not None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidRecord("invalid_field", f"{where}: field 'image_bytes' is {type(data).__name__}, expected bytes")
        images.append(ImageRef(bytes=bytes(data), uri=where))
    elif path is not None and path != "":
        if not isinstance(path, str):
            raise InvalidRecord("invalid_field", f"{where}: field 'image_path' is {type(path).__name__}, expected a string")
        if _has_surrogates(path):
            raise InvalidRecord("text_not_utf8", f"{where}: image_path holds a lone UTF-16 surrogate")
        why = check_relative_path(path, image_root)
        if why:
            raise InvalidRecord("unsafe_image_path", f"{where}: image_path {path!r} {why}")
        try:
            images.append(ImageRef(bytes=open_relative(path), uri=path))
        except InvalidRecord:
            raise
        except (OSError, ValueError) as exc:
            raise InvalidRecord("missing_image_file", f"{where}: {path}: {type(exc).__name__}: {exc}") from None
    videos = video.video_refs_from_row(row, where, open_relative, image_root)  # video_bytes / video_path
    sample = sample_from_meta(source, source_id, text, meta, images, "video" if videos else default_kind, where=where,
                              answer_lists=answer_lists)
    sample.videos = videos
    return sample


def read_bytes(fileobj) -> bytes:
    buf = io.BytesIO()
    while True:
        chunk = fileobj.read(1 << 20)
        if not chunk:
            return buf.getvalue()
        buf.write(chunk)


# --- one key, one sample ---------------------------------------------------------------------------------------

def content_digest(sample: Sample) -> str:
    """sha256 of what a sample says (kind, text, fields, metadata, image bytes), not of where it was read."""
    h = hashlib.sha256()
    fields = [sample.kind, sample.text, sample.answer, sample.domain,
              [(m.role, m.content) for m in sample.messages],
              [(s.type, s.text, s.image_index) for s in sample.segments]]
    h.update(json.dumps(fields, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    h.update(json.dumps(sample.meta, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8", "surrogatepass"))
    for image in sample.images:
        data = image.load_bytes() or b""  # held, or read back from its input file (ImageRef.span)
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def choose_key_winner(samples: Iterable[Sample]) -> tuple[Sample, list[Rejection]]:
    """Samples sharing one key → (the one kept, Rejections of the others naming it).

    The winner is the smallest (content sha256, origin): the same whatever order a runner delivers them in.
    Identical copies (same content) are rejected too: one key, one sample. (Kept for callers that must keep
    exactly one; the pipeline's rule is `resolve_shared_key`.)"""
    ranked = sorted(((content_digest(s), str(s.signals.get(ORIGIN_SIGNAL, "")), i, s)
                     for i, s in enumerate(samples)), key=lambda x: x[:2])
    digest, origin, _, winner = ranked[0]
    rejections = []
    for other_digest, other_origin, _, sample in ranked[1:]:
        same = "an identical copy" if other_digest == digest else f"different content (sha256 {other_digest[:12]})"
        detail = (f"key {sample.key} (source id {sample.source_id!r}) also read from {origin or '?'}, which is kept "
                  f"(smallest content sha256 {digest[:12]}, then origin); this record at {other_origin or '?'} "
                  f"is {same}")
        rejections.append(Rejection.of(sample, READ_STAGE, DUPLICATE_KEY, detail))
    return winner, rejections


RENAMED_KEY = "renamed_key"


def raw_digest_of(sample: Sample) -> str:
    """The raw record's sha256 its reader recorded (`raw_sha256`), else the sha256 of what the sample says."""
    return str(sample.signals.get(RAW_DIGEST_SIGNAL) or content_digest(sample))


def renamed_key(sample: Sample, digest: str) -> str:
    """The key of a record whose source key other records with different content share: the same source and
    source id, plus its raw digest (deterministic, and distinct for each distinct raw record)."""
    return make_key(sample.source, f"{sample.source_id}\x00raw:{digest}")


# What the key-uniqueness step reads of a record (its metadata row, never the sample): (raw sha256, origin, the key
# it takes if its key must be renamed). And what it decides for a record, when anything: (RENAMED_KEY, new key, "",
# "") or (DUPLICATE_KEY, the kept copy's key ("" = its own key), the kept copy's origin, raw sha256).
SharedKeyRow = tuple[str, str, str]
SharedKeyDecision = tuple[str, str, str, str]


def shared_key_row(sample: Sample) -> SharedKeyRow:
    digest = raw_digest_of(sample)
    return digest, str(sample.signals.get(ORIGIN_SIGNAL, "")), renamed_key(sample, digest)


def shared_key_decisions(rows: list[SharedKeyRow]) -> list[tuple[int, SharedKeyDecision | None]]:
    """The rows of the records read under one key → (row index, decision) for every row, None = kept as it is.

    Byte-identical raw records (same raw sha256) are one record: the copy with the smallest origin is kept, the
    others are `duplicate_key`, naming it. Records with different raw content are all kept: when there are several,
    each takes its own key (`renamed_key`). Ordered by raw sha256, then origin, then row index (the order
    `resolve_shared_key` returns them in). Decided by content and origin only, so every runner agrees."""
    by_digest: dict[str, list[tuple[str, int, str]]] = {}
    for index, (digest, origin, renamed) in enumerate(rows):
        by_digest.setdefault(digest, []).append((origin, index, renamed))
    rename = len(by_digest) > 1
    out: list[tuple[int, SharedKeyDecision | None]] = []
    for digest in sorted(by_digest):
        copies = sorted(by_digest[digest], key=lambda c: c[:1])
        origin, index, renamed = copies[0]
        out.append((index, (RENAMED_KEY, renamed, "", "") if rename else None))
        for _, other, _ in copies[1:]:
            out.append((other, (DUPLICATE_KEY, renamed if rename else "", origin, digest)))
    return out


def apply_shared_key_decision(sample: Sample, decision: SharedKeyDecision) -> Sample | Rejection:
    """A record and its key-uniqueness decision → the sample (renamed: the old key in `renamed_from`) or its
    `duplicate_key` Rejection, naming the copy that is kept."""
    action, kept_key, kept_origin, digest = decision
    if action == RENAMED_KEY:
        sample.signals[RENAMED_SIGNAL] = sample.key
        sample.key = kept_key
        return sample
    origin = str(sample.signals.get(ORIGIN_SIGNAL, ""))
    detail = (f"key {sample.key} (source id {sample.source_id!r}) also read from {kept_origin or '?'}, kept as "
              f"{kept_key or sample.key}; this record at {origin or '?'} is an identical copy of it (the same raw "
              f"record: raw sha256 {digest[:12]} of its line bytes, tar members or row values)")
    return Rejection.of(sample, READ_STAGE, DUPLICATE_KEY, detail)


def resolve_shared_key(samples: Iterable[Sample]) -> tuple[list[Sample], list[Rejection]]:
    """Samples read under one key → (those kept, `duplicate_key` Rejections), by `shared_key_decisions` (the rule
    the pipeline applies to metadata rows, pipelines/keys.py)."""
    samples = list(samples)
    kept, rejections = [], []
    for index, decision in shared_key_decisions([shared_key_row(s) for s in samples]):
        result = samples[index] if decision is None else apply_shared_key_decision(samples[index], decision)
        (rejections if isinstance(result, Rejection) else kept).append(result)
    return kept, rejections
