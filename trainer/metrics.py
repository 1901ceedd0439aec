"""Training metrics: model FLOPs of a step, MFU against a per-device peak, JSONL + TensorBoard logging.

`step_flops(config, stats)` counts useful training FLOPs (forward + backward = 3 × forward) of the tokens that
were really there: padding is not counted, and causal attention is counted per packed sample (Σ s²), so packed
and padded batches of the same samples do the same useful work and MFU compares them fairly.
"""
from __future__ import annotations

import json
import os
from typing import Any

import torch

# Dense bf16 tensor-core peak per device, TFLOP/s (vendor datasheets, SXM parts; no sparsity).
PEAK_BF16_TFLOPS = {
    "H200": 989.0, "H100": 989.0, "H800": 989.0, "H20": 148.0, "GH200": 989.0, "B200": 2250.0,
    "A100": 312.0, "A800": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0, "RTX 4090": 165.0,
}


def peak_tflops(device: torch.device, precision: str, override: float = 0.0) -> float | None:
    """Peak TFLOP/s of `device` at `precision` ("bf16"|"fp32"), or None when unknown (CPU: no MFU)."""
    if override > 0:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if key in name:
            peak = PEAK_BF16_TFLOPS[key]
            return peak if precision == "bf16" else peak / 2  # TF32 tensor cores run at half the bf16 rate
    return None


def step_flops(model_config: Any, stats: dict[str, float]) -> float:
    """Training FLOPs of batches with summed `stats` (from `data.batch_stats`): tokens, label_tokens,
    sum_sq_len (Σ sample length²), patches."""
    t = model_config.text_config
    v = model_config.vision_config
    head_dim = t.hidden_size // t.num_attention_heads
    attn_proj = (2 * t.num_attention_heads * head_dim * t.hidden_size
                 + 2 * t.num_key_value_heads * head_dim * t.hidden_size)
    mlp = 3 * t.hidden_size * t.intermediate_size
    dense_per_token = 2 * t.num_hidden_layers * (attn_proj + mlp)  # forward, multiply-add = 2
    # causal attention of a sample of length s: QKᵀ and AV over s²/2 pairs, 2 FLOPs each, per head dim.
    attention = 2 * 2 * t.num_hidden_layers * t.num_attention_heads * head_dim * stats["sum_sq_len"] / 2
    lm_head = 2 * t.hidden_size * t.vocab_size * stats["label_tokens"]  # logits only at label positions
    vision_block = 2 * (4 * v.hidden_size**2 + 3 * v.hidden_size * v.intermediate_size)
    patch_embed = 2 * v.hidden_size * 3 * v.temporal_patch_size * v.patch_size**2
    vision = stats["patches"] * (v.depth * vision_block + patch_embed)
    forward = dense_per_token * stats["tokens"] + attention + lm_head + vision
    return 3.0 * forward


def sum_stats(stats: list[dict[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in stats:
        for k, val in s.items():
            out[k] = out.get(k, 0) + val
    return out


class MetricsLogger:
    """Appends one JSON object per record to `output/metrics.jsonl` and mirrors scalars to TensorBoard."""

    def __init__(self, output: str, *, tensorboard: bool = True, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(output, "metrics.jsonl")
        self.writer = None
        if enabled:
            os.makedirs(output, exist_ok=True)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(os.path.join(output, "tensorboard"))

    def log(self, step: int, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": step, **record}, sort_keys=True) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and value is not None:
                    self.writer.add_scalar(f"train/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
