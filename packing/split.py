"""Long documents are split, not dropped: an interleaved document whose rendering is longer than seq_len → parts.

    document KEY (segments text/image/…, rendering > seq_len tokens)
        → parts KEY#p0, KEY#p1, … (`part_key`), each a document of its own rendering ≤ seq_len tokens

Rules (deterministic: a pure function of the record, the tokenizer and seq_len):
- Cuts fall only between segments; an image block is never cut. A part renders as any document does
  ([gMASK]<sop> segments… <|endoftext|>), so its position ids restart at 0 and its images are its own.
- Parts are filled greedily in document order; an image goes to the part of the text segment right after it when
  the two fit in one part (an image stays with its text), else the image and the text are parted.
- A single text segment longer than a part is first cut into several text segments: after sentence ends
  (`.`/`!`/`?` then whitespace) or line breaks, and a sentence still too long after any whitespace run. The cut
  keeps every character (whitespace stays at the end of the piece before it), so the parts' texts joined are the
  document's text. Each piece is tokenized alone, as the builder tokenizes every segment.
- The `<|endoftext|>` that closes a part other than the last is in the sequence but not trained (the document goes
  on); a part holding only images keeps it trained so that it is not label-free.
- Rejected, with a reason: `image_longer_than_seq_len` (one image with its markers does not fit a part) and
  `text_unbreakable` (a run without whitespace longer than a part).

A record is split only when its rendering is exactly its segments (checked token for token); anything else
(chat turns, text beside the segments) follows the over-long policy of pack.py. The parts' keys carry the lineage
(schemas/packed.py): `document_key(part_key(KEY, i)) == KEY`, and the pack report counts documents split and parts made.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np

from vlmloom.schemas.packed import IGNORE_INDEX, part_key
from vlmloom.schemas.records import Rejection, Sample, Segment

from . import tokenizer as T
from .builder import STAGE, BuiltSample, SequenceBuilder
from .vision import num_image_tokens

_FRAME = 3  # [gMASK] <sop> … <|endoftext|> around every part
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\s*\n\s*")
_WHITESPACE = re.compile(r"\s+")


def splittable(builder: SequenceBuilder, sample: Sample, built: BuiltSample) -> bool:
    """Whether `built` is exactly `sample`'s segments rendered as a document (so parts of them render alike)."""
    if not sample.segments or built.rendered_as != "document" or len(built.videos):
        return False
    expected = [np.array([builder.ids[T.GMASK], builder.ids[T.SOP]], np.int32)]
    image = 0
    for seg in sample.segments:
        if seg.type == "image":
            if image >= len(built.image_grid_thw):
                return False
            expected.append(_image_block(builder, built.image_grid_thw[image]))
            image += 1
        elif seg.text:
            expected.append(np.asarray(builder.encode(seg.text), np.int32))
    expected.append(np.array([builder.ids[T.ENDOFTEXT]], np.int32))
    return image == len(built.image_grid_thw) and np.array_equal(np.concatenate(expected), built.input_ids)


def split_document(builder: SequenceBuilder, sample: Sample, built: BuiltSample,
                   seq_len: int) -> list[BuiltSample] | Rejection:
    """`sample` (whose rendering `built` is longer than seq_len and `splittable`) → its parts, each ≤ seq_len."""
    budget = seq_len - _FRAME
    pieces: list[tuple[Segment, int]] = []  # segments in order (long texts cut), with their token counts
    image = 0
    for seg in sample.segments:
        if seg.type == "image":
            n = len(_image_block(builder, built.image_grid_thw[image]))
            if n > budget:
                return Rejection.of(sample, STAGE, "image_longer_than_seq_len",
                                    f"image {image} takes {n} tokens with its markers; a part of seq_len {seq_len} "
                                    f"holds {budget} besides [gMASK]<sop> and <|endoftext|>: raise seq_len or "
                                    f"lower builder.vision.max_pixels")
            pieces.append((seg, n))
            image += 1
        elif seg.text:
            texts = _cut_text(builder, seg.text, budget)
            if texts is None:
                return Rejection.of(sample, STAGE, "text_unbreakable",
                                    f"a text segment holds a run without whitespace longer than {budget} tokens "
                                    f"(seq_len {seq_len})")
            pieces += [(Segment("text", text), len(builder.encode(text))) for text in texts]
    parts = _group(pieces, budget)
    out = []
    first_image = 0
    for i, segments in enumerate(parts):
        part = _part_sample(sample, segments, first_image, part_key(sample.key, i))
        first_image += len(part.images)
        rendered = builder.build(part)
        if isinstance(rendered, Rejection) or len(rendered) > seq_len:
            # the whole document rendered, and a part renders the same segments: this cannot differ
            raise RuntimeError(f"record {sample.key!r}: part {i} renders differently from its document "
                               f"({getattr(rendered, 'reason', len(rendered))})")
        if i < len(parts) - 1 and np.count_nonzero(rendered.labels != IGNORE_INDEX) > 1:
            rendered.labels[-1] = IGNORE_INDEX  # the document goes on: its end is not here
        out.append(rendered)
    return out


def _image_block(builder: SequenceBuilder, grid) -> np.ndarray:
    n = num_image_tokens(tuple(int(x) for x in grid), builder.config.vision)
    return np.concatenate([[builder.ids[T.BEGIN_OF_IMAGE]], np.full(n, builder.image_token_id),
                           [builder.ids[T.END_OF_IMAGE]]]).astype(np.int32)


def _cut_text(builder: SequenceBuilder, text: str, budget: int) -> list[str] | None:
    """`text` as pieces of at most `budget` tokens each, cut after sentences, else after whitespace; None when a
    run without whitespace is longer than `budget`. "".join(pieces) == text."""
    if len(builder.encode(text)) <= budget:
        return [text]
    units: list[tuple[str, int]] = []
    for sentence in _cut_after(_SENTENCE_END, text):
        n = len(builder.encode(sentence))
        if n <= budget:
            units.append((sentence, n))
            continue
        for word in _cut_after(_WHITESPACE, sentence):
            n = len(builder.encode(word))
            if n > budget:
                return None
            units.append((word, n))
    pieces = []
    for group in _group(units, budget):  # token counts of units add up only roughly: check each piece exactly
        joined = "".join(group)
        if len(builder.encode(joined)) <= budget:
            pieces.append(joined)
            continue
        current = ""
        for unit in group:
            if current and len(builder.encode(current + unit)) > budget:
                pieces.append(current)
                current = ""
            current += unit
        pieces.append(current)
    return pieces


def _cut_after(pattern: re.Pattern, text: str) -> list[str]:
    """`text` cut at the end of each match of `pattern` (the separator stays with the piece before it)."""
    cuts = [m.end() for m in pattern.finditer(text) if 0 < m.end() < len(text)]
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


def _group(items: list[tuple], budget: int) -> list[list]:
    """Greedy, in order: items (thing, tokens) into groups of at most `budget` tokens; an image segment joins the
    text segment right after it when both fit one group (an image stays with its text)."""
    units: list[tuple[list, int]] = []
    i = 0
    while i < len(items):
        thing, n = items[i]
        nxt = items[i + 1] if i + 1 < len(items) else None
        if (isinstance(thing, Segment) and thing.type == "image" and nxt is not None
                and nxt[0].type == "text" and n + nxt[1] <= budget):
            units.append(([thing, nxt[0]], n + nxt[1]))
            i += 2
        else:
            units.append(([thing], n))
            i += 1
    groups: list[list] = []
    room = -1
    for things, n in units:
        if not groups or n > room:
            groups.append([])
            room = budget
        groups[-1] += things
        room -= n
    return groups


def _part_sample(sample: Sample, segments: list[Segment], first_image: int, key: str) -> Sample:
    """One part as a record of its own: its segments (image indices renumbered from 0), their images, their text."""
    renumbered, images = [], []
    for seg in segments:
        if seg.type == "image":
            images.append(sample.images[first_image + len(images)])
            renumbered.append(Segment("image", image_index=len(images) - 1))
        else:
            renumbered.append(seg)
    text = "".join(seg.text for seg in renumbered if seg.type == "text" and seg.text)
    # no chat turns: the document rendered as a document (its turns were unusable or not asked for), so do its parts
    return dataclasses.replace(sample, key=key, segments=renumbered, images=images, text=text or None, messages=[])
