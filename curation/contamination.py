"""Benchmark contamination: flag training samples whose image or text appears in an evaluation set.

Benchmarks are read by curate's input readers (curation/formats: HF Parquet/save_to_disk, LLaVA/ShareGPT JSON,
webdataset tars, image folders with sidecars, COCO, ...; `load_benchmark`): each record becomes a BenchmarkItem
of its texts (the kinds table's, plus its `question`/`answer(s)` fields) and its images. `ContaminationIndex`
holds, for every benchmark image, a 64-bit pHash, and the hashed normalised 13-grams of every item's texts.
A sample is flagged when
- image: some benchmark pHash is within `max_phash_distance` bits (a vectorised XOR/popcount over
  all items) *and*, when an embedding model is configured, the CLIP image-embedding cosine of the
  pair is ≥ `min_embedding_cosine` (benchmark embeddings are computed only for pHash candidates,
  then cached) → `benchmark_image_duplicate`;
- text: any normalised 13-gram of its text is a 13-gram of a benchmark question or answer
  (benchmark texts shorter than 13 tokens but at least `min_short_tokens` long match whole)
  → `benchmark_text_overlap`.
`detail` reads `benchmark=NAME item_id=ID <evidence>`, so the report can count hits per benchmark.
The index is built per worker in `load_model()`; `cache_dir` keeps it on disk between workers and runs.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from vlmloom.curation import formats
from vlmloom.curation.base import Verdict
from vlmloom.curation.formats import resolve
from vlmloom.schemas.config import ConfigError
from vlmloom.schemas.kinds import sample_texts
from vlmloom.schemas.records import Rejection, Sample
from vlmloom.schemas.signals import ORIGIN_SIGNAL

log = logging.getLogger(__name__)

STAGE = "contamination"
IMAGE_DUPLICATE = "benchmark_image_duplicate"
TEXT_OVERLAP = "benchmark_text_overlap"


@dataclass(frozen=True, kw_only=True)
class BenchmarkSource:
    name: str  # reported in rejection details, e.g. "mmmu_val"
    path: str  # a file or folder in any format curate reads (HF Parquet/save_to_disk, LLaVA JSON, tars, image folder)
    format: str = "auto"  # a registered input reader (curation/formats), as inputs[].format; auto sniffs
    # canonical field → the benchmark's name, as inputs[].fields; {} reads a row file's `question` column as its text
    fields: dict[str, str] = field(default_factory=dict)
    image_root: str = ""  # where images named by records resolve, as inputs[].image_root; "" = the file's folder


@dataclass(frozen=True, kw_only=True)
class ContaminationConfig:
    enabled: bool = False  # off by default; needs at least one benchmark
    benchmarks: tuple[BenchmarkSource, ...] = ()  # [{name, path, format}] evaluation sets to protect
    check_images: bool = True  # pHash (+ embedding) near-duplicates of benchmark images
    check_text: bool = True  # n-gram overlap with benchmark questions and answers
    max_phash_distance: int = 10  # Hamming distance (of 64 bits) for a pHash candidate; -1 disables the image side
    embedding_model_path: str = ""  # CLIP/SigLIP dir confirming pHash candidates; "" = clip.model_path if clip is on, else pHash alone
    embedding_backend: str = "transformers"  # encoder backend for the embedding check (see curation/clip.py)
    min_embedding_cosine: float = 0.9  # image-embedding cosine that confirms a pHash candidate
    ngram: int = 13  # tokens per n-gram for the text side
    min_short_tokens: int = 8  # benchmark texts shorter than `ngram` but this long match whole; 0 = ignore short texts
    batch_size: int = 32  # samples per RunInference batch
    cache_dir: str = ""  # keep the built index here, shared by workers and reruns (keyed by benchmark files + settings); "" = rebuild per worker

    def validate(self) -> None:
        if self.enabled and not self.benchmarks:
            raise ConfigError("contamination.benchmarks is empty: add [{name: NAME, path: PATH}] or disable contamination")
        names = [b.name for b in self.benchmarks]
        if len(set(names)) != len(names):
            raise ConfigError(f"contamination.benchmarks has duplicate names {names}: give each a unique name")
        for b in self.benchmarks:
            if b.format not in formats.format_names():
                raise ConfigError(f"contamination.benchmarks[{b.name}].format {b.format!r}: "
                                  f"use one of {formats.format_names()}")
            if self.enabled and not os.path.exists(b.path):
                raise ConfigError(f"contamination.benchmarks[{b.name}].path {b.path!r} does not exist")
        if not -1 <= self.max_phash_distance <= 32:
            raise ConfigError(f"contamination.max_phash_distance ({self.max_phash_distance}) must be in [-1, 32]")
        if not -1.0 <= self.min_embedding_cosine <= 1.0:
            raise ConfigError("contamination.min_embedding_cosine must be in [-1, 1]")
        if self.ngram < 1 or self.min_short_tokens < 0:
            raise ConfigError("contamination.ngram must be >= 1 and min_short_tokens >= 0")


@dataclass
class BenchmarkItem:
    benchmark: str
    item_id: str
    question: str = ""  # shown beside a hit in report.html
    answer: str = ""  # the accepted answer(s), joined by spaces
    image_bytes: bytes | None = None  # its image (the first, when it has several)
    texts: list[str] = field(default_factory=list)  # what the n-gram index reads; [] = question and answer
    more_images: list[bytes] = field(default_factory=list)  # its other images (MMMU's image_2 … image_7)

    @property
    def images(self) -> list[bytes]:
        """Every image of the item; each one's pHash is indexed."""
        return ([self.image_bytes] if self.image_bytes else []) + self.more_images

    def indexed_texts(self) -> list[str]:
        return self.texts or [t for t in (self.question, self.answer) if t]


# --- loading: benchmarks are read by the input readers (curation/formats) -------------------------------
BENCHMARK_KIND = "qa"  # records whose data does not say are questions about their images: text, turns and answer count
ROW_FIELDS = {"text": "question"}  # row files, unless `fields` is given: the `question` column is the text
QUESTION_FIELDS = ("question",)  # fields a reader carries into meta that hold a benchmark's question (tars, folders)
ANSWER_FIELDS = ("answer", "answers")  # ... its accepted answers: a string, a list, or VQAv2's [{answer, ...}]
ITEM_ID_FIELDS = ("item_id", "id")  # a record's own item id, before the reader's source id
FALLBACK_ID_FIELDS = ("question_id",)  # used when the reader's source id is only a position (`file.parquet:row3`)


def resolve_benchmark(source: BenchmarkSource) -> tuple[str, list[str]]:
    """(format, files) of a benchmark, as an input of that path and format resolves (local files)."""
    try:
        return resolve.resolve_path(source.path, source.format, resolve.local_match,
                                    setting=f"contamination.benchmarks[{source.name}].format")
    except ConfigError as exc:
        raise ConfigError(f"contamination.benchmarks[{source.name}]: {exc}") from None


def load_benchmark(source: BenchmarkSource, unread: dict[str, int] | None = None) -> Iterator[BenchmarkItem]:
    """Every record the input reader of the benchmark's format yields, as a BenchmarkItem (`benchmark_item`).
    What is not indexed is counted in `unread` (code → count: the reader's rejection reasons, `image_not_local`
    for images named by URL) and logged; a file the reader cannot read at all, or a benchmark that yields no
    item, raises ConfigError naming it."""
    fmt, files = resolve_benchmark(source)
    units, _ = resolve.plan_units(fmt, files, resolve.folder_root(source.path))
    fields = dict(source.fields) if source.fields or not resolve.is_row_format(fmt) else dict(ROW_FIELDS)
    ctx = formats.ReadContext(source=source.name, kind=BENCHMARK_KIND, fields=fields, image_root=source.image_root,
                              answer_lists=True)
    where = f"contamination.benchmarks[{source.name}] ({source.path}, format {fmt})"
    unread = {} if unread is None else unread
    first_rejection = None
    items = 0
    for unit in units:
        for record in resolve.read_unit(fmt, unit, ctx):
            if isinstance(record, Rejection):
                if resolve.is_file_rejection(record):
                    raise ConfigError(f"{where}: cannot read {record.source_id}: {record.reason} ({record.detail})")
                unread[record.reason] = unread.get(record.reason, 0) + 1
                first_rejection = first_rejection or record
                continue
            item = benchmark_item(source.name, record)
            if len(item.images) < len(record.images):
                unread["image_not_local"] = unread.get("image_not_local", 0) + len(record.images) - len(item.images)
            items += 1
            yield item
    if not items:
        why = f"every record was rejected {dict(sorted(unread.items()))}" if unread else "it holds no records"
        raise ConfigError(f"{where} yielded no benchmark items: {why}; check its format and fields")
    if unread:
        log.warning("%s: %d items indexed; not indexed %s%s", where, items, dict(sorted(unread.items())),
                    f"; first rejected: {first_rejection.detail}" if first_rejection else "")


def benchmark_item(benchmark: str, sample: Sample) -> BenchmarkItem:
    """One record as read → its benchmark item: the texts its kind declares (schemas/kinds.py) and the
    question/answer fields the reader carried in meta; its images (those with bytes: URLs are not fetched)."""
    meta = sample.meta
    questions = [t for name in QUESTION_FIELDS for t in _field_texts(meta.get(name))]
    answers = list(dict.fromkeys(t for name in ANSWER_FIELDS for t in _field_texts(meta.get(name))))
    texts = list(dict.fromkeys([*sample_texts(sample), *questions, *answers]))
    positional = sample.source_id == sample.signals.get(ORIGIN_SIGNAL)
    ids = [meta.get(name) for name in ITEM_ID_FIELDS]
    ids += [None if positional else sample.source_id] + [meta.get(name) for name in FALLBACK_ID_FIELDS]
    item_id = next((str(v) for v in ids if isinstance(v, (str, int)) and not isinstance(v, bool) and v != ""),
                   sample.source_id)
    images = [image.bytes for image in sample.images if image.bytes]
    return BenchmarkItem(benchmark, item_id, question=(questions or texts or [""])[0],
                         answer=" ".join(answers) if answers else (sample.answer or ""),
                         image_bytes=images[0] if images else None, more_images=images[1:], texts=texts)


def _field_texts(value: Any) -> list[str]:
    """A question/answer field's texts: a string or number, or a list of them (or of VQAv2's {answer: ...})."""
    values = value if isinstance(value, list) else [value]
    out = []
    for v in values:
        if isinstance(v, dict):
            v = v.get("answer")
        if isinstance(v, (str, int, float)) and not isinstance(v, bool) and str(v).strip():
            out.append(str(v).strip())
    return out


# --- hashing ----------------------------------------------------------------------------------
_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)


def normalize_tokens(text: str) -> list[str]:
    """NFKC, lower case, punctuation and underscores → spaces, split on whitespace."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).split()


def gram_hash(tokens: Sequence[str]) -> int:
    """A 64-bit hash of a token sequence, the same in every process (so a cached index stays valid)."""
    return int.from_bytes(hashlib.blake2b("\x1f".join(tokens).encode("utf-8"), digest_size=8).digest(), "little")


def ngram_hashes(tokens: Sequence[str], n: int) -> set[int]:
    return {gram_hash(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def image_phash(data: bytes) -> int:
    return _phash_and_thumbnail(data, thumbnail=False)[0]


THUMBNAIL_SIDE = 224  # CLIP-style encoders see 224² crops: a thumbnail this size embeds like the original


def _phash_and_thumbnail(data: bytes, thumbnail: bool) -> tuple[int, bytes | None]:
    """One decode for both: the 64-bit pHash, and (for the embedding check) a small JPEG so the index
    keeps ~10 kB per benchmark image instead of the original bytes."""
    import imagehash
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        rgb = image.convert("RGB")
        phash = int(str(imagehash.phash(rgb)), 16)
        if not thumbnail:
            return phash, None
        scale = THUMBNAIL_SIDE / min(rgb.size)
        if scale < 1:
            rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.BICUBIC)
        buf = io.BytesIO()
        rgb.save(buf, format="JPEG", quality=90)
        return phash, buf.getvalue()


def sample_phash(sample: Sample) -> int | None:
    """The pHash the dedup stage stored (16 hex digits), else one computed from the first image."""
    stored = sample.signals.get("phash")
    if isinstance(stored, str) and re.fullmatch(r"[0-9a-fA-F]{16}", stored):
        return int(stored, 16)
    if sample.images and sample.images[0].bytes:
        return image_phash(sample.images[0].bytes)
    return None


# --- the index --------------------------------------------------------------------------------
@dataclass
class Hit:
    reason: str
    benchmark: str
    item_id: str
    evidence: str

    def detail(self) -> str:
        return f"benchmark={self.benchmark} item_id={self.item_id} {self.evidence}"


@dataclass
class ContaminationIndex:
    config: ContaminationConfig
    items: list[tuple[str, str]] = field(default_factory=list)  # (benchmark, item_id) by position
    phashes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))
    phash_items: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # position in `items`
    grams: dict[int, int] = field(default_factory=dict)  # n-gram hash → first item position
    short_lengths: set[int] = field(default_factory=set)  # lengths of whole-text short entries in `grams`
    thumbnails: dict[int, bytes] = field(default_factory=dict)  # row of `phashes` → small JPEG, for embedding checks
    unread: dict[str, dict[str, int]] = field(default_factory=dict)  # benchmark → reason → records not indexed
    encoder: Any = None
    _embedding_cache: dict[int, np.ndarray] = field(default_factory=dict)

    @classmethod
    def build(cls, config: ContaminationConfig, items: Iterator[BenchmarkItem] | None = None,
              encoder: Any = None) -> "ContaminationIndex":
        index = cls(config=config, encoder=encoder)
        if items is None:
            index.unread = {source.name: {} for source in config.benchmarks}
            items = (item for source in config.benchmarks for item in load_benchmark(source, index.unread[source.name]))
        hashes: list[int] = []
        owners: list[int] = []
        for item in items:
            position = len(index.items)
            index.items.append((item.benchmark, item.item_id))
            for image in item.images if config.check_images and config.max_phash_distance >= 0 else []:
                phash, thumbnail = _phash_and_thumbnail(image, thumbnail=encoder is not None)
                hashes.append(phash)
                owners.append(position)
                if thumbnail is not None:
                    index.thumbnails[len(hashes) - 1] = thumbnail
            if config.check_text:
                for text in item.indexed_texts():
                    index._add_text(text, position)
        index.phashes = np.array(hashes, dtype=np.uint64)
        index.phash_items = np.array(owners, dtype=np.int64)
        return index

    def _add_text(self, text: str, position: int) -> None:
        tokens = normalize_tokens(text)
        n = self.config.ngram
        if len(tokens) >= n:
            for h in ngram_hashes(tokens, n):
                self.grams.setdefault(h, position)
        elif self.config.min_short_tokens and len(tokens) >= self.config.min_short_tokens:
            self.grams.setdefault(gram_hash(tokens), position)
            self.short_lengths.add(len(tokens))

    def __len__(self) -> int:
        return len(self.items)

    # lookups
    def text_hit(self, sample: Sample) -> Hit | None:
        if not self.grams:
            return None
        for text in sample_texts(sample):
            tokens = normalize_tokens(text)
            for n in (self.config.ngram, *sorted(self.short_lengths)):
                for i in range(len(tokens) - n + 1):
                    position = self.grams.get(gram_hash(tokens[i:i + n]))
                    if position is not None:
                        bench, item_id = self.items[position]
                        snippet = " ".join(tokens[i:i + n])[:120]
                        return Hit(TEXT_OVERLAP, bench, item_id, f"ngram={n} text={snippet!r}")
        return None

    def phash_candidates(self, phash: int) -> list[tuple[int, int]]:
        """(row of `phashes`, Hamming distance) of benchmark images within `max_phash_distance`, nearest first
        (`phash_items[row]` is the item the image belongs to)."""
        if not len(self.phashes):
            return []
        distances = np.bitwise_count(self.phashes ^ np.uint64(phash))
        near = np.flatnonzero(distances <= self.config.max_phash_distance)
        order = near[np.lexsort((self.phash_items[near], distances[near]))]
        return [(int(i), int(distances[i])) for i in order]

    def _embedding(self, row: int) -> np.ndarray:
        if row not in self._embedding_cache:
            from PIL import Image

            with Image.open(io.BytesIO(self.thumbnails[row])) as image:
                self._embedding_cache[row] = self.encoder.embed_images([image.convert("RGB")])[0]
        return self._embedding_cache[row]

    def image_hits(self, samples: Sequence[Sample]) -> list[Hit | None]:
        """Batch lookup so the sample-side embeddings run as one encoder call."""
        if not self.config.check_images or not len(self.phashes):
            return [None] * len(samples)
        candidates = []
        for sample in samples:
            phash = sample_phash(sample)
            candidates.append(self.phash_candidates(phash) if phash is not None else [])
        if self.encoder is None:
            return [self._phash_hit(c[0]) if c else None for c in candidates]
        need = [i for i, c in enumerate(candidates) if c]
        hits: list[Hit | None] = [None] * len(samples)
        if not need:
            return hits
        from PIL import Image

        images = [Image.open(io.BytesIO(samples[i].images[0].bytes)).convert("RGB") for i in need]
        embeddings = self.encoder.embed_images(images)
        for i, embedding in zip(need, embeddings):
            for row, distance in candidates[i]:
                cosine = float(np.dot(embedding, self._embedding(row)))
                if cosine >= self.config.min_embedding_cosine:
                    bench, item_id = self.items[self.phash_items[row]]
                    hits[i] = Hit(IMAGE_DUPLICATE, bench, item_id, f"phash_distance={distance} cosine={cosine:.3f}")
                    break
        return hits

    def _phash_hit(self, candidate: tuple[int, int]) -> Hit:
        row, distance = candidate
        bench, item_id = self.items[self.phash_items[row]]
        return Hit(IMAGE_DUPLICATE, bench, item_id, f"phash_distance={distance}")

    def lookup(self, samples: Sequence[Sample]) -> list[Hit | None]:
        """The first hit per sample: image side first (it is the stronger evidence), then text."""
        image = self.image_hits(samples)
        return [hit or (self.text_hit(s) if self.config.check_text else None) for s, hit in zip(samples, image)]


# --- the index cache ----------------------------------------------------------------------------
def _benchmark_fingerprint(config: ContaminationConfig, with_thumbnails: bool) -> str:
    """Changes when a benchmark file or an index setting changes; file identity = path, size, mtime. The files are
    those the benchmark resolves to (as its reader lists them), and those under its `image_root`."""
    parts: list[Any] = [config.check_images, config.check_text, config.max_phash_distance >= 0, config.ngram,
                        config.min_short_tokens, with_thumbnails, 3]  # last: index format version
    for source in config.benchmarks:
        files = resolve_benchmark(source)[1]
        if source.image_root:
            files += resolve.local_match(os.path.join(source.image_root, "**"))
        parts.append((source.name, source.format, sorted(source.fields.items()), source.image_root,
                      [(f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]))
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:20]


def build_cached_index(config: ContaminationConfig, encoder: Any = None) -> ContaminationIndex:
    """`ContaminationIndex.build`, loading/saving `config.cache_dir` when set (written atomically, so
    workers racing to build it all end with the same file)."""
    if not config.cache_dir:
        return ContaminationIndex.build(config, encoder=encoder)
    os.makedirs(config.cache_dir, exist_ok=True)
    path = os.path.join(config.cache_dir, f"contamination-{_benchmark_fingerprint(config, encoder is not None)}.pkl")
    if os.path.exists(path):
        with open(path, "rb") as fh:
            state = pickle.load(fh)
        return ContaminationIndex(config=config, encoder=encoder, **state)
    index = ContaminationIndex.build(config, encoder=encoder)
    state = {"items": index.items, "phashes": index.phashes, "phash_items": index.phash_items,
             "grams": index.grams, "short_lengths": index.short_lengths, "thumbnails": index.thumbnails,
             "unread": index.unread}
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        pickle.dump(state, fh, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)
    return index


def judge(sample: Sample, hit: Hit | None) -> Verdict:
    if hit is None:
        return Verdict.ok()
    return Verdict.drop(hit.reason, hit.detail(), contamination_benchmark=hit.benchmark,
                        contamination_item_id=hit.item_id)
