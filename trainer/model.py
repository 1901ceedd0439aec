"""GLM-4.1V model for training: load a checkpoint or build a tiny one, choose attention, freeze parts.

`load_model(spec, ...)` → `Glm4vForConditionalGeneration`; `spec` is a checkpoint directory or a mapping of
tiny sizes (`tiny_glm4v_config`). `build_tiny_model_dir(out_dir, vocab_size=...)` writes a random tiny
checkpoint directory for demos and tests.
"""
from __future__ import annotations

import importlib.util
import json
import os
from typing import Any

import torch

from vlmloom.packing import tokenizer as T  # GLM-4.1V's special-token strings live there, once


def tiny_glm4v_config(
    *,
    vocab_size: int = 512,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    vision_hidden_size: int = 32,
    vision_depth: int = 1,
    vision_heads: int = 2,
    vision_intermediate_size: int = 64,
    image_token_id: int | None = None,
    image_start_token_id: int | None = None,
    image_end_token_id: int | None = None,
    video_token_id: int | None = None,
    video_start_token_id: int | None = None,
    video_end_token_id: int | None = None,
    pad_token_id: int | None = None,
    max_position_embeddings: int = 32768,
) -> Any:
    """A GLM-4.1V-shaped `Glm4vConfig` of the given sizes (patch 14, merge 2, temporal patch 2, as the real one).

    Special token ids default to the top of the vocabulary (vocab_size-6 … vocab_size-1).
    """
    from transformers import Glm4vConfig

    top = vocab_size - 1
    ids = {
        "image_token_id": image_token_id if image_token_id is not None else top,
        "image_start_token_id": image_start_token_id if image_start_token_id is not None else top - 1,
        "image_end_token_id": image_end_token_id if image_end_token_id is not None else top - 2,
        "video_token_id": video_token_id if video_token_id is not None else top - 3,
        "video_start_token_id": video_start_token_id if video_start_token_id is not None else top - 4,
        "video_end_token_id": video_end_token_id if video_end_token_id is not None else top - 5,
    }
    head_dim = hidden_size // num_attention_heads
    text_config = {
        "vocab_size": vocab_size, "hidden_size": hidden_size, "intermediate_size": intermediate_size,
        "num_hidden_layers": num_hidden_layers, "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_key_value_heads, "max_position_embeddings": max_position_embeddings,
        "pad_token_id": pad_token_id,
        # GLM-4.1V splits half the rotary dims 8:12:12 of 32 over (t, h, w); scale the split to head_dim/2.
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                            "mrope_section": _mrope_section(head_dim)},
    }
    vision_config = {
        "depth": vision_depth, "hidden_size": vision_hidden_size, "num_heads": vision_heads,
        "intermediate_size": vision_intermediate_size, "out_hidden_size": hidden_size,
        "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "image_size": 336,
    }
    return Glm4vConfig(text_config=text_config, vision_config=vision_config, **ids)


def _mrope_section(head_dim: int) -> list[int]:
    # rotary dims = head_dim * 0.5; inv_freq has head_dim/4 entries, split (t, h, w) in GLM's 8:12:12 proportion.
    n = head_dim // 4
    t = max(1, round(n * 8 / 32))
    h = (n - t) // 2
    return [t, h, n - t - h]


def build_tiny_model_dir(out_dir: str, vocab_size: int, *, tokenizer_dir: str | None = None, seed: int = 0,
                         **sizes: Any) -> str:
    """Write a random tiny GLM-4.1V checkpoint (config + safetensors) to `out_dir`; returns `out_dir`.

    With `tokenizer_dir`, the image/video special token ids (and the pad id) are read from that tokenizer so that
    packed shards made with it line up with the model; `vocab_size` must cover that tokenizer.
    """
    from transformers import Glm4vForConditionalGeneration

    if tokenizer_dir:
        sizes = {**special_token_ids(tokenizer_dir, vocab_size), **sizes}
    config = tiny_glm4v_config(vocab_size=vocab_size, **sizes)
    torch.manual_seed(seed)
    model = Glm4vForConditionalGeneration(config)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    return out_dir


def special_token_ids(tokenizer_dir: str, vocab_size: int) -> dict[str, int]:
    """Image/video/pad token ids of a saved tokenizer, as `tiny_glm4v_config` keyword arguments."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    if len(tok) > vocab_size:
        raise ValueError(f"vocab_size ({vocab_size}) < tokenizer size ({len(tok)}) of {tokenizer_dir}: "
                         "raise vocab_size")
    names = {"image_token_id": T.IMAGE, "image_start_token_id": T.BEGIN_OF_IMAGE,
             "image_end_token_id": T.END_OF_IMAGE, "video_token_id": T.VIDEO,
             "video_start_token_id": T.BEGIN_OF_VIDEO, "video_end_token_id": T.END_OF_VIDEO}
    out: dict[str, int] = {}
    for key, token in names.items():
        token_id = tok.convert_tokens_to_ids(token)
        if token_id is not None and token_id != tok.unk_token_id:
            out[key] = int(token_id)
    if tok.pad_token_id is not None:
        out["pad_token_id"] = int(tok.pad_token_id)
    return out


def resolve_model_spec(spec: str | dict[str, Any], data: list[str]) -> str | dict[str, Any]:
    """`"tiny"` or a tiny-sizes mapping without vocab_size → sizes whose vocabulary and special-token ids come
    from the first packed directory's `tokenizer/` (so a demo config needs no ids). Anything else: unchanged."""
    if spec == "tiny":
        spec = {}
    if not isinstance(spec, dict) or "vocab_size" in spec:
        return spec
    from vlmloom.schemas.packed import tokenizer_dir as packed_tokenizer_dir

    tokenizer_dir = next((packed_tokenizer_dir(d) for d in data if os.path.isdir(packed_tokenizer_dir(d))), None)
    if tokenizer_dir is None:
        raise ValueError("model: a tiny model without vocab_size takes its vocabulary from DATA/tokenizer, "
                         f"but none of {data} has one; set model.vocab_size")
    from transformers import AutoTokenizer

    vocab_size = len(AutoTokenizer.from_pretrained(tokenizer_dir))
    return {**special_token_ids(tokenizer_dir, vocab_size), "vocab_size": vocab_size, **spec}


def resolve_attn_implementation(name: str, device: torch.device) -> str:
    """`auto` → flash_attention_2 (CUDA, package installed) → vlmloom_varlen (CUDA, torch varlen_attn) → sdpa."""
    if name != "auto":
        return name
    if device.type == "cuda":
        if importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2"
        from vlmloom.trainer.attention import varlen_available

        if varlen_available():
            return "vlmloom_varlen"
    return "sdpa"


def load_model(spec: str | dict[str, Any], *, attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32,
               seed: int = 0) -> Any:
    """A `Glm4vForConditionalGeneration` from a checkpoint dir, or a random tiny one from a sizes mapping.

    The language model uses `attn_implementation`; the vision tower keeps sdpa unless flash_attention_2 is asked
    for (its own per-image varlen split already keeps images apart).
    """
    from transformers import Glm4vForConditionalGeneration

    if attn_implementation == "vlmloom_varlen":
        from vlmloom.trainer.attention import register_varlen_attention

        register_varlen_attention()
    vision_impl = "flash_attention_2" if attn_implementation == "flash_attention_2" else "sdpa"
    impl = {"text_config": attn_implementation, "vision_config": vision_impl, "": attn_implementation}
    if isinstance(spec, dict):
        torch.manual_seed(seed)
        config = tiny_glm4v_config(**spec)
        model = Glm4vForConditionalGeneration._from_config(config, attn_implementation=impl, dtype=dtype)
    else:
        if not os.path.isfile(os.path.join(spec, "config.json")):
            raise FileNotFoundError(f"model: {spec} has no config.json; give a Hugging Face checkpoint directory")
        model = Glm4vForConditionalGeneration.from_pretrained(spec, attn_implementation=impl, dtype=dtype)
    model.config.use_cache = False
    model.config.text_config.use_cache = False
    return model


def freeze_parts(model: Any, *, vision: bool, projector: bool, llm: bool) -> dict[str, int]:
    """Set requires_grad per part; returns trainable parameter counts per part.

    Parts: vision = the vision tower up to its last block (+ post layernorm); projector = downsample conv + patch
    merger; llm = language model + lm_head.
    """
    visual = model.model.visual
    projector_modules = [visual.downsample, visual.merger]
    projector_ids = {id(p) for m in projector_modules for p in m.parameters()}
    parts = {"vision": 0, "projector": 0, "llm": 0}
    for p in visual.parameters():
        part = "projector" if id(p) in projector_ids else "vision"
        p.requires_grad_(not (projector if part == "projector" else vision))
        parts[part] += _numel(p) if p.requires_grad else 0
    for p in list(model.model.language_model.parameters()) + list(model.lm_head.parameters()):
        p.requires_grad_(not llm)
        parts["llm"] += _numel(p) if p.requires_grad else 0
    return parts


def _numel(p: torch.nn.Parameter) -> int:
    return int(getattr(p, "ds_numel", p.numel()))  # ZeRO-3 partitioned parameters report their full size here


def describe(model: Any) -> dict[str, Any]:
    total = sum(_numel(p) for p in model.parameters())
    trainable = sum(_numel(p) for p in model.parameters() if p.requires_grad)
    return {"parameters": total, "trainable_parameters": trainable,
            "attn_implementation": model.config.text_config._attn_implementation}


def save_json(path: str, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
