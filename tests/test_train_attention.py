"""The `vlmloom_varlen` attention: sample boundaries, its CPU reference path, and (GPU only) PyTorch's varlen
kernel against transformers' masked sdpa on packed rows."""
from __future__ import annotations

import pytest
import torch

from vlmloom.demo import packed as synthetic
from vlmloom.trainer.attention import sample_boundaries, varlen_available
from vlmloom.trainer.data import PackedCollator
from vlmloom.trainer.loss import CausalLMLoss, model_inputs
from vlmloom.trainer.model import load_model

TINY = {"vocab_size": 256}


def test_sample_boundaries_from_text_positions():
    positions = torch.tensor([
        [0, 1, 2, 0, 1, 0, 0, 0],  # samples 3, 2, then padding (or a 1-token sample + padding): one segment
        [0, 0, 1, 0, 1, 2, 3, 4],  # a one-token sample mid-row stays alone
        [0, 0, 0, 0, 0, 0, 0, 0],  # all padding
    ])
    cu, longest = sample_boundaries(positions)
    assert cu.tolist() == [0, 3, 5, 8, 9, 11, 16, 24]
    assert longest == 8 and cu.dtype == torch.int32


def _batch(config):
    samples = synthetic.random_samples(config, 6, seed=2)
    return PackedCollator(config)([synthetic.pack_samples(samples[:3], 128), synthetic.pack_samples(samples[3:], 128)])


def test_varlen_reference_path_matches_masked_sdpa_on_cpu():
    sdpa = load_model(TINY, attn_implementation="sdpa", seed=0)
    varlen = load_model(TINY, attn_implementation="vlmloom_varlen", seed=0)
    assert varlen.config.text_config._attn_implementation == "vlmloom_varlen"
    batch = _batch(sdpa.config)
    with torch.no_grad():
        torch.testing.assert_close(CausalLMLoss(varlen).logits(batch), CausalLMLoss(sdpa).logits(batch),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not varlen_available(), reason="needs CUDA and torch.nn.attention.varlen")
def test_varlen_kernel_matches_masked_sdpa_on_gpu():
    device = torch.device("cuda")
    spec = {"vocab_size": 256, "hidden_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2,
            "intermediate_size": 512}  # head_dim 64: a size the flash kernel supports
    results = {}
    for impl in ("sdpa", "vlmloom_varlen"):
        model = load_model(spec, attn_implementation=impl, seed=0).to(device, torch.bfloat16)
        batch = _batch(model.config)
        wrapper = CausalLMLoss(model)
        loss_sum, count = wrapper(**model_inputs(batch, device))
        (loss_sum / count).backward()
        grad = model.model.language_model.layers[0].self_attn.q_proj.weight.grad.float().clone()
        with torch.no_grad():
            logits = wrapper.logits({k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()})
        results[impl] = (float(loss_sum / count), logits.float(), grad)
    (loss_a, logits_a, grad_a), (loss_b, logits_b, grad_b) = results["sdpa"], results["vlmloom_varlen"]
    assert loss_b == pytest.approx(loss_a, rel=2e-2)
    torch.testing.assert_close(logits_b, logits_a, rtol=3e-2, atol=3e-2)
    assert torch.nn.functional.cosine_similarity(grad_a.flatten(), grad_b.flatten(), dim=0) > 0.99
