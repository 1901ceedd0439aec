"""RL house (issue 21 item 5): the rollout-backend registry, the vLLM backend against a fake engine that has only
vLLM's public interface, the Ray path by registry name, config validation of every registry name, and the
`Objective` protocol the loop talks to."""
from __future__ import annotations

import io
import os
import sys
import types
from types import SimpleNamespace

import numpy as np
import pytest
import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")

from vlmloom.schemas.config import ConfigError, build_config  # noqa: E402
from vlmloom.trainer.config import TrainConfig, rlcs_registries  # noqa: E402
from vlmloom.trainer.rl_backends import (ROLLOUT_BACKENDS, GenerationSettings, VLLMRollout,  # noqa: E402
                                         VLLMWeightLoader, make_rollout_backend)
from vlmloom.trainer.rl_prompts import RenderedPrompt  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from vlmloom.demo import rlcs_task
    from vlmloom.packing.tokenizer import train_tokenizer

    texts = rlcs_task.tokenizer_texts(rlcs_task.make_task(4, seed=1))
    return train_tokenizer(texts, str(tmp_path_factory.mktemp("tok")), vocab_size=400)


class FakeSamplingParams:
    """vllm.SamplingParams: keeps its keyword arguments."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


class FakeLLM:
    """The public surface of vllm.LLM the backend may use (generate, collective_rpc, reset_prefix_cache) and
    nothing else: a private path such as `llm.llm_engine…` raises AttributeError. `generate` answers with
    RequestOutput-like objects whose `.outputs[i].token_ids` come from a script, in order."""

    def __init__(self, script: list[list[int]]):
        self.script = list(script)
        self.calls: list[tuple[list[dict], FakeSamplingParams]] = []
        self.rpcs: list[tuple[str, tuple]] = []
        self.resets = 0

    def generate(self, prompts, sampling_params=None, use_tqdm=True):
        self.calls.append((prompts, sampling_params))
        return [SimpleNamespace(prompt_token_ids=p["prompt_token_ids"],
                                outputs=[SimpleNamespace(token_ids=tuple(self.script.pop(0)), text="")
                                         for _ in range(sampling_params.n)]) for p in prompts]

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        self.rpcs.append((method, args))
        return [None]

    def reset_prefix_cache(self):
        self.resets += 1


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.SamplingParams = FakeSamplingParams

    def no_engine(*args, **kwargs):
        raise AssertionError("the test passes its own engine")

    module.LLM = no_engine
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (28, 28), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


def test_vllm_backend_on_a_fake_engine_with_the_public_interface(tokenizer, fake_vllm):
    """One finished response and one forced one: token-id prompts with the image, SamplingParams from the
    settings, the force-answer continuation on the same engine, weights pushed by collective_rpc, prefix cache
    reset, trained mask and decoded text."""
    tid = tokenizer.convert_tokens_to_ids
    end_think, answer, eot = tid("</think>"), tid("<answer>"), tid("<|endoftext|>")
    a, b, c = 300, 301, 302
    llm = FakeLLM([[a, end_think, b, eot, c],  # closes its thinking: kept up to <|endoftext|>
                   [a, b, c, a, b, c],  # thinks past max_think_tokens = 3: forced
                   [b, eot]])  # the forced one's continuation
    model = torch.nn.Linear(2, 3)
    settings = GenerationSettings(max_new_tokens=6, max_think_tokens=3, force_answer_tokens=2, temperature=0.7,
                                  top_p=0.9)
    backend = VLLMRollout(model, tokenizer, None, settings, llm=llm)
    prompt = RenderedPrompt(input_ids=np.array([5, 6, 7], np.int32), rope_position_ids=np.zeros((3, 3), np.int64),
                            image_grid_thw=np.zeros((1, 3), np.int64), images=[_png()], image_formats=["png"])
    [group] = backend.generate([prompt], 2)

    (first, params), (second, params2) = llm.calls
    assert [set(r) for r in first] == [{"prompt_token_ids", "multi_modal_data"}]
    assert first[0]["prompt_token_ids"] == [5, 6, 7]
    assert [im.size for im in first[0]["multi_modal_data"]["image"]] == [(28, 28)]
    assert (params.n, params.max_tokens, params.temperature, params.top_p) == (2, 6, 0.7, 0.9)
    assert params.stop_token_ids == sorted(backend.end_ids) and eot in params.stop_token_ids
    assert second[0]["prompt_token_ids"] == [5, 6, 7, a, b, c, end_think, answer]
    assert (params2.n, params2.max_tokens) == (1, 2)

    [(method, (weights,))] = llm.rpcs
    assert method == "vlmloom_load_weights" and [n for n, _ in weights] == ["weight", "bias"]
    assert torch.equal(weights[0][1], model.weight.detach()) and llm.resets == 1

    done, forced = group
    assert (done.response_ids, done.trained, done.forced, done.finished) == \
        ([a, end_think, b, eot], [True] * 4, False, True)
    assert forced.response_ids == [a, b, c, end_think, answer, b, eot]
    assert forced.trained == [True, True, True, False, False, True, True] and forced.forced and forced.finished
    assert forced.text == tokenizer.decode(forced.response_ids, skip_special_tokens=True)
    assert llm.script == []


def test_vllm_weight_loader_is_a_worker_extension():
    """collective_rpc("vlmloom_load_weights", args=(weights,)) on a worker loads them into its model."""
    got = []

    class Worker(VLLMWeightLoader):
        model_runner = SimpleNamespace(model=SimpleNamespace(load_weights=lambda weights: got.append(weights)))

    weights = [("w", torch.ones(2))]
    Worker().vlmloom_load_weights(weights)
    assert got == [weights]


def test_vllm_backend_without_vllm_says_how_to_get_it(monkeypatch, tokenizer):
    monkeypatch.setitem(sys.modules, "vllm", None)
    settings = GenerationSettings(max_new_tokens=4, max_think_tokens=2, force_answer_tokens=1, temperature=1.0,
                                  top_p=1.0)
    with pytest.raises(RuntimeError, match="pip install vllm"):
        make_rollout_backend("vllm", torch.nn.Linear(1, 1), tokenizer, None, settings)


def test_rollout_backend_registry_and_the_ray_path_by_name():
    from vlmloom.trainer.rl_remote import RayRollout

    assert ROLLOUT_BACKENDS.names() == ["transformers", "vllm"]
    settings = GenerationSettings(max_new_tokens=4, max_think_tokens=2, force_answer_tokens=1, temperature=1.0,
                                  top_p=1.0)
    with pytest.raises(KeyError, match="unknown rollout backend 'sglang'; known: transformers, vllm"):
        make_rollout_backend("sglang", None, None, None, settings)
    # the Ray actor builds its backend from the same registry: an unknown name fails before any actor starts
    with pytest.raises(KeyError, match="known: transformers, vllm"):
        RayRollout(SimpleNamespace(config=None), "", settings, num_cpus=1, backend="sglang")


@pytest.mark.parametrize("key", ["advantage", "policy_loss", "loss_agg", "rollout_backend", "packer"])
def test_config_validation_checks_every_registry_name(key):
    registry = rlcs_registries()[key]
    with pytest.raises(ConfigError) as info:
        build_config(TrainConfig, {"mode": "rlcs", "model": "m", "rlcs": {key: "no-such-name"}})
    message = str(info.value)
    assert f"rlcs.{key} 'no-such-name'" in message and registry.names()
    assert f"known: {', '.join(registry.names())}" in message
    for name in registry.names():  # every registered name is accepted
        build_config(TrainConfig, {"mode": "rlcs", "model": "m", "rlcs": {key: name}})


def test_every_rlcs_registry_key_is_checked():
    assert sorted(rlcs_registries()) == ["advantage", "loss_agg", "packer", "policy_loss", "rollout_backend"]


def test_objectives_implement_the_protocol_and_null_batches_carry_no_loss():
    from vlmloom.trainer.objectives import Objective, SupervisedObjective
    from vlmloom.trainer.rlcs import RLCSObjective

    members = [m for m in vars(Objective) if not m.startswith("_")] + list(Objective.__annotations__)
    for cls in (SupervisedObjective, RLCSObjective):
        missing = [m for m in members if m not in Objective.__annotations__ and not hasattr(cls, m)]
        assert missing == [], (cls.__name__, missing)
    batch = {"targets": torch.tensor([[3, 4, -100]]), "loss_weights": torch.tensor([[0.5, 0.5, 0.0]]),
             "stats": {"tokens": 3}}
    sft = SupervisedObjective.null_batch(batch)
    assert sft["targets"].tolist() == [[-100, -100, -100]] and batch["targets"].tolist() == [[3, 4, -100]]
    rl = RLCSObjective.null_batch(batch)
    assert rl["loss_weights"].tolist() == [[0.0, 0.0, 0.0]] and rl["targets"].tolist() == [[-100, -100, -100]]
    assert batch["loss_weights"].tolist() == [[0.5, 0.5, 0.0]] and rl["stats"] is batch["stats"]
