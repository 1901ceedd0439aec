"""The DeepSpeed training loop on CPU (gloo, fp32, one process): accumulation, ZeRO stages, exact resume,
export, metrics. Records are synthetic packed sequences of a tiny GLM-4.1V (hidden 64, 2 layers)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")

from vlmloom.schemas.config import build_config  # noqa: E402
from vlmloom.demo import packed as synthetic  # noqa: E402
from vlmloom.trainer.config import TrainConfig  # noqa: E402
from vlmloom.trainer.loop import train  # noqa: E402
from vlmloom.trainer.model import tiny_glm4v_config  # noqa: E402

TINY = {"vocab_size": 256}


@pytest.fixture(scope="module")
def records():
    config = tiny_glm4v_config(**TINY)
    samples = synthetic.random_samples(config, 40, seed=3, min_text=6, max_text=40)
    return synthetic.greedy_pack(samples, 96)


def run(records, output, **overrides):
    data = {"model": TINY, "output": str(output), "steps": 4, "lr": 3e-3, "warmup_steps": 1, "progress": False,
            "tensorboard": False, "export": False, **overrides}
    return train(build_config(TrainConfig, data), source=synthetic.ListSource(records, epochs=0))


def test_resume_is_exact(records, tmp_path):
    """6 steps straight == 3 steps, stop, resume, 3 more steps: identical losses (model, optimizer, scheduler,
    RNG and data position all restored)."""
    common = {"steps": 6, "grad_accum": 2, "micro_batch": 1}
    straight = run(records, tmp_path / "straight", checkpoint_every=2, keep_checkpoints=2, **common)
    kept = sorted(d for d in os.listdir(tmp_path / "straight" / "checkpoints") if d.startswith("step_"))
    assert kept == ["step_000000004", "step_000000006"]
    first = run(records, tmp_path / "split", stop_after=3, **common)
    assert first["stop_reason"] == "stop_after" and first["steps"] == 3
    assert os.path.isfile(tmp_path / "split" / "checkpoints" / "step_000000003" / "trainer_state_rank0.pt")
    second = run(records, tmp_path / "split", **common)
    assert second["resumed_from"].endswith("step_000000003")
    assert first["losses"] + second["losses"] == straight["losses"]
    assert straight["losses"][-1] < straight["losses"][0]


def test_grad_accumulation_equals_one_big_batch(records, tmp_path):
    """micro_batch 2 × accum 1 and micro_batch 1 × accum 2 see the same rows per step; with token-normalised
    accumulation the losses (and so the updates) agree although the rows hold different label counts."""
    counts = [int((np.asarray(r["labels"]) != -100).sum()) for r in records[:2]]
    assert counts[0] != counts[1]
    big = run(records, tmp_path / "big", steps=3, micro_batch=2, grad_accum=1)
    acc = run(records, tmp_path / "acc", steps=3, micro_batch=1, grad_accum=2)
    np.testing.assert_allclose(acc["losses"], big["losses"], rtol=1e-5)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_stages_match_stage_0(records, tmp_path, stage):
    from safetensors.torch import load_file

    base = run(records, tmp_path / "z0", steps=3, grad_accum=2, zero_stage=0, export=True)
    zero = run(records, tmp_path / f"z{stage}", steps=3, grad_accum=2, zero_stage=stage, export=True)
    np.testing.assert_allclose(zero["losses"], base["losses"], rtol=1e-5)
    weights = [load_file(os.path.join(run_["export_dir"], "model.safetensors")) for run_ in (base, zero)]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        torch.testing.assert_close(weights[1][name], weights[0][name], rtol=1e-3, atol=1e-4)
    norms = [[json.loads(line)["grad_norm"] for line in open(tmp_path / d / "metrics.jsonl")]
             for d in ("z0", f"z{stage}")]
    assert all(n is not None and n > 0 for n in norms[0])
    np.testing.assert_allclose(norms[1], norms[0], rtol=1e-4)
    assert os.path.isfile(tmp_path / f"z{stage}" / "hf_model" / "config.json")


def test_export_metrics_and_frozen_parts(records, tmp_path):
    from transformers import Glm4vForConditionalGeneration

    out = tmp_path / "run"
    summary = run(records, out, steps=3, freeze_vision=True, tensorboard=True, export=True, log_every=1)
    assert summary["export_dir"] == str(out / "hf_model")
    exported = Glm4vForConditionalGeneration.from_pretrained(summary["export_dir"])
    torch.manual_seed(0)  # load_model's seed for a tiny spec: the weights training started from
    initial = Glm4vForConditionalGeneration._from_config(tiny_glm4v_config(**TINY))
    init_state, final_state = initial.state_dict(), exported.state_dict()
    vision_block = "model.visual.blocks.0.mlp.gate_proj.weight"
    assert torch.equal(final_state[vision_block], init_state[vision_block])  # frozen: unchanged
    lm = "model.language_model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(final_state[lm], init_state[lm])  # trained
    assert os.path.isfile(out / "hf_model" / "preprocessor_config.json")

    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3]
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "padding_fraction", "tflops_per_device", "mfu"):
        assert key in lines[0]
    assert lines[0]["mfu"] is None  # no peak known for a CPU
    assert 0.0 <= lines[0]["padding_fraction"] < 1.0 and lines[0]["tokens_per_s"] > 0
    assert [r["loss"] for r in lines] == summary["losses"]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(out / "tensorboard"))


def test_data_exhaustion_stops_cleanly(records, tmp_path):
    config = build_config(TrainConfig, {"model": TINY, "output": str(tmp_path / "x"), "steps": 50, "export": False,
                                        "progress": False, "tensorboard": False})
    summary = train(config, source=synthetic.ListSource(records[:3], epochs=1))
    assert summary["stop_reason"] == "data_exhausted" and summary["steps"] == 3


DP_SCRIPT = """
import json, os, sys
os.environ.setdefault("DS_ACCELERATOR", "cpu")
from vlmloom.schemas.config import build_config
from vlmloom.demo import packed as synthetic
from vlmloom.trainer.config import TrainConfig
from vlmloom.trainer.loop import train
from vlmloom.trainer.model import tiny_glm4v_config

rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
samples = synthetic.random_samples(tiny_glm4v_config(vocab_size=256), 40, seed=3, min_text=6, max_text=40)
records = synthetic.greedy_pack(samples, 96)
data = {"model": {"vocab_size": 256}, "output": sys.argv[1], "steps": 3, "lr": 3e-3, "warmup_steps": 1,
        "progress": False, "tensorboard": False, "export": False, "micro_batch": int(sys.argv[2]),
        "zero_stage": 2}
summary = train(build_config(TrainConfig, data), source=synthetic.ListSource(records[rank::world], epochs=0))
with open(os.path.join(sys.argv[1], f"summary_rank{rank}.json"), "w") as fh:
    json.dump(summary, fh)
"""


@pytest.mark.slow
def test_two_data_parallel_ranks_equal_one_rank_with_both_rows(records, tmp_path):
    """Rank r reads rows r, r+2, …; the loss is normalised by the label tokens of both ranks, so two gloo
    ranks × micro_batch 1 train exactly like one rank × micro_batch 2 reading rows in order."""
    import subprocess
    import sys

    script = tmp_path / "dp.py"
    script.write_text(DP_SCRIPT)
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(_free_port()), str(script),
                    str(tmp_path / "dp"), "1"], check=True, env=env, timeout=300)
    dp = [json.loads((tmp_path / "dp" / f"summary_rank{r}.json").read_text()) for r in (0, 1)]
    one = run(records, tmp_path / "one", steps=3, micro_batch=2)
    assert dp[0]["world_size"] == 2 and dp[0]["losses"] == dp[1]["losses"]
    np.testing.assert_allclose(dp[0]["losses"], one["losses"], rtol=1e-5)


def _free_port() -> int:
    from vlmloom.trainer.loop import free_port

    return free_port()


def test_zero3_from_a_checkpoint_dir_builds_partitioned_and_matches_stage_0(records, tmp_path):
    from vlmloom.trainer.model import build_tiny_model_dir

    model_dir = build_tiny_model_dir(str(tmp_path / "ckpt"), vocab_size=256, seed=1)
    base = run(records, tmp_path / "z0", model=model_dir, steps=2, zero_stage=0)
    zero3 = run(records, tmp_path / "z3", model=model_dir, steps=2, zero_stage=3)
    np.testing.assert_allclose(zero3["losses"], base["losses"], rtol=1e-5)
    info = json.loads((tmp_path / "z3" / "run.json").read_text())
    assert info["model"]["parameters"] == json.loads((tmp_path / "z0" / "run.json").read_text())["model"]["parameters"]


def test_gradient_checkpointing_and_varlen_attention_train_like_the_default(records, tmp_path):
    base = run(records, tmp_path / "base", steps=2)
    checkpointed = run(records, tmp_path / "gc", steps=2, gradient_checkpointing=True)
    varlen = run(records, tmp_path / "varlen", steps=2, attn_implementation="vlmloom_varlen")
    assert varlen["attn_implementation"] == "vlmloom_varlen"
    np.testing.assert_allclose(checkpointed["losses"], base["losses"], rtol=1e-5)
    np.testing.assert_allclose(varlen["losses"], base["losses"], rtol=1e-5)


def test_a_plain_iterable_feeds_the_loop(records, tmp_path):
    """The record source is pluggable (RLCS will hand its own): a generator works too, without exact resume."""
    config = build_config(TrainConfig, {"model": TINY, "output": str(tmp_path / "gen"), "steps": 2, "export": False,
                                        "progress": False, "tensorboard": False})
    summary = train(config, source=(r for r in records))
    assert summary["steps"] == 2 and summary["stop_reason"] == "steps_done"
