"""Image–text relevance inside interleaved documents: each image is scored against the text around it with the
CLIP encoder of `models.clip` (curation/clip.py); an image below `documents.min_image_text_similarity` leaves the
document (`remove_images`), and what is left is judged by the document rules (curation/documents.py).

    nearby_texts(document, window_chars)                → per image: the texts it is scored against
    RelevanceScorer(clip_config, window).score_batch(docs) → per document: per image, its score or None
    judge_relevance(document, scores, DocumentConfig())  → (the document without its irrelevant images, Verdict)

An image's nearby text is what a reader sees beside it: up to `window_chars` characters of the text segments just
before it (the nearest characters) and, separately, up to `window_chars` just after it, in document order, passing
over other images (a gallery shares the caption under it). Its score is the larger of its two cosines: a web
page's caption may sit under the image or introduce it above, and scoring the sides apart keeps CLIP's 77-token
truncation from cutting the side that comes second. The window is about what CLIP reads (77 tokens are ~300
characters of English): text further away would be truncated anyway, and is less likely about the image. An
image whose place is unknown (no image segment names it) is scored against the first window of the document's
texts. An image without bytes or without any text near it is not scored (None) and stays.

Scores must not depend on which documents a runner put in one RunInference batch: float32 kernels of other
shapes sum in another order, and a last-bit change can move an image across the threshold (or its rounded
score) between a run on 1 worker and one on 2. So the encoder is only ever called with one shape: images in
chunks of exactly `models.clip.batch_size` (the last chunk filled with blank images), texts likewise (filled with
empty texts) and padded to `max_text_tokens` (`TransformersEncoder.fix_text_shapes`; open_clip always pads to its
context). With the shapes fixed, an image's or a text's embedding is the same bits whatever shares its call
(tests/test_image_relevance.py checks it on the tiny CLIP), and documents still share batches.
"""
from __future__ import annotations

import io
from typing import Sequence

import numpy as np

from vlmloom.curation import documents
from vlmloom.curation.base import Verdict
from vlmloom.curation.clip import ClipConfig, ImageTextEncoder, load_encoder
from vlmloom.curation.documents import DocumentConfig, remove_images
from vlmloom.schemas.kinds import sample_texts
from vlmloom.schemas.records import Sample

STAGE = "image_relevance"
IRRELEVANT = "irrelevant_image"  # the reason an image leaves (counted as image_relevance/images_removed_<reason>)
SCORE_DIGITS = 4  # scores are stored and judged rounded: small signals, and no last-bit jitter at the threshold


def _collapse(text: str | None) -> str:
    return " ".join((text or "").split())


def _tail(text: str, window: int) -> str:
    """The last `window` characters of `text`, starting at a word (the nearest text to an image that follows)."""
    if len(text) <= window:
        return text
    cut = text[len(text) - window:]
    if text[len(text) - window - 1] != " " and " " in cut:
        cut = cut[cut.index(" ") + 1:]
    return cut


def _head(text: str, window: int) -> str:
    """The first `window` characters of `text`, ending at a word."""
    if len(text) <= window:
        return text
    cut = text[:window]
    if text[window] != " " and " " in cut:
        cut = cut[:cut.rindex(" ")]
    return cut


def _gather(texts, window: int) -> list[str]:
    """Texts from the nearest on, until `window` characters are in hand."""
    out, chars = [], 0
    for text in texts:
        if chars >= window:
            break
        out.append(text)
        chars += len(text) + 1
    return out


def nearby_texts(sample: Sample, window_chars: int) -> list[tuple[str, ...]]:
    """Per image (in image order): its text before and its text after (empty sides left out; see the module)."""
    segments = [(seg.type, seg.image_index, _collapse(seg.text)) for seg in sample.segments]
    place: dict[int, int] = {}
    for position, (kind, index, _) in enumerate(segments):
        if kind == "image" and index is not None and index not in place:
            place[index] = position
    unplaced = _head(" ".join(_collapse(t) for t in sample_texts(sample)), window_chars)
    out: list[tuple[str, ...]] = []
    for index in range(len(sample.images)):
        if index not in place:
            out.append((unplaced,) if unplaced else ())
            continue
        position = place[index]
        before = _gather((t for kind, _, t in reversed(segments[:position]) if kind == "text" and t), window_chars)
        after = _gather((t for kind, _, t in segments[position + 1:] if kind == "text" and t), window_chars)
        sides = (_tail(" ".join(reversed(before)), window_chars), _head(" ".join(after), window_chars))
        out.append(tuple(side for side in sides if side))
    return out


class RelevanceScorer:
    """Scores each image of a document against its nearby text; the encoder loads on first use (once per worker:
    the model handler forces it in `load_model`)."""

    def __init__(self, clip: ClipConfig, window_chars: int, encoder: ImageTextEncoder | None = None):
        self.clip = clip
        self.window_chars = window_chars
        self._encoder = encoder

    @property
    def encoder(self) -> ImageTextEncoder:
        if self._encoder is None:
            c = self.clip
            encoder = load_encoder(c.backend, c.model_path, c.device, c.threads, c.max_text_tokens)
            fix = getattr(encoder, "fix_text_shapes", None)
            if fix is not None:
                fix()
            self._encoder = encoder
        return self._encoder

    def score_document(self, sample: Sample) -> list[float | None]:
        return self.score_batch([sample])[0]

    def score_batch(self, samples: Sequence[Sample]) -> list[list[float | None]]:
        """Per document, per image: the larger cosine with its nearby texts, rounded to SCORE_DIGITS; None when
        not scored (no bytes, or no text near it)."""
        from PIL import Image

        texts = [nearby_texts(sample, self.window_chars) for sample in samples]
        scores: list[list[float | None]] = [[None] * len(sample.images) for sample in samples]
        usable = [(d, i) for d, sample in enumerate(samples) for i, image in enumerate(sample.images)
                  if image.bytes and texts[d][i]]
        if not usable:
            return scores
        distinct = sorted({text for d, i in usable for text in texts[d][i]})
        row = {text: n for n, text in enumerate(distinct)}
        text_emb = self._fixed_shape(self.encoder.embed_texts, distinct, "")

        blank = Image.new("RGB", (32, 32))  # fills the last chunk; the processor resizes it like any image

        def embed_images(pairs: list) -> np.ndarray:
            return self.encoder.embed_images([blank if pair is None else Image.open(
                io.BytesIO(samples[pair[0]].images[pair[1]].bytes)).convert("RGB") for pair in pairs])

        image_emb = self._fixed_shape(embed_images, usable, None)
        for (d, i), embedding in zip(usable, image_emb):
            best = max(float(np.dot(embedding, text_emb[row[text]])) for text in texts[d][i])
            scores[d][i] = round(best, SCORE_DIGITS)
        return scores

    def _fixed_shape(self, embed, items: list, filler) -> np.ndarray:
        """`embed` over `items` in calls of exactly `clip.batch_size` items (the last filled with `filler`);
        the rows of the real items. Images are decoded a chunk at a time, so pixels held are bounded too."""
        size = self.clip.batch_size
        out = []
        for start in range(0, len(items), size):
            chunk = items[start:start + size]
            out.append(embed(chunk + [filler] * (size - len(chunk)))[:len(chunk)])
        return np.concatenate(out)


def judge_relevance(sample: Sample, scores: Sequence[float | None], config: DocumentConfig) -> tuple[Sample, Verdict]:
    """Images scoring below `config.min_image_text_similarity` leave; the rest is judged by the document rules
    (the kind's rule, then documents.min_images, max_images, text per image). Signals: every image's score (in
    the order the stage saw them) and how many left."""
    if len(scores) != len(sample.images):
        raise ValueError(f"{sample.key}: {len(scores)} relevance scores for {len(sample.images)} images")
    threshold = config.min_image_text_similarity
    irrelevant = {i for i, score in enumerate(scores) if score is not None and threshold != -1 and score < threshold}
    kept = remove_images(sample, irrelevant) if irrelevant else sample
    verdict = documents.judge(kept, config)
    verdict.signals.update(image_text_scores=list(scores), irrelevant_images_removed=len(irrelevant))
    return kept, verdict
