"""`vlmloom_varlen`: packed causal attention through PyTorch's own varlen kernel, as a transformers attention.

(B, H, L, D) query/key/value of packed rows → (B, L, H, D) output where each token attends only to earlier
tokens of its own sample. Sample boundaries come from the text position ids (row 0 of the 4-row ids: a 0
starts a sample), which transformers hands to every attention call; no L×L mask is ever built (the name is not
in transformers' mask registry, so `create_causal_mask` returns None). On CUDA it calls
`torch.nn.attention.varlen.varlen_attn` (torch ≥ 2.9); elsewhere a per-sample sdpa loop with the same
semantics runs (slow; it exists so the plumbing can be tested on CPU). Decoding steps with a KV cache (queries
shorter than keys, as in RLCS rollouts) run plain sdpa: generated rows are never packed.

    from vlmloom.trainer.attention import register_varlen_attention
    register_varlen_attention()
    model = Glm4vForConditionalGeneration.from_pretrained(d, attn_implementation={"text_config": "vlmloom_varlen",
                                                                                   "vision_config": "sdpa", "": "sdpa"})
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F

NAME = "vlmloom_varlen"
_cache: dict[str, Any] = {"tensor": None, "version": None, "value": None}


def varlen_available() -> bool:
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def register_varlen_attention() -> None:
    """Register `vlmloom_varlen` with transformers' AttentionInterface (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, varlen_attention_forward)


def sample_boundaries(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Cumulative sample starts over the flattened (B·L) tokens, int32 [N+1], and the longest sample.

    position_ids: (B, L) text positions restarting at 0 per sample. Each row starts a sample; a trailing run of
    zeros (padding) forms one segment rather than L one-token ones: causal attention makes that harmless, since
    the run's first token — possibly a real one-token sample — still attends only to itself.
    """
    batch, length = position_ids.shape
    starts = position_ids == 0
    nonzero = position_ids != 0
    last_nonzero = length - 1 - torch.flip(nonzero, dims=[1]).int().argmax(dim=1)
    last_nonzero = torch.where(nonzero.any(dim=1), last_nonzero, torch.full_like(last_nonzero, -1))
    columns = torch.arange(length, device=position_ids.device)
    starts &= columns[None, :] <= (last_nonzero + 1)[:, None]
    starts[:, 0] = True
    flat = torch.nonzero(starts.flatten(), as_tuple=False).flatten()
    cu = torch.cat([flat, torch.tensor([batch * length], device=flat.device)]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max())


def _cached_boundaries(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    # Every layer (and each checkpointed recompute) gets the same position tensor object: compute once per
    # forward. Holding a reference to it keeps its memory from being reused by a later batch's tensor.
    if _cache["tensor"] is not position_ids or _cache["version"] != position_ids._version:
        _cache.update(tensor=position_ids, version=position_ids._version, value=sample_boundaries(position_ids))
    return _cache["value"]


def varlen_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                             position_ids: torch.Tensor | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers attention function: q (B, H, L, D), k/v (B, Hkv, L, D) → (B, L, H, D), None."""
    if position_ids is None:
        raise ValueError(f"{NAME} needs the 4-row position ids (text positions in row 0) to find sample boundaries")
    if attention_mask is not None:
        raise ValueError(f"{NAME} takes no attention mask: pass packed rows with 4-row position ids instead")
    if dropout:
        raise ValueError(f"{NAME} does not implement attention dropout")
    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    scale = scaling if scaling is not None else dim**-0.5
    if key.shape[2] != length:
        return _cached_attention(query, key, value, scale), None
    cu, max_len = _cached_boundaries(position_ids if position_ids.dim() == 2 else position_ids.view(batch, length))
    q = query.transpose(1, 2).reshape(batch * length, heads, dim)
    k = key.transpose(1, 2).reshape(batch * length, kv_heads, dim)
    v = value.transpose(1, 2).reshape(batch * length, kv_heads, dim)
    if query.is_cuda and varlen_available():
        out = _torch_varlen(q, k, v, cu, max_len, scale)
    else:
        out = _reference(q, k, v, cu, scale)
    return out.view(batch, length, heads, dim), None


def _torch_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, max_len: int,
                  scale: float) -> torch.Tensor:
    from torch.nn.attention.varlen import varlen_attn

    if q.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"{NAME} runs in bf16/fp16 on CUDA, got {q.dtype}: train with precision=bf16")
    params = inspect.signature(varlen_attn).parameters
    kwargs: dict[str, Any] = {}
    if "window_size" in params:  # torch >= 2.12: causal = window (-1, 0)
        kwargs["window_size"] = (-1, 0)
    else:  # torch 2.9-2.11
        kwargs["is_causal"] = True
    if "scale" in params:
        kwargs["scale"] = scale
    elif abs(scale - q.shape[-1] ** -0.5) > 1e-12:
        raise ValueError(f"this torch's varlen_attn has no `scale`; the model needs {scale}")
    if k.shape[1] != q.shape[1]:
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:
            repeat = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
    return varlen_attn(q, k, v, cu, cu, max_len, max_len, **kwargs)


def _cached_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """Decoding with a KV cache (`generate`, e.g. RLCS rollouts): q (B, H, Lq, D) are the last Lq positions of
    each row, k/v (B, Hkv, Lk, D) all of them → (B, Lq, H, D). Rows that generate are single unpacked
    sequences (the rollout batches prompts of equal length, no padding), so plain sdpa with the causal mask
    aligned to the end of the keys is exact; the packed boundaries matter only when queries and keys coincide."""
    q_len, k_len = query.shape[2], key.shape[2]
    mask = None
    if q_len > 1:  # a multi-token step after a prefix: bottom-right causal (sdpa's is_causal aligns top-left)
        mask = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril(k_len - q_len)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale,
                                         enable_gqa=key.shape[1] != query.shape[1])
    return out.transpose(1, 2)


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, scale: float) -> torch.Tensor:
    """Per-sample causal sdpa: (T, H, D) tokens with boundaries `cu` → (T, H, D)."""
    repeat = q.shape[1] // k.shape[1]
    outs = []
    bounds = cu.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        qs = q[start:end].transpose(0, 1)
        ks = k[start:end].transpose(0, 1).repeat_interleave(repeat, dim=0)
        vs = v[start:end].transpose(0, 1).repeat_interleave(repeat, dim=0)
        outs.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale).transpose(0, 1))
    return torch.cat(outs, dim=0)
