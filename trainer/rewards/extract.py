"""The format gate: a model response → the final answer read from its one box, or a reason code why not.

A verifiable response must read

    <think> … reasoning … </think><answer> … <|begin_of_box|>FINAL<|end_of_box|> … </answer>

and the answer is read **only** from the box (GLM-4.1V-Thinking). Everything the gate refuses scores the
verifier's minimum, with one stable reason code per failure:

    not_text, response_too_long, control_characters,
    missing_think, missing_answer, duplicated_tags, nested_tags, misordered_tags,
    text_before_think, text_between_think_and_answer, text_after_answer,
    boxed_instead_of_box, missing_box, multiple_boxes, unbalanced_box, empty_box, answer_too_long

Boxes inside <think> are drafts and are ignored; only the <answer> section counts. Ground truth that carries
box tokens goes through `extract_box` (the same box rules, no think/answer tags needed); plain ground truth is
taken as is (`ground_truth_answer`).

Pure string scanning (str.count / str.find, no backtracking regular expressions), so a 1 MB hostile response
costs milliseconds; lengths are capped before any parsing downstream.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
BOX_OPEN, BOX_CLOSE = "<|begin_of_box|>", "<|end_of_box|>"
OK = "ok"

# C0 controls except tab/newline/carriage return, DEL, and C1 controls: a model that emits these is broken,
# and they confuse every downstream parser.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")

DEFAULT_MAX_RESPONSE_CHARS = 500_000  # ~ 128k tokens of text; longer is hostile, not a real rollout
DEFAULT_MAX_ANSWER_CHARS = 20_000  # the box holds a final answer (an OCR page at most), not an essay
# Decoding without skip_special_tokens (needed: the box tokens are special tokens in GLM's tokenizer) leaves the
# end-of-turn tokens at the end; they are not "text after </answer>".
DEFAULT_IGNORED_TRAILING = ("<|endoftext|>", "<|user|>", "<|observation|>", "</s>", "<|im_end|>")


@dataclass(frozen=True)
class Extraction:
    answer: str | None  # box content (stripped) when ok, else None
    ok: bool
    reason: str  # "ok" or one of the reason codes in the module docstring


def _fail(reason: str) -> Extraction:
    return Extraction(None, False, reason)


def extract_box(text: str, *, max_answer_chars: int = DEFAULT_MAX_ANSWER_CHARS) -> Extraction:
    """The content of exactly one <|begin_of_box|>…<|end_of_box|> in `text` (the <answer> section)."""
    opens, closes = text.count(BOX_OPEN), text.count(BOX_CLOSE)
    if opens == 0 and closes == 0:
        return _fail("boxed_instead_of_box" if _BOXED.search(text) else "missing_box")
    if opens > 1 or closes > 1:
        return _fail("multiple_boxes")
    start, end = text.find(BOX_OPEN), text.find(BOX_CLOSE)
    if opens != closes or end < start:
        return _fail("unbalanced_box")
    content = text[start + len(BOX_OPEN):end].strip()
    if not content:
        return _fail("empty_box")
    if len(content) > max_answer_chars:
        return _fail("answer_too_long")
    return Extraction(content, True, OK)


def extract_answer(text: Any, *, require_think: bool = True, max_response_chars: int = DEFAULT_MAX_RESPONSE_CHARS,
                   max_answer_chars: int = DEFAULT_MAX_ANSWER_CHARS,
                   ignored_trailing: tuple[str, ...] = DEFAULT_IGNORED_TRAILING) -> Extraction:
    """The format gate (see the module docstring). `require_think=False` accepts `<answer>…</answer>` alone."""
    if not isinstance(text, str):
        return _fail("not_text")
    if len(text) > max_response_chars:
        return _fail("response_too_long")
    if _CONTROL.search(text):
        return _fail("control_characters")
    text = text.strip()
    trimmed = True
    while trimmed:  # several end-of-turn tokens may follow each other
        trimmed = False
        for token in ignored_trailing:
            if token and text.endswith(token):
                text, trimmed = text[:-len(token)].rstrip(), True
    counts = {tag: text.count(tag) for tag in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)}
    if require_think and (counts[THINK_OPEN] == 0 or counts[THINK_CLOSE] == 0):
        return _fail("missing_think")
    if counts[ANSWER_OPEN] == 0 or counts[ANSWER_CLOSE] == 0:
        return _fail("missing_answer")
    if any(n > 1 for n in counts.values()):
        return _fail("duplicated_tags")
    a_open, a_close = text.find(ANSWER_OPEN), text.find(ANSWER_CLOSE)
    if a_close < a_open:
        return _fail("misordered_tags")
    if counts[THINK_OPEN]:
        t_open, t_close = text.find(THINK_OPEN), text.find(THINK_CLOSE)
        if t_close < t_open:
            return _fail("misordered_tags")
        if t_open < a_open < t_close or a_open < t_open < a_close:  # one section opens inside the other
            return _fail("nested_tags")
        if a_open < t_open:
            return _fail("misordered_tags")
        if text[:t_open].strip():
            return _fail("text_before_think")
        if text[t_close + len(THINK_CLOSE):a_open].strip():
            return _fail("text_between_think_and_answer")
    elif text[:a_open].strip():
        return _fail("text_before_think")
    if text[a_close + len(ANSWER_CLOSE):].strip():
        return _fail("text_after_answer")
    return extract_box(text[a_open + len(ANSWER_OPEN):a_close], max_answer_chars=max_answer_chars)


def ground_truth_answer(answer: Any, *, max_answer_chars: int = DEFAULT_MAX_ANSWER_CHARS) -> Extraction:
    """Ground truth through the same extractor when it carries box tokens; plain ground truth as is.

    Non-string ground truth (a list of boxes for grounding, a dict) passes through untouched in `answer`
    only as a string is expected here; callers keep structured truths themselves.
    """
    if not isinstance(answer, str):
        return Extraction(None, False, "not_text")
    if BOX_OPEN in answer or BOX_CLOSE in answer:
        if ANSWER_OPEN in answer:
            full = extract_answer(answer, require_think=THINK_OPEN in answer, max_answer_chars=max_answer_chars)
            if full.ok:
                return full
        return extract_box(answer, max_answer_chars=max_answer_chars)
    stripped = answer.strip()
    if not stripped:
        return _fail("empty_box")
    return Extraction(stripped, True, OK)
