"""CLIP filtering: image–text cosine similarity per sample, judged against a threshold or a top fraction.

Encoders sit behind `ENCODER_BACKENDS` (name → factory(model_path, device, threads) → encoder with
`embed_images(list[PIL]) -> (n, d)` and `embed_texts(list[str]) -> (n, d)`, rows L2-normalised).
- `transformers` (default): `CLIPModel` / `SiglipModel` (any `AutoModel` with `get_image_features` and
  `get_text_features`) with its processor, which runs on PIL without torchvision.
- `open_clip` (optional extra): needs torchvision, which has no CPU build on these machines; its
  import fails with a message saying so. `model_path` is `ARCH:CHECKPOINT` or `local-dir:DIR`.
The benchmark-contamination stage reuses these encoders for its image-embedding check.

`ClipScorer.score_batch` stores `signals.clip_score` for every scored sample. Judgment: below
`threshold` → `clip_below_threshold`; outside the top `top_fraction` of all scored samples (a global
pass in the pipeline, DataComp-style) → `clip_below_top_fraction`. Note that SigLIP cosines sit on a
different scale from CLIP's: recalibrate `threshold` for it.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from vlmloom.curation.base import Verdict
from vlmloom.schemas.registry import Registry
from vlmloom.schemas.config import ConfigError
from vlmloom.schemas.kinds import check_kind_selection, kinds_annotated_by, sample_texts
from vlmloom.schemas.records import Sample

STAGE = "clip"
BELOW_THRESHOLD = "clip_below_threshold"
BELOW_TOP_FRACTION = "clip_below_top_fraction"
MISSING_INPUT = "clip_missing_input"


@dataclass(frozen=True, kw_only=True)
class ClipConfig:
    enabled: bool = False  # off by default: no wheel ships CLIP weights
    backend: str = "transformers"  # "transformers" (CLIPModel/SiglipModel dir) | "open_clip" (optional extra)
    model_path: str = ""  # local model dir (or hub id where the library can fetch); "" = stage off
    threshold: float = 0.3  # keep cosine >= this (GLM-4.1V recipe uses 0.3 with CLIP); -1 disables
    top_fraction: float = 0.0  # keep this top share of scored samples (DataComp-style, global pass); 0 disables
    kinds: tuple[str, ...] = ()  # kinds scored (others pass through without a score); () = those the kinds table marks "clip"
    batch_size: int = 32  # samples per RunInference batch
    max_text_tokens: int = 77  # captions are truncated to this many tokens (CLIP's context)
    device: str = "cpu"  # torch device, e.g. "cuda"
    threads: int = 0  # torch intra-op threads per worker; 0 = torch's default

    def validate(self) -> None:
        check_kind_selection("clip.kinds", self.kinds)
        if self.backend not in ENCODER_BACKENDS:
            raise ConfigError(f"clip.backend {self.backend!r} is unknown: use one of {ENCODER_BACKENDS.names()}")
        if self.enabled and not self.model_path:
            raise ConfigError("clip.model_path is empty: set it to a local CLIPModel/SiglipModel directory or disable clip")
        if self.threshold != -1 and not -1.0 <= self.threshold <= 1.0:
            raise ConfigError(f"clip.threshold ({self.threshold}) must be a cosine in [-1, 1], or -1 to disable")
        if not 0.0 <= self.top_fraction <= 1.0:
            raise ConfigError(f"clip.top_fraction ({self.top_fraction}) must be in [0, 1]; 0 disables it")
        if self.enabled and self.threshold == -1 and self.top_fraction == 0:
            raise ConfigError("clip has neither clip.threshold nor clip.top_fraction: set one (e.g. clip.threshold=0.3)")
        if self.batch_size < 1 or self.max_text_tokens < 1 or self.threads < 0:
            raise ConfigError("clip.batch_size and clip.max_text_tokens must be >= 1, clip.threads >= 0")


class ImageTextEncoder(Protocol):
    def embed_images(self, images: Sequence[Any]) -> np.ndarray: ...
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...


EncoderFactory = Callable[..., ImageTextEncoder]
ENCODER_BACKENDS: Registry[EncoderFactory] = Registry("CLIP encoder backend")


def _normalised(x) -> np.ndarray:
    array = x.detach().float().cpu().numpy()
    return array / np.maximum(np.linalg.norm(array, axis=-1, keepdims=True), 1e-12)


def _features(output) -> Any:
    """transformers 5 returns a ModelOutput whose pooler_output is the projected embedding; older a tensor."""
    return output if hasattr(output, "detach") else output.pooler_output


class TransformersEncoder:
    def __init__(self, model_path: str, device: str = "cpu", threads: int = 0, max_text_tokens: int = 77):
        import torch
        from transformers import AutoModel, AutoProcessor

        if threads:
            torch.set_num_threads(threads)
        local = os.path.isdir(model_path)
        try:
            self.processor = AutoProcessor.from_pretrained(model_path, local_files_only=local)
            self.model = AutoModel.from_pretrained(model_path, local_files_only=local).eval().to(device)
        except OSError as exc:
            raise RuntimeError(f"could not load a CLIP model from {model_path!r}: it is not a local directory and "
                               f"the hub is unreachable (offline?); download it first and point model_path at the "
                               f"directory ({exc})") from exc
        self.device = device
        self._torch = torch
        model_type = getattr(self.model.config, "model_type", "")
        # SigLIP was trained on max-length-padded text and pools the last token, so pad as it was trained.
        self._padding = "max_length" if model_type.startswith("siglip") else True
        self._mask_padding = not model_type.startswith("siglip")  # ... and without an attention mask
        limit = getattr(getattr(self.model.config, "text_config", None), "max_position_embeddings", max_text_tokens)
        self._max_tokens = min(max_text_tokens, limit)

    def fix_text_shapes(self) -> None:
        """Pad every text to max_text_tokens from now on (SigLIP already is): called with a fixed number of texts,
        a text's embedding is then the same bits whatever texts share its call (curation/image_relevance.py)."""
        self._padding = "max_length"

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        inputs = self.processor(images=list(images), return_tensors="pt")
        with self._torch.inference_mode():
            out = self.model.get_image_features(pixel_values=inputs["pixel_values"].to(self.device))
        return _normalised(_features(out))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        inputs = self.processor(text=list(texts), padding=self._padding, truncation=True,
                                max_length=self._max_tokens, return_tensors="pt")
        kwargs = {"input_ids": inputs["input_ids"].to(self.device)}
        if "attention_mask" in inputs and self._mask_padding:
            kwargs["attention_mask"] = inputs["attention_mask"].to(self.device)
        with self._torch.inference_mode():
            out = self.model.get_text_features(**kwargs)
        return _normalised(_features(out))


@ENCODER_BACKENDS.register("transformers")
def _transformers_encoder(model_path: str, device: str = "cpu", threads: int = 0, max_text_tokens: int = 77):
    return TransformersEncoder(model_path, device, threads, max_text_tokens)


class OpenClipEncoder:
    def __init__(self, model_path: str, device: str = "cpu", threads: int = 0, max_text_tokens: int = 77):
        try:
            import open_clip
            import torch
        except Exception as exc:  # ImportError, or torchvision's own import failure
            raise RuntimeError("clip.backend=open_clip needs `pip install vlmloom[open_clip]` (open-clip-torch and a "
                               "torchvision that imports); on CPU-only machines use clip.backend=transformers") from exc
        if threads:
            torch.set_num_threads(threads)
        if model_path.startswith(("local-dir:", "hf-hub:")):
            self.model, _, self.preprocess = open_clip.create_model_and_transforms(model_path)
            self.tokenizer = open_clip.get_tokenizer(model_path)
        else:
            arch, _, checkpoint = model_path.partition(":")
            if not checkpoint:
                raise ConfigError(f"clip.model_path {model_path!r} for open_clip: use ARCH:CHECKPOINT or local-dir:DIR")
            self.model, _, self.preprocess = open_clip.create_model_and_transforms(arch, pretrained=checkpoint)
            self.tokenizer = open_clip.get_tokenizer(arch)
        self.model = self.model.eval().to(device)
        self.device = device
        self._torch = torch

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        pixels = self._torch.stack([self.preprocess(i) for i in images]).to(self.device)
        with self._torch.inference_mode():
            return _normalised(self.model.encode_image(pixels))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        with self._torch.inference_mode():
            return _normalised(self.model.encode_text(self.tokenizer(list(texts)).to(self.device)))


@ENCODER_BACKENDS.register("open_clip")
def _open_clip_encoder(model_path: str, device: str = "cpu", threads: int = 0, max_text_tokens: int = 77):
    return OpenClipEncoder(model_path, device, threads, max_text_tokens)


def load_encoder(backend: str, model_path: str, device: str = "cpu", threads: int = 0,
                 max_text_tokens: int = 77) -> ImageTextEncoder:
    return ENCODER_BACKENDS.get(backend)(model_path, device=device, threads=threads, max_text_tokens=max_text_tokens)


# --- scoring and judgment ---------------------------------------------------------------------
class ClipScorer:
    def __init__(self, config: ClipConfig, encoder: ImageTextEncoder | None = None):
        self.config = config
        self._encoder = encoder

    def applies(self, sample: Sample) -> bool:
        return sample.kind in (self.config.kinds or kinds_annotated_by(STAGE))

    @property
    def encoder(self) -> ImageTextEncoder:
        if self._encoder is None:
            c = self.config
            self._encoder = load_encoder(c.backend, c.model_path, c.device, c.threads, c.max_text_tokens)
        return self._encoder

    def score_batch(self, samples: Sequence[Sample]) -> list[float | None]:
        """Cosine per sample; None where the sample has no image bytes or no text to score."""
        from PIL import Image
        import io

        texts = [(sample_texts(s) or [""])[0] for s in samples]  # the kind's first text: a caption's own
        usable = [i for i, s in enumerate(samples) if s.images and s.images[0].bytes and texts[i]]
        scores: list[float | None] = [None] * len(samples)
        if not usable:
            return scores
        images = [Image.open(io.BytesIO(samples[i].images[0].bytes)).convert("RGB") for i in usable]
        image_emb = self.encoder.embed_images(images)
        text_emb = self.encoder.embed_texts([texts[i] for i in usable])
        for i, score in zip(usable, np.sum(image_emb * text_emb, axis=1)):
            scores[i] = round(float(score), 6)
        return scores

    def judge(self, sample: Sample, score: float | None) -> Verdict:
        if score is None:
            return Verdict.drop(MISSING_INPUT, "no image bytes or no caption text to score")
        if self.config.threshold != -1 and score < self.config.threshold:
            return Verdict.drop(BELOW_THRESHOLD, f"clip_score {score:.4f} < clip.threshold {self.config.threshold}",
                                clip_score=score)
        return Verdict.ok(clip_score=score)


# The top-fraction cut is taken on scores binned to 1e-4: a histogram of at most 20,001 bins (cosines lie in
# [-1, 1]) whatever the corpus size, merged by adding counts, so the cutoff is exact on the binned scores and
# identical on every runner and partitioning. Beam's ApproximateQuantiles is not: its buffer collapses depend
# on how elements were split into bundles (300k uniform scores, 1 vs 4 partitions: 90th percentile 0.8015 vs
# 0.8014), so a runner could move the cut. Samples in the cutoff's bin are kept (ties at the cut are kept).
SCORE_BINS_PER_UNIT = 10_000


def score_bin(score: float) -> int:
    """The histogram bin of a score (round half to even: the same on every machine)."""
    return int(round(float(score) * SCORE_BINS_PER_UNIT))


def score_histogram(scores: Sequence[float]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for score in scores:
        b = score_bin(score)
        counts[b] = counts.get(b, 0) + 1
    return counts


def cutoff_from_histogram(counts: dict[int, int], fraction: float) -> float:
    """The lowest binned score inside the top `fraction` (ceil(fraction * n) samples) of a score histogram."""
    total = sum(counts.values())
    if not total or fraction >= 1.0:
        return -math.inf
    if fraction <= 0.0:
        return math.inf
    wanted, seen = max(1, math.ceil(fraction * total)), 0
    for b in sorted(counts, reverse=True):
        seen += counts[b]
        if seen >= wanted:
            return b / SCORE_BINS_PER_UNIT
    raise AssertionError("unreachable: the histogram holds `total` samples")


def top_fraction_cutoff(scores: Sequence[float], fraction: float) -> float:
    """The lowest (binned) score inside the top `fraction` (ceil(fraction * n) samples); ties at the cut are kept."""
    return cutoff_from_histogram(score_histogram(scores), fraction)


def judge_top_fraction(sample: Sample, cutoff: float, fraction: float) -> Verdict:
    score = sample.signals.get("clip_score")
    if score is None or cutoff == -math.inf or (cutoff != math.inf and score_bin(score) >= score_bin(cutoff)):
        return Verdict.ok()
    return Verdict.drop(BELOW_TOP_FRACTION, f"clip_score {score:.4f} < cutoff {cutoff:.4f} of the top "
                        f"{fraction:.2%} (clip.top_fraction)")
