"""Input formats: a registry of small readers, one module each, that turn one unit of input into Samples or
Rejections (`inputs[].format` names one; `auto` sniffs).

    FORMATS.get("llava").read(unit, context) → Sample | Rejection, ...     (no Beam: pipelines/sources.py
    resolve.plan_units(format, files, root)   → the units workers read       opens files and counts)

A reader declares the fields it uses (`Format.uses`, canonical names); `inputs[].fields` maps them to the names
a file really has (`{text: TEXT, image: img, id: uid}`). Whatever a reader does not use is carried into
`Sample.meta` verbatim or counted per source (`ReadContext.count("ignored_member:npy")`), so nothing is dropped
without a word. Row readers (manifest, hf, urls, llava, mmc4, obelics) share one set of containers (JSONL,
JSON lists, Parquet, CSV/TSV, Arrow IPC of `save_to_disk`); file readers (webdataset, folder, coco) read their
own units.

Every Sample carries `signals["raw_sha256"]`: the sha256 of its raw record (the JSONL line's bytes, the tar
members, the row's values), which the key-uniqueness step (pipelines/keys.py) compares.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import posixpath
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping

from vlmloom.curation import readers
from vlmloom.curation.readers import InvalidRecord, READ_STAGE, printable
from vlmloom.schemas.records import ImageRef, Rejection, Sample, make_key
from vlmloom.schemas.registry import Registry
from vlmloom.schemas.signals import ORIGIN_SIGNAL, RAW_DIGEST_SIGNAL

ROW_EXTENSIONS = ("jsonl", "json", "parquet", "csv", "tsv", "arrow")
FILE_RECORDS = "records"  # per-source count of records (samples + read rejections) an input yielded


@dataclass(frozen=True, kw_only=True)
class ReadContext:
    """What a reader needs of the job and of the file system (pipelines/sources.py fills it in a worker)."""
    source: str  # source name: keys and lineage
    kind: str = "caption"  # kind of records whose data does not say
    fields: Mapping[str, str] = field(default_factory=dict)  # canonical field → the name the input uses
    image_root: str = ""  # folder relative image paths are resolved against (and absolute ones allowed under)
    open: Callable[[str], BinaryIO] = lambda path: open(path, "rb")  # opens a path for reading (Beam FileSystems
    # in a pipeline; local files in binary mode otherwise)
    local_file: Callable[[str], str | None] = lambda path: None  # path → a local file re-readable by offset
    count: Callable[[str], None] = lambda code: None  # per-source count: `ignored_member:npy`, ...
    # An `answer` given as a list (several accepted answers, as VQAv2 has ten) is kept in `meta` with no single
    # `Sample.answer`: True for contamination benchmarks; curate refuses it (a verifier checks one answer).
    answer_lists: bool = False

    def column(self, canonical: str) -> str:
        return self.fields.get(canonical, canonical)


class Format:
    """One input format. Subclasses set `name`, `uses` and implement `read`; row formats implement
    `row_to_sample` and `matches` instead (RowFormat)."""
    name = ""
    uses: tuple[str, ...] = ()  # canonical fields (or members) this format reads; the rest is carried or counted

    def read(self, unit: Any, ctx: ReadContext) -> Iterator[Sample | Rejection]:
        raise NotImplementedError


FORMATS: Registry[Format] = Registry("input format")
ALIASES = {"parquet": "manifest", "jsonl": "manifest", "sharegpt": "llava", "conversations": "llava",
           "datasets": "hf", "laion": "urls"}  # older or common names for a registered format


def register(fmt: Format) -> Format:
    FORMATS.register(fmt.name)(fmt)
    return fmt


def get_format(name: str) -> Format:
    _load_all()
    return FORMATS.get(ALIASES.get(name, name))


def format_names() -> list[str]:
    _load_all()
    return ["auto", *FORMATS.names(), *sorted(ALIASES)]


def _load_all() -> None:
    # One import per module registers its format; imported lazily because they import this package.
    from vlmloom.curation.formats import (coco, conversations, folder, hf, manifest, mmc4, obelics, pdf,  # noqa: F401
                                          urls, webdataset)


# --- shared helpers -----------------------------------------------------------------------------------------

def raw_digest(value: Any) -> str:
    """sha256 of a raw record's values (bytes by their own sha256), order of keys kept as read."""
    def plain(v: Any) -> Any:
        if isinstance(v, (bytes, bytearray, memoryview)):
            return {"$bytes": hashlib.sha256(bytes(v)).hexdigest()}
        if isinstance(v, dict):
            return [[str(k), plain(x)] for k, x in v.items()]
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if v is None or isinstance(v, (str, int, float, bool)):
            return v
        return repr(v)
    text = json.dumps(plain(value), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def bytes_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def carried(value: Any) -> tuple[bool, Any]:
    """(carry it?, the JSON value to carry into meta): bytes are not carried (counted by the caller), other
    non-JSON leaves (dates, decimals) become their text."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return False, None
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            ok, v = carried(v)
            if not ok:
                return False, None
            out[str(k)] = v
        return True, out
    if isinstance(value, (list, tuple)):
        out_list = []
        for v in value:
            ok, v = carried(v)
            if not ok:
                return False, None
            out_list.append(v)
        return True, out_list
    if value is None or isinstance(value, (str, int, float, bool)):
        return True, value
    return True, str(value)


def carry_rest(row: Mapping[str, Any], used: Iterable[str], ctx: ReadContext) -> dict[str, Any]:
    """The columns a reader did not use, for `meta`; binary ones are counted `ignored_field:<name>`."""
    used = set(used)
    meta = {}
    for name, value in row.items():
        if name in used:
            continue
        ok, value = carried(value)
        if ok:
            meta[name] = value
        else:
            ctx.count(f"ignored_field:{name}")
    return meta


def mapped(row: Mapping[str, Any], ctx: ReadContext) -> dict[str, Any]:
    """The row with `inputs[].fields` applied: each mapped column under its canonical name."""
    if not ctx.fields:
        return dict(row)
    renamed = {source: canonical for canonical, source in ctx.fields.items()}
    return {renamed.get(name, name): value for name, value in row.items()}


def finish(sample: Sample, origin: str, digest: str) -> Sample:
    """Checks every reader's Sample passes: not empty (`empty_record`), valid; records origin and raw digest."""
    if not (sample.text or sample.images or sample.videos or sample.messages or sample.segments):
        raise InvalidRecord("empty_record", f"{origin}: no text, no image, no video, no messages and no segments")
    try:
        sample.validate()
    except ValueError as exc:
        raise InvalidRecord("invalid_field", f"{origin}: {exc}") from None
    sample.signals[ORIGIN_SIGNAL] = printable(origin)
    sample.signals[RAW_DIGEST_SIGNAL] = digest
    return sample


def rejection(source: str, source_id: str, reason: str, detail: str) -> Rejection:
    source_id = printable(source_id)
    return Rejection(make_key(source, source_id), source, source_id, READ_STAGE, reason, printable(detail))


def extension(path: str) -> str:
    """`a/b.tar.gz` → `tar.gz`, `x.JSONL` → `jsonl`, `README` → `` (what per-source counts name files by)."""
    base = posixpath.basename(path).lower()
    for double in ("tar.gz", "txt.gz", "json.gz", "jsonl.gz"):
        if base.endswith("." + double):
            return double
    return base.rsplit(".", 1)[1] if "." in base.lstrip(".") else ""


def read_image(path: str, base: str, ctx: ReadContext, where: str) -> ImageRef:
    """A local image named by a record (`image`, `image_path`, `file_name`): relative paths under `base` (no
    `..`), absolute ones only under `inputs[].image_root`, symlinks may not leave either (the manifest rules)."""
    if not isinstance(path, str):
        raise InvalidRecord("invalid_field", f"{where}: image path is {type(path).__name__}, expected a string")
    if readers._has_surrogates(path):
        raise InvalidRecord("text_not_utf8", f"{where}: image path holds a lone UTF-16 surrogate")
    why = readers.check_relative_path(path, ctx.image_root)
    if why:
        raise InvalidRecord("unsafe_image_path", f"{where}: image path {path!r} {why}")
    absolute = "://" in path or path.startswith("/")
    full = path if absolute else posixpath.join(base, path)
    if "://" not in full and not inside(full, ctx.image_root if absolute else base):
        raise InvalidRecord("unsafe_image_path", f"{where}: image path {path!r} resolves (through a symlink) "
                                                 "outside its folder")
    try:
        with ctx.open(full) as fh:
            data = readers.read_bytes(fh)
    except (OSError, ValueError) as exc:
        raise InvalidRecord("missing_image_file", f"{where}: {path}: {type(exc).__name__}: {exc}") from None
    local = ctx.local_file(full)
    return ImageRef(bytes=data, uri=path, span=(local, 0, len(data)) if local else None)


def inside(path: str, root: str) -> bool:
    """Local files only: does `path`, with symlinks resolved, stay under `root`?"""
    real, base = os.path.realpath(path), os.path.realpath(root)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def image_base(path: str, ctx: ReadContext) -> str:
    """Where a row file's relative image paths are resolved: `inputs[].image_root`, else the file's folder."""
    return ctx.image_root.rstrip("/") if ctx.image_root else posixpath.dirname(path)


# --- row containers ---------------------------------------------------------------------------------------------

@dataclass
class Row:
    """One raw row: where it was read (`file.jsonl:LINE`, `file.parquet:rowN`), its values, its raw digest."""
    where: str
    values: Any
    digest: str
    image_columns: frozenset = frozenset()  # columns of HF `Image()` / `Sequence(Image())` type (Arrow files)


def iter_rows(path: str, ctx: ReadContext) -> Iterator[Row | Rejection]:
    """Rows of a JSONL / JSON (a list, or one object) / Parquet / CSV / TSV / Arrow IPC file. A file that cannot
    be read is one Rejection (`unreadable_file`) and is counted `unreadable_file:<ext>`."""
    ext = extension(path)
    name = printable(posixpath.basename(path))
    if ext == "arrow":  # `save_to_disk` of a DatasetDict: train/data-00000-of-00001.arrow, test/data-00000-...
        name = printable(posixpath.join(posixpath.basename(posixpath.dirname(path)), name))
    try:
        if ext == "jsonl":
            yield from _jsonl_rows(path, name, ctx)
            return
        with ctx.open(path) as fh:
            data = readers.read_bytes(fh)
        if ext == "json":
            yield from _json_rows(data, name, ctx.source)
        elif ext in ("csv", "tsv"):
            yield from _csv_rows(data, name, "\t" if ext == "tsv" else ",")
        elif ext in ("parquet", "arrow"):
            yield from _arrow_rows(data, name, ext)
        else:
            raise ValueError(f"not a row file (.{ext})")
    except InvalidRecord as exc:
        ctx.count(f"unreadable_file:{ext}")
        yield rejection(ctx.source, f"{name}:<{ext or 'file'}>", exc.reason, f"{path}: {exc.detail}")
    except Exception as exc:  # noqa: BLE001 - pyarrow/csv raise many types on corrupt files: a rejection
        ctx.count(f"unreadable_file:{ext}")
        reason = "corrupt_parquet" if ext == "parquet" else "unreadable_file"
        yield rejection(ctx.source, f"{name}:<{ext or 'file'}>", reason, f"{path}: {type(exc).__name__}: {exc}")


def _jsonl_rows(path: str, name: str, ctx: ReadContext) -> Iterator[Row | Rejection]:
    with ctx.open(path) as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{name}:{line_no}"
            raw = bytes(line).rstrip(b"\r\n")
            try:
                yield Row(where, readers.parse_json(raw, where), bytes_digest(raw))
            except InvalidRecord as exc:
                yield rejection(ctx.source, where, exc.reason, f"{path} line {line_no}: {exc.detail}")


def _json_rows(data: bytes, name: str, source: str) -> Iterator[Row | Rejection]:
    value = readers.parse_json(data, name)
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise InvalidRecord("record_not_object", f"{name}: top level is {type(value).__name__}, expected a list "
                                                 "of objects or one object")
    for index, item in enumerate(value):
        yield Row(f"{name}:item{index}", item, raw_digest(item))


def _csv_rows(data: bytes, name: str, delimiter: str) -> Iterator[Row | Rejection]:
    text = readers._text(data, name)
    for index, row in enumerate(csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)):
        values = {k: v for k, v in row.items() if k is not None}
        yield Row(f"{name}:row{index}", values, raw_digest(values))


def _arrow_rows(data: bytes, name: str, ext: str) -> Iterator[Row | Rejection]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if ext == "parquet":
        batches = pq.ParquetFile(io.BytesIO(data)).iter_batches(batch_size=256)
    else:  # `save_to_disk` writes Arrow IPC streams
        batches = iter(pa.ipc.open_stream(io.BytesIO(data)))
    index = 0
    for batch in batches:
        image_columns = frozenset(f.name for f in batch.schema if is_image_type(f.type))
        for values in batch.to_pylist():
            yield Row(f"{name}:row{index}", values, raw_digest(values), image_columns)
            index += 1


def is_image_type(arrow_type) -> bool:
    """HF `datasets` image columns: struct<bytes: binary, path: string>, or a list of them (Sequence(Image()))."""
    import pyarrow as pa

    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        arrow_type = arrow_type.value_type
    return pa.types.is_struct(arrow_type) and {arrow_type.field(i).name for i in range(arrow_type.num_fields)} == {
        "bytes", "path"}


class RowFormat(Format):
    """A format whose records are rows of a row file (any container above)."""

    def matches(self, row: dict[str, Any]) -> bool:
        """Does this (mapped) row look like this format? (`auto`, on a file's first row)"""
        return False

    def row_to_sample(self, row: dict[str, Any], where: str, path: str, ctx: ReadContext,
                      image_columns: frozenset = frozenset()) -> Sample:
        """One row (fields already mapped; `image_columns`: those of image type, mapped) → a Sample;
        InvalidRecord names the reason."""
        raise NotImplementedError

    def source_id(self, row: dict[str, Any], where: str) -> str:
        return readers.row_source_id(row, where)

    def read(self, unit: str, ctx: ReadContext) -> Iterator[Sample | Rejection]:
        yield from read_row_file(self, unit, ctx)


def read_row_file(fmt: RowFormat | None, path: str, ctx: ReadContext) -> Iterator[Sample | Rejection]:
    """Every row of `path` as `fmt` reads it (None: the format is sniffed from the file's first row)."""
    for row in iter_rows(path, ctx):
        if isinstance(row, Rejection):
            yield row
            continue
        if not isinstance(row.values, dict):
            yield rejection(ctx.source, row.where, "record_not_object",
                            f"{row.where}: row is a {type(row.values).__name__}, expected an object")
            continue
        values = mapped(row.values, ctx)
        image_columns = frozenset(mapped(dict.fromkeys(row.image_columns), ctx))
        if fmt is None:
            fmt = sniff_row_format(values, image_columns)
        source_id = fmt.source_id(values, row.where)
        try:
            sample = fmt.row_to_sample(values, row.where, path, ctx, image_columns)
            yield finish(sample, row.where, row.digest)
        except InvalidRecord as exc:
            yield rejection(ctx.source, source_id, exc.reason, exc.detail)


def sniff_row_format(row: dict[str, Any], image_columns: frozenset = frozenset()) -> RowFormat:
    """The row format this row is in (manifest when none claims it); Arrow image columns say `hf`."""
    _load_all()
    for name in ("mmc4", "obelics", "hf", "llava", "urls"):
        fmt = FORMATS.get(name)
        if isinstance(fmt, RowFormat) and (fmt.matches(row) or (name == "hf" and image_columns)):
            return fmt
    return FORMATS.get("manifest")  # type: ignore[return-value]


def new_sample(ctx: ReadContext, source_id: str, **values: Any) -> Sample:
    return Sample(key=make_key(ctx.source, source_id), source=ctx.source, source_id=source_id, **values)
