"""Benchmark contamination: flag training samples whose image or text appears in an evaluation set.

Benchmarks are folders, Parquet files or webdataset tars of images + question/answer text
(`load_benchmark`). `ContaminationIndex` holds, for every benchmark item, a 64-bit pHash and the
hashed normalised 13-grams of its question and answer. A sample is flagged when
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
import os
import pickle
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from vlmloom.curation.base import Verdict
from vlmloom.schemas.config import ConfigError
from vlmloom.schemas.kinds import sample_texts
from vlmloom.schemas.records import Sample
from vlmloom.schemas.tars import iter_tar_groups

STAGE = "contamination"
IMAGE_DUPLICATE = "benchmark_image_duplicate"
TEXT_OVERLAP = "benchmark_text_overlap"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass(frozen=True, kw_only=True)
class BenchmarkSource:
    name: str  # reported in rejection details, e.g. "mmmu_val"
    path: str  # a Parquet file/dir, a folder of images (+ same-stem .json with question/answer), or .tar shards
    format: str = "auto"  # "auto" | "parquet" | "folder" | "webdataset"


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
            if b.format not in ("auto", "parquet", "folder", "webdataset"):
                raise ConfigError(f"contamination.benchmarks[{b.name}].format {b.format!r}: "
                                  "use auto, parquet, folder or webdataset")
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
    question: str = ""
    answer: str = ""
    image_bytes: bytes | None = None


# --- loading ----------------------------------------------------------------------------------
def _format_of(source: BenchmarkSource) -> str:
    if source.format != "auto":
        return source.format
    path = Path(source.path)
    if path.suffix == ".parquet" or (path.is_dir() and any(path.glob("*.parquet"))):
        return "parquet"
    if path.suffix == ".tar" or (path.is_dir() and any(path.glob("*.tar"))):
        return "webdataset"
    return "folder"


def _image_value(value: Any) -> bytes | None:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict):  # Hugging Face `Image` feature: {"bytes", "path"}
        if value.get("bytes"):
            return bytes(value["bytes"])
        if value.get("path") and os.path.exists(value["path"]):
            return Path(value["path"]).read_bytes()
    if isinstance(value, str) and os.path.exists(value):
        return Path(value).read_bytes()
    return None


def load_benchmark(source: BenchmarkSource) -> Iterator[BenchmarkItem]:
    fmt = _format_of(source)
    path = Path(source.path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
        for file in files:
            parquet = pq.ParquetFile(file)
            names = set(parquet.schema_arrow.names)
            id_col = next((c for c in ("item_id", "id", "question_id", "key") if c in names), None)
            image_col = next((c for c in ("image_bytes", "image", "image_path") if c in names), None)
            row_number = 0
            for batch in parquet.iter_batches(batch_size=1024):
                for row in batch.to_pylist():
                    item_id = str(row[id_col]) if id_col else f"{file.stem}:{row_number}"
                    row_number += 1
                    yield BenchmarkItem(source.name, item_id, str(row.get("question") or ""),
                                        _answer_text(row.get("answer")),
                                        _image_value(row[image_col]) if image_col else None)
    elif fmt == "webdataset":
        files = sorted(path.glob("*.tar")) if path.is_dir() else [path]
        for file in files:
            for key, parts in iter_tar_groups(str(file)):  # a sample's members are consecutive (webdataset)
                meta = json.loads(parts["json"]) if "json" in parts else {}
                image = next((parts[e] for e in ("jpg", "jpeg", "png", "webp") if e in parts), None)
                yield BenchmarkItem(source.name, str(meta.get("item_id") or meta.get("id") or key),
                                    str(meta.get("question") or parts.get("txt", b"").decode("utf-8", "replace")),
                                    _answer_text(meta.get("answer")), image)
    else:
        for file in sorted(path.rglob("*")):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            sidecar = file.with_suffix(".json")
            meta = json.loads(sidecar.read_text(encoding="utf-8")) if sidecar.exists() else {}
            yield BenchmarkItem(source.name, str(meta.get("item_id") or file.relative_to(path).with_suffix("")),
                                str(meta.get("question") or ""), _answer_text(meta.get("answer")), file.read_bytes())


def _answer_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


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
    thumbnails: dict[int, bytes] = field(default_factory=dict)  # item → small JPEG, kept only for embedding checks
    encoder: Any = None
    _embedding_cache: dict[int, np.ndarray] = field(default_factory=dict)

    @classmethod
    def build(cls, config: ContaminationConfig, items: Iterator[BenchmarkItem] | None = None,
              encoder: Any = None) -> "ContaminationIndex":
        index = cls(config=config, encoder=encoder)
        if items is None:
            items = (item for source in config.benchmarks for item in load_benchmark(source))
        hashes: list[int] = []
        owners: list[int] = []
        for item in items:
            position = len(index.items)
            index.items.append((item.benchmark, item.item_id))
            if config.check_images and config.max_phash_distance >= 0 and item.image_bytes:
                phash, thumbnail = _phash_and_thumbnail(item.image_bytes, thumbnail=encoder is not None)
                hashes.append(phash)
                owners.append(position)
                if thumbnail is not None:
                    index.thumbnails[position] = thumbnail
            if config.check_text:
                for text in (item.question, item.answer):
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
        """(item position, Hamming distance) of benchmark images within `max_phash_distance`, nearest first."""
        if not len(self.phashes):
            return []
        distances = np.bitwise_count(self.phashes ^ np.uint64(phash))
        near = np.flatnonzero(distances <= self.config.max_phash_distance)
        order = near[np.lexsort((self.phash_items[near], distances[near]))]
        return [(int(self.phash_items[i]), int(distances[i])) for i in order]

    def _embedding(self, position: int) -> np.ndarray:
        if position not in self._embedding_cache:
            from PIL import Image

            with Image.open(io.BytesIO(self.thumbnails[position])) as image:
                self._embedding_cache[position] = self.encoder.embed_images([image.convert("RGB")])[0]
        return self._embedding_cache[position]

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
            for position, distance in candidates[i]:
                cosine = float(np.dot(embedding, self._embedding(position)))
                if cosine >= self.config.min_embedding_cosine:
                    bench, item_id = self.items[position]
                    hits[i] = Hit(IMAGE_DUPLICATE, bench, item_id, f"phash_distance={distance} cosine={cosine:.3f}")
                    break
        return hits

    def _phash_hit(self, candidate: tuple[int, int]) -> Hit:
        position, distance = candidate
        bench, item_id = self.items[position]
        return Hit(IMAGE_DUPLICATE, bench, item_id, f"phash_distance={distance}")

    def lookup(self, samples: Sequence[Sample]) -> list[Hit | None]:
        """The first hit per sample: image side first (it is the stronger evidence), then text."""
        image = self.image_hits(samples)
        return [hit or (self.text_hit(s) if self.config.check_text else None) for s, hit in zip(samples, image)]


# --- the index cache ----------------------------------------------------------------------------
def _benchmark_fingerprint(config: ContaminationConfig, with_thumbnails: bool) -> str:
    """Changes when a benchmark file or an index setting changes; file identity = path, size, mtime."""
    parts: list[Any] = [config.check_images, config.check_text, config.max_phash_distance >= 0, config.ngram,
                        config.min_short_tokens, with_thumbnails, 2]  # last: index format version
    for source in config.benchmarks:
        path = Path(source.path)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        parts.append((source.name, source.format, [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]))
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
             "grams": index.grams, "short_lengths": index.short_lengths, "thumbnails": index.thumbnails}
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
