"""GLM-4.1V special tokens and a small byte-level BPE tokenizer for tests and the demo.

texts → `tokenizers` byte-level BPE + GLM-4.1V's special tokens → `DIR/` (`save_pretrained`), loadable with
`AutoTokenizer.from_pretrained(DIR)`. A real GLM-4.1V checkpoint's tokenizer carries the same special-token
strings, so the sequence builder works with either.
"""
from __future__ import annotations

import os
from typing import Iterable

# The exact strings GLM-4.1V's tokenizer uses (zai-org/GLM-4.1V-9B-Thinking tokenizer_config.json and
# transformers' glm4v processor). In the demo tokenizer the special ones get ids 0..15 in this order and the
# six reasoning/box tokens (not special: decoding keeps them) the last ids, after the BPE vocabulary.
ENDOFTEXT = "<|endoftext|>"  # end of document / sequence; also the padding token
GMASK = "[gMASK]"  # every GLM sequence starts with [gMASK]<sop>
SOP = "<sop>"
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
OBSERVATION = "<|observation|>"
BEGIN_OF_IMAGE = "<|begin_of_image|>"
END_OF_IMAGE = "<|end_of_image|>"
IMAGE = "<|image|>"  # one per merged image patch (Glm4vConfig.image_token_id)
BEGIN_OF_VIDEO = "<|begin_of_video|>"
END_OF_VIDEO = "<|end_of_video|>"
VIDEO = "<|video|>"
THINK, END_THINK = "<think>", "</think>"
ANSWER, END_ANSWER = "<answer>", "</answer>"
BEGIN_OF_BOX, END_OF_BOX = "<|begin_of_box|>", "<|end_of_box|>"

SPECIAL_TOKENS = [
    ENDOFTEXT, "[MASK]", GMASK, "[sMASK]", SOP, "<eop>", SYSTEM, USER, ASSISTANT, OBSERVATION,
    BEGIN_OF_IMAGE, END_OF_IMAGE, BEGIN_OF_VIDEO, END_OF_VIDEO, IMAGE, VIDEO,
    THINK, END_THINK, ANSWER, END_ANSWER, BEGIN_OF_BOX, END_OF_BOX,
]
# `<think>`…`</box>` are single tokens in GLM-4.1V but not "special": decoding keeps them.
_NOT_SKIPPED = {THINK, END_THINK, ANSWER, END_ANSWER, BEGIN_OF_BOX, END_OF_BOX}


def train_tokenizer(texts: Iterable[str], out_dir: str, vocab_size: int = 4096):
    """Train a byte-level BPE on `texts`, add GLM-4.1V's special tokens, save to `out_dir`; returns the fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, show_progress=False,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS if t not in _NOT_SKIPPED],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator((t for t in texts if t), trainer=trainer)
    # The trainer marks its tokens special; the reasoning/box tokens must survive skip_special_tokens=True
    # decoding (verifiers read answers from <|begin_of_box|>…<|end_of_box|>), so they are added afterwards.
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in SPECIAL_TOKENS if t in _NOT_SKIPPED])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=ENDOFTEXT, pad_token=ENDOFTEXT,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t != ENDOFTEXT and t not in _NOT_SKIPPED],
        clean_up_tokenization_spaces=False,
    )
    os.makedirs(out_dir, exist_ok=True)
    fast.save_pretrained(out_dir)
    return fast


def load_tokenizer(path: str):
    """`AutoTokenizer.from_pretrained(path)`, checked to carry every GLM-4.1V special token as a single id."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    missing = [t for t in SPECIAL_TOKENS if t not in ("[MASK]", "[sMASK]", "<eop>") and _single_id(tok, t) is None]
    if missing:
        raise ValueError(f"tokenizer {path}: no single token for {missing}; GLM-4.1V's special tokens are required")
    return tok


def special_token_ids(tok) -> dict[str, int]:
    return {t: _single_id(tok, t) for t in SPECIAL_TOKENS if _single_id(tok, t) is not None}


def _single_id(tok, token: str) -> int | None:
    tid = tok.convert_tokens_to_ids(token)
    if tid is None or tid == tok.unk_token_id:
        return None
    return int(tid)
