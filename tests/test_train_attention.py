"""The `vlmloom_varlen` attention: sample boundaries, its CPU reference path, its KV-cache decoding path, and (GPU
only) PyTorch's varlen kernel and `flash_attention_2` against transformers' masked sdpa on packed rows.

Every comparison prints one JSON line of figures (max |Δ| of logits and loss against masked sdpa at the same dtype
and against masked sdpa in fp32, the latter's own bf16 error beside it); with VLMLOOM_ATTENTION_FIGURES=PATH they are
also appended to PATH, which `bench/gpu_suite.sh` turns into its attention table.
"""
from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

from vlmloom.demo import packed as synthetic
from vlmloom.trainer.attention import sample_boundaries, varlen_available
from vlmloom.trainer.data import PackedCollator
from vlmloom.trainer.loss import CausalLMLoss, model_inputs
from vlmloom.trainer.model import load_model, tiny_glm4v_config

TINY = {"vocab_size": 256}
# On CUDA: head_dim 128 as GLM-4.1V's, a size every flash kernel supports; GQA 2:1 as the real model's 16:2 shape.
CUDA_SPEC = {"vocab_size": 256, "hidden_size": 512, "num_attention_heads": 4, "num_key_value_heads": 2,
             "intermediate_size": 1024}
FIGURES_ENV = "VLMLOOM_ATTENTION_FIGURES"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def record_figures(row: dict) -> None:
    print(json.dumps(row, sort_keys=True))
    path = os.environ.get(FIGURES_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, sort_keys=True) + "\n")


def test_sample_boundaries_from_text_positions():
    positions = torch.tensor([
        [0, 1, 2, 0, 1, 0, 0, 0],  # samples 3, 2, then padding (or a 1-token sample + padding): one segment
        [0, 0, 1, 0, 1, 2, 3, 4],  # a one-token sample mid-row stays alone
        [0, 0, 0, 0, 0, 0, 0, 0],  # all padding
    ])
    cu, longest = sample_boundaries(positions)
    assert cu.tolist() == [0, 3, 5, 8, 9, 11, 16, 24]
    assert longest == 8 and cu.dtype == torch.int32


def _batch(config, *, row_len: int = 128, samples_per_row: int = 3, max_text: int = 40):
    n = 2 * samples_per_row
    samples = synthetic.random_samples(config, n, seed=2, max_text=max_text)
    return PackedCollator(config)([synthetic.pack_samples(samples[:samples_per_row], row_len),
                                   synthetic.pack_samples(samples[samples_per_row:], row_len)])


def _run(spec: dict, impl: str, dtype: torch.dtype, device: torch.device, batch: dict) -> dict:
    """Loss (token mean), full logits (fp32, on CPU) and layer 0's q_proj gradient of one packed batch."""
    model = load_model(spec, attn_implementation=impl, seed=0).to(device, dtype)
    wrapper = CausalLMLoss(model)
    loss_sum, count = wrapper(**model_inputs(batch, device))
    loss = loss_sum / count
    loss.backward()
    grad = model.model.language_model.layers[0].self_attn.q_proj.weight.grad.float().flatten().cpu()
    with torch.no_grad():
        logits = wrapper.logits({k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()})
    return {"loss": float(loss.detach()), "logits": logits.float().cpu(), "grad": grad}


def _cases():
    for device in ("cpu", "cuda"):
        for impl in ("vlmloom_varlen", "flash_attention_2"):
            for dtype in DTYPES:
                marks = [pytest.mark.gpu] if device == "cuda" else []
                yield pytest.param(device, impl, dtype, marks=marks, id=f"{device}-{impl}-{dtype}")


@pytest.mark.parametrize("device_type,impl,dtype_name", list(_cases()))
def test_packed_attention_matches_masked_sdpa(device_type, impl, dtype_name):
    """`impl` on packed rows against transformers' masked sdpa (block-diagonal mask from the text positions).

    fp32: equal to rounding. bf16: no further from masked sdpa in fp32 than bf16 masked sdpa itself is (2x + 1e-2):
    the kernel adds no error beyond bf16's own; the loss within 2e-2 of bf16 masked sdpa's."""
    if device_type == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    if impl == "flash_attention_2" and (device_type != "cuda" or importlib.util.find_spec("flash_attn") is None):
        pytest.skip("flash_attention_2 needs CUDA and the flash_attn package")
    if impl == "vlmloom_varlen" and device_type == "cuda" and not varlen_available():
        pytest.skip("needs torch.nn.attention.varlen")
    device = torch.device(device_type)
    dtype = DTYPES[dtype_name]
    spec = CUDA_SPEC if device_type == "cuda" else TINY
    config = tiny_glm4v_config(**spec)
    # CUDA: 2 rows of 1024 tokens, 6 samples each (≤ 150 text + 18 image tokens); CPU: 2 rows of 128, 3 samples each.
    batch = _batch(config, row_len=1024, samples_per_row=6, max_text=150) if device_type == "cuda" else _batch(config)
    row = {"device": device_type, "attention": impl, "dtype": dtype_name,
           "tokens": int(batch["stats"]["tokens"]), "samples": int(batch["stats"]["samples"])}
    if device_type == "cuda" and dtype == torch.float32:
        # the flash kernels are fp16/bf16 only: the function must refuse fp32 with an error that says what to do
        with pytest.raises((ValueError, RuntimeError)) as refused:
            _run(spec, impl, dtype, device, batch)
        if impl == "vlmloom_varlen":
            assert "precision=bf16" in str(refused.value)
        record_figures({**row, "status": "unsupported", "reason": str(refused.value).splitlines()[0][:200]})
        return
    reference = _run(spec, "sdpa", torch.float32, device, batch)
    masked = reference if dtype == torch.float32 else _run(spec, "sdpa", dtype, device, batch)
    tested = _run(spec, impl, dtype, device, batch)
    figures = {
        "max_abs_logits_vs_sdpa": float((tested["logits"] - masked["logits"]).abs().max()),
        "abs_loss_vs_sdpa": abs(tested["loss"] - masked["loss"]),
        "max_abs_logits_vs_sdpa_fp32": float((tested["logits"] - reference["logits"]).abs().max()),
        "sdpa_max_abs_logits_vs_fp32": float((masked["logits"] - reference["logits"]).abs().max()),
        "grad_cosine_vs_sdpa": float(torch.nn.functional.cosine_similarity(tested["grad"], masked["grad"], dim=0)),
    }
    record_figures({**row, "status": "ok", **figures})
    if dtype == torch.float32:
        assert figures["max_abs_logits_vs_sdpa"] < 1e-5 and figures["abs_loss_vs_sdpa"] < 1e-5
        assert figures["grad_cosine_vs_sdpa"] > 0.9999
    else:
        assert figures["max_abs_logits_vs_sdpa_fp32"] <= 2 * figures["sdpa_max_abs_logits_vs_fp32"] + 1e-2
        assert figures["abs_loss_vs_sdpa"] < 2e-2
        assert figures["grad_cosine_vs_sdpa"] > 0.99


@pytest.mark.parametrize("device_type", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_varlen_decoding_with_kv_cache_matches_a_full_forward(device_type):
    """`generate` with vlmloom_varlen (RLCS rollouts on GPU resolve `auto` to it): the cached decoding steps give
    the logits a full no-cache sdpa forward of the generated sequences gives (bf16 on CUDA: within twice the
    full forward's own bf16 error against fp32, + 1e-2)."""
    if device_type == "cuda" and not varlen_available():
        pytest.skip("needs CUDA and torch.nn.attention.varlen")
    device = torch.device(device_type)
    dtype = torch.bfloat16 if device_type == "cuda" else torch.float32
    spec = CUDA_SPEC if device_type == "cuda" else TINY
    varlen = load_model(spec, attn_implementation="vlmloom_varlen", seed=0).to(device, dtype).eval()
    prompt = torch.randint(1, 200, (2, 12), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        out = varlen.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                              mm_token_type_ids=torch.zeros_like(prompt), do_sample=False, max_new_tokens=6,
                              use_cache=True, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
        sequences = out.sequences
        full = {}
        for full_dtype in {dtype, torch.float32}:
            sdpa = load_model(spec, attn_implementation="sdpa", seed=0).to(device, full_dtype).eval()
            logits = sdpa(input_ids=sequences, mm_token_type_ids=torch.zeros_like(sequences), use_cache=False).logits
            full[full_dtype] = logits[:, prompt.shape[1] - 1:-1].float()
    steps = torch.stack(out.logits, dim=1).float()  # (B, new tokens, V): the logits that chose each new token
    assert sequences.shape == (2, 18) and steps.shape == full[dtype].shape
    error = float((steps - full[dtype]).abs().max())
    own_error = float((full[dtype] - full[torch.float32]).abs().max())
    record_figures({"device": device_type, "attention": "vlmloom_varlen", "dtype": str(dtype).split(".")[-1],
                    "status": "ok", "check": "kv_cache_decoding", "max_abs_logits_vs_sdpa": error,
                    "sdpa_max_abs_logits_vs_fp32": own_error})
    assert error <= (2 * own_error + 1e-2 if dtype == torch.bfloat16 else 1e-4)
