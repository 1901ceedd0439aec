"""The sample record that flows through every curation stage, the rejection record, and their Arrow schemas.

One `Sample` per training example (DESIGN.md, "The sample record"). Records are plain frozen-ish
dataclasses so they pickle cheaply between Beam workers; `to_row`/`from_row` convert to the Arrow
schema used by `manifest.parquet`, `rejected/*.parquet` and the per-sample JSON inside shards.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import operator
import os
import re
import threading
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

KINDS = ("caption", "interleaved", "ocr", "grounding", "gui", "video", "qa")
_KEY_SAFE = re.compile(r"[^A-Za-z0-9_-]+")


class RecordError(ValueError):
    """A record that violates the schema; the message names the record key and the field."""


def make_key(source: str, source_id: str) -> str:
    """Stable, unique, webdataset-safe key from source + source id (no dots: webdataset splits on them)."""
    digest = hashlib.sha1(f"{source}\x00{source_id}".encode("utf-8", "surrogateescape")).hexdigest()[:16]
    prefix = _KEY_SAFE.sub("_", source)[:32] or "src"
    return f"{prefix}-{digest}"


class SourceChanged(OSError):
    """An image's bytes re-read from its input file are not the bytes the job validated (the input changed)."""


@dataclass
class ImageRef:
    sha256: str = ""
    width: int = 0
    height: int = 0
    format: str = ""  # "jpeg", "png", "webp", ...
    bytes: bytes | None = None  # encoded image bytes (None when only `uri` is kept, or while `span` stands in)
    uri: str | None = None  # where the image came from (path, tar member, URL)
    # Where the encoded bytes lie unchanged in a local input file: (path, offset, length). Transport state, not
    # record content (never written, not compared): while it is set, `bytes` may be dropped between steps and
    # read again (`load_bytes`), so a pipeline moves the record's metadata instead of its pixels. Whoever replaces
    # `bytes` with other bytes clears it.
    span: tuple[str, int, int] | None = field(default=None, repr=False, compare=False)

    @property
    def has_bytes(self) -> bool:
        """Are the encoded bytes held or spanned (a shard member), rather than only named by `uri`?"""
        return self.bytes is not None or self.span is not None

    @property
    def nbytes(self) -> int:
        """Length of the encoded image, whether its bytes are held or only spanned."""
        if self.bytes is not None:
            return len(self.bytes)
        return self.span[2] if self.span else 0

    def load_bytes(self) -> bytes | None:
        """The encoded bytes: those held, else read from `span` (not kept: see `attach_bytes`). Raises OSError
        when the file is gone or shorter, SourceChanged when they no longer hash to the `sha256` decode recorded."""
        if self.bytes is not None or self.span is None:
            return self.bytes
        path, offset, length = self.span
        data = _read_range(path, offset, length)
        if len(data) != length:
            raise OSError(f"{path}: {length} bytes expected at offset {offset}, {len(data)} read (file shortened?)")
        if self.sha256 and hashlib.sha256(data).hexdigest() != self.sha256:
            raise SourceChanged(f"{path}: bytes at offset {offset} changed since they were validated (sha256 "
                                f"{self.sha256[:12]}…); the input was modified during the job")
        return data


_OPEN_FILES: "collections.OrderedDict[str, int]" = collections.OrderedDict()  # path → fd, most recent last
_OPEN_FILES_MAX = 32
_OPEN_FILES_LOCK = threading.Lock()


def _read_range(path: str, offset: int, length: int) -> bytes:
    """`length` bytes at `offset` of a local file (fewer at its end), by one pread on a kept-open descriptor:
    spans are read once at decode and once at write, mostly from a few input tars in a row."""
    with _OPEN_FILES_LOCK:
        fd = _OPEN_FILES.pop(path, None)
        if fd is None:
            fd = os.open(path, os.O_RDONLY)
            while len(_OPEN_FILES) >= _OPEN_FILES_MAX:
                os.close(_OPEN_FILES.popitem(last=False)[1])
        _OPEN_FILES[path] = fd
        return os.pread(fd, length, offset)


def attach_bytes(sample: "Sample") -> "Sample":
    """Hold every spanned image's (and video's) bytes (read from its input file) before a step that reads pixels."""
    for image in [*sample.images, *sample.videos]:
        if image.bytes is None and image.span is not None:
            image.bytes = image.load_bytes()
    return sample


def release_bytes(sample: "Sample") -> "Sample":
    """Drop the bytes of images that still lie unchanged in their input file (`span` set): what crosses a shuffle
    is then the record's metadata. Images without a span (embedded in a manifest, re-encoded, remote) keep them."""
    for image in [*sample.images, *sample.videos]:
        if image.span is not None:
            image.bytes = None
    return sample


@dataclass
class VideoRef:
    """One encoded video and what decodes of it (curation/video.py fills the metadata at decode). Its bytes travel
    like an image's: held, or as a `span` of a local input file while they cross the shuffles."""
    sha256: str = ""  # of the encoded bytes: the video's identity for exact dedup
    uri: str | None = None  # where it came from (path, tar member, URL)
    bytes: bytes | None = field(default=None, repr=False)  # the encoded file (None: only `uri`, or `span` stands in)
    format: str = ""  # container, as the shard member's extension: "mp4", "webm", "mkv", "avi", "mov"
    duration: float = 0.0  # seconds of decodable video: frame_count / fps (as transformers' read_video_pyav)
    fps: float = 0.0  # the stream's average frame rate
    width: int = 0
    height: int = 0
    codec: str = ""  # FFmpeg decoder name: "h264", "vp9", ...
    frame_count: int = 0  # frames that decode (GLM-4.1V frame sampling runs on this, not on the container's claim)
    claimed_frames: int = 0  # the container's frame-count metadata (0 when absent); may differ from frame_count
    decode_error: str = ""  # what ended decoding before the container's end ("" when it ended cleanly)
    span: tuple[str, int, int] | None = field(default=None, repr=False, compare=False)  # as ImageRef.span

    has_bytes = ImageRef.has_bytes
    nbytes = ImageRef.nbytes
    load_bytes = ImageRef.load_bytes


@dataclass
class Segment:
    """One piece of an interleaved document: text, or a reference to `images[image_index]`."""
    type: str  # "text" | "image"
    text: str | None = None
    image_index: int | None = None


@dataclass
class Message:
    """A chat turn; images are referenced in order by the `<image>` placeholder in `content`."""
    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass
class OcrLine:
    text: str
    box: list[int]  # [x1, y1, x2, y2], integers in GLM's 0-1000 normalised coordinates
    polygon: list[int] = field(default_factory=list)  # [x1, y1, x2, y2, ...] same coordinates
    score: float = 0.0


@dataclass
class Grounding:
    phrase: str
    box: list[int]  # [x1, y1, x2, y2] in 0-1000 coordinates
    source: str = ""  # "ocr" | "gui" | "detector" | "input"


@dataclass
class Annotations:
    ocr: list[OcrLine] = field(default_factory=list)
    grounding: list[Grounding] = field(default_factory=list)


@dataclass
class LineageEntry:
    stage: str
    config_hash: str
    decision: str  # "kept" | "annotated" | "recaptioned" | ...


@dataclass
class Sample:
    key: str
    source: str
    source_id: str
    kind: str = "caption"
    images: list[ImageRef] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    text: str | None = None
    recaption: str | None = None
    messages: list[Message] = field(default_factory=list)
    answer: str | None = None
    domain: str | None = None
    annotations: Annotations = field(default_factory=Annotations)
    signals: dict[str, Any] = field(default_factory=dict)  # measured values: clip_score, phash, lang, ...
    lineage: list[LineageEntry] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # the input's own metadata (its json), verbatim, for lineage
    videos: list[VideoRef] = field(default_factory=list)  # kind "video": the clip(s); rows written before it had none

    def validate(self) -> "Sample":
        if not self.key or "." in self.key or "/" in self.key:
            raise RecordError(f"record {self.key!r}: field 'key' must be non-empty without '.' or '/'")
        if self.kind not in KINDS:
            raise RecordError(f"record {self.key!r}: field 'kind' is {self.kind!r}, expected one of {KINDS}")
        for i, seg in enumerate(self.segments):
            if seg.type == "image" and (seg.image_index is None or not 0 <= seg.image_index < len(self.images)):
                raise RecordError(f"record {self.key!r}: field 'segments[{i}].image_index' out of range")
            if seg.type not in ("text", "image"):
                raise RecordError(f"record {self.key!r}: field 'segments[{i}].type' is {seg.type!r}")
        for m in self.messages:
            if m.role not in ("system", "user", "assistant"):
                raise RecordError(f"record {self.key!r}: field 'messages.role' is {m.role!r}")
        return self

    def training_text(self) -> str | None:
        """The text this sample trains on: the recaption if the recaption stage chose it, else the original."""
        if self.signals.get("text_choice") == "recaption" and self.recaption:
            return self.recaption
        return self.text

    def with_lineage(self, stage: str, config_hash: str, decision: str) -> "Sample":
        self.lineage.append(LineageEntry(stage, config_hash, decision))
        return self

    def __reduce__(self):
        # Pickled as field values in tuples (`_sample_from_state`), not as one attribute dict per nested record:
        # every sample that waits in a local job is pickled and read back at each wait (pipelines/spill.py), and
        # the field names repeated in each dict cost about a third of the time to pickle it.
        annotations = self.annotations
        return _sample_from_state, (
            _SAMPLE_VALUES(self), [_IMAGE_VALUES(i) for i in self.images],
            [_SEGMENT_VALUES(x) for x in self.segments], [_MESSAGE_VALUES(m) for m in self.messages],
            [_OCR_VALUES(o) for o in annotations.ocr], [_GROUNDING_VALUES(g) for g in annotations.grounding],
            [_LINEAGE_VALUES(e) for e in self.lineage], [_VIDEO_VALUES(v) for v in self.videos])

    # --- Arrow / JSON conversion -------------------------------------------------------------
    def to_row(self, with_bytes: bool = True) -> dict[str, Any]:
        # What dataclasses.asdict gives, without its deep copy of every leaf: this runs once per written sample,
        # and signals/meta become JSON text anyway.
        row = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in ("signals", "meta")}
        for img, image in zip(row["images"], self.images):
            del img["span"]  # transport state, not part of the record (ImageRef.span)
            img["bytes"] = image.load_bytes() if with_bytes else None  # spanned bytes are read, never left out
        for vid, video in zip(row["videos"], self.videos):
            del vid["span"]
            vid["bytes"] = video.load_bytes() if with_bytes else None
        row["signals"] = json.dumps(self.signals, sort_keys=True, default=_json_default)
        row["meta"] = json.dumps(self.meta, sort_keys=True, ensure_ascii=False, default=_json_default)
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "Sample":
        signals = row.get("signals") or "{}"
        meta = row.get("meta") or "{}"
        ann = row.get("annotations") or {}
        return cls(
            key=row["key"],
            source=row["source"],
            source_id=row["source_id"],
            kind=row.get("kind") or "caption",
            images=[ImageRef(**i) for i in row.get("images") or []],
            videos=[VideoRef(**v) for v in row.get("videos") or []],
            segments=[Segment(**s) for s in row.get("segments") or []],
            text=row.get("text"),
            recaption=row.get("recaption"),
            messages=[Message(**m) for m in row.get("messages") or []],
            answer=row.get("answer"),
            domain=row.get("domain"),
            annotations=Annotations(
                ocr=[OcrLine(**o) for o in ann.get("ocr") or []],
                grounding=[Grounding(**g) for g in ann.get("grounding") or []],
            ),
            signals=json.loads(signals) if isinstance(signals, str) else dict(signals),
            lineage=[LineageEntry(**e) for e in row.get("lineage") or []],
            meta=json.loads(meta) if isinstance(meta, str) else dict(meta),
        )

    def to_json(self) -> str:
        """The shard's `key.json`: the whole record without image bytes (they are separate tar members)."""
        return json.dumps(self.to_row(with_bytes=False), sort_keys=True, ensure_ascii=False, default=_json_default)

    @classmethod
    def from_json(cls, text: str, image_bytes: list[bytes] | None = None,
                  video_bytes: list[bytes] | None = None) -> "Sample":
        sample = cls.from_row(json.loads(text))
        for img, data in zip(sample.images, image_bytes or []):
            img.bytes = data
        for video, data in zip(sample.videos, video_bytes or []):
            video.bytes = data
        return sample


def _names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _values_of(cls):
    """obj → its field values in declaration order (a tuple, read in C)."""
    return operator.attrgetter(*_names(cls))


def _maker(cls):
    """Field values in declaration order → the object, without running __init__ (what unpickling does too)."""
    names, new = _names(cls), object.__new__

    def make(values):
        obj = new(cls)
        obj.__dict__.update(zip(names, values))
        return obj

    return make


_SAMPLE_FLAT = tuple(n for n in _names(Sample)
                     if n not in ("images", "segments", "messages", "annotations", "lineage", "videos"))
_SAMPLE_VALUES = operator.attrgetter(*_SAMPLE_FLAT)
_IMAGE_VALUES, _SEGMENT_VALUES, _MESSAGE_VALUES, _OCR_VALUES, _GROUNDING_VALUES, _LINEAGE_VALUES, _VIDEO_VALUES = (
    _values_of(c) for c in (ImageRef, Segment, Message, OcrLine, Grounding, LineageEntry, VideoRef))
_MAKE_IMAGE, _MAKE_SEGMENT, _MAKE_MESSAGE, _MAKE_OCR, _MAKE_GROUNDING, _MAKE_LINEAGE, _MAKE_VIDEO = (
    _maker(c) for c in (ImageRef, Segment, Message, OcrLine, Grounding, LineageEntry, VideoRef))


def _sample_from_state(flat, images, segments, messages, ocr, grounding, lineage, videos) -> Sample:
    """Sample.__reduce__'s inverse."""
    sample = object.__new__(Sample)
    state = dict(zip(_SAMPLE_FLAT, flat))
    state.update(images=[_MAKE_IMAGE(v) for v in images], segments=[_MAKE_SEGMENT(v) for v in segments],
                 messages=[_MAKE_MESSAGE(v) for v in messages],
                 annotations=Annotations([_MAKE_OCR(v) for v in ocr], [_MAKE_GROUNDING(v) for v in grounding]),
                 lineage=[_MAKE_LINEAGE(v) for v in lineage], videos=[_MAKE_VIDEO(v) for v in videos])
    sample.__dict__.update(state)
    return sample


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}  # dataclass → its field names (dataclasses.fields is slow)
_LEAVES = (str, int, float, bool, bytes, type(None))


def _plain(value: Any) -> Any:
    """dataclasses → dicts, lists/tuples/dicts rebuilt, other values shared (they are immutable leaves here)."""
    kind = type(value)
    if kind in _LEAVES:
        return value
    names = _FIELD_NAMES.get(kind)
    if names is None and dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = _FIELD_NAMES.setdefault(kind, _names(kind))
    if names is not None:
        return {name: _plain(getattr(value, name)) for name in names}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


@dataclass
class Rejection:
    """A record that left the pipeline early. `reason` is a stable snake_case code; `detail` is free text for
    people; `fields` is the structured part for programs (a JSON object, "" when empty): the values the judge
    measured for the drop (the dropping Verdict's signals, e.g. `contamination_benchmark`)."""
    key: str
    source: str
    source_id: str
    stage: str
    reason: str
    detail: str = ""
    fields: str = ""

    @classmethod
    def of(cls, sample: "Sample", stage: str, reason: str, detail: str = "",
           fields: dict[str, Any] | None = None) -> "Rejection":
        text = json.dumps(fields, sort_keys=True, default=_json_default) if fields else ""
        return cls(sample.key, sample.source, sample.source_id, stage, reason, detail, text)

    def field_values(self) -> dict[str, Any]:
        return json.loads(self.fields) if self.fields else {}


# ----------------------------------------------------------------------------------------------
IMAGE_TYPE = pa.struct([
    ("sha256", pa.string()), ("width", pa.int32()), ("height", pa.int32()), ("format", pa.string()),
    ("bytes", pa.binary()), ("uri", pa.string()),
])
VIDEO_TYPE = pa.struct([
    ("sha256", pa.string()), ("uri", pa.string()), ("bytes", pa.binary()), ("format", pa.string()),
    ("duration", pa.float64()), ("fps", pa.float64()), ("width", pa.int32()), ("height", pa.int32()),
    ("codec", pa.string()), ("frame_count", pa.int32()), ("claimed_frames", pa.int32()), ("decode_error", pa.string()),
])
SEGMENT_TYPE = pa.struct([("type", pa.string()), ("text", pa.string()), ("image_index", pa.int32())])
MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])
OCR_TYPE = pa.struct([
    ("text", pa.string()), ("box", pa.list_(pa.int32())), ("polygon", pa.list_(pa.int32())), ("score", pa.float32()),
])
GROUNDING_TYPE = pa.struct([("phrase", pa.string()), ("box", pa.list_(pa.int32())), ("source", pa.string())])
LINEAGE_TYPE = pa.struct([("stage", pa.string()), ("config_hash", pa.string()), ("decision", pa.string())])

SAMPLE_SCHEMA = pa.schema([
    ("key", pa.string()), ("source", pa.string()), ("source_id", pa.string()), ("kind", pa.string()),
    ("images", pa.list_(IMAGE_TYPE)), ("segments", pa.list_(SEGMENT_TYPE)),
    ("text", pa.string()), ("recaption", pa.string()), ("messages", pa.list_(MESSAGE_TYPE)),
    ("answer", pa.string()), ("domain", pa.string()),
    ("annotations", pa.struct([("ocr", pa.list_(OCR_TYPE)), ("grounding", pa.list_(GROUNDING_TYPE))])),
    ("signals", pa.string()),  # JSON object: signal names vary by job, so they are not Arrow columns
    ("lineage", pa.list_(LINEAGE_TYPE)),
    ("meta", pa.string()),  # JSON object: the input's own metadata
    ("videos", pa.list_(VIDEO_TYPE)),  # last, so older tables and column orders stay readable (from_row: [] if absent)
])

REJECTION_SCHEMA = pa.schema([
    ("key", pa.string()), ("source", pa.string()), ("source_id", pa.string()),
    ("stage", pa.string()), ("reason", pa.string()), ("detail", pa.string()),
    ("fields", pa.string()),  # JSON object of structured values (Rejection.fields), "" when none
])


def samples_to_table(samples: list[Sample], with_bytes: bool = True) -> pa.Table:
    return pa.Table.from_pylist([s.to_row(with_bytes) for s in samples], schema=SAMPLE_SCHEMA)


def table_to_samples(table: pa.Table) -> list[Sample]:
    return [Sample.from_row(r) for r in table.to_pylist()]


def rejections_to_table(rejections: list[Rejection]) -> pa.Table:
    return pa.Table.from_pylist([dataclasses.asdict(r) for r in rejections], schema=REJECTION_SCHEMA)
