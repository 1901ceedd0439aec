"""Curriculum sampler (online + offline pass rates, tiers, exact state round trip), pass-rate files, the
`vlmloom rlcs-passk` command on JSONL prompts with images and the real reward system, and Ray actors."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from vlmloom.schemas.config import ConfigError, build_config
from vlmloom.trainer.config import CurriculumConfig, TrainConfig
from vlmloom.trainer.curriculum import CurriculumSampler, read_pass_rates, write_pass_rates


def test_online_updates_move_sampling_away_from_solved_and_unsolved():
    ids = [f"p{i}" for i in range(30)]
    sampler = CurriculumSampler(ids, CurriculumConfig(online_decay=0.5), group_size=8, seed=0)
    assert np.allclose(sampler.probabilities(), 1 / 30)  # everything unknown: one tier, uniform
    for i in range(10):
        sampler.update(i, [True] * 8)  # always solved
        sampler.update(10 + i, [False] * 8)  # never solved
        sampler.update(20 + i, [True, False] * 4)  # balanced
    probs = sampler.probabilities()
    assert probs[20:].min() > 2 * probs[:20].max()  # 0.94 (8.5 of 9 with the prior) still gets 1/2.7
    draws = np.bincount([x for _ in range(300) for x in sampler.sample(5)], minlength=30)
    assert draws[20:].sum() > draws[:20].sum()  # 10 balanced prompts outdraw the 20 others
    # decay: one fresh all-correct group after an all-wrong history moves the rate past the midpoint of the two;
    # the unknown prior (½ at one pseudo-trial) has halved once per group: 0.25 after two
    sampler.update(10, [True] * 8)
    assert sampler.pass_rates()[10] == pytest.approx((0.25 * 0.5 + 0.5 * 0 + 8) / (0.25 + 0.5 * 8 + 8))


def test_offline_pass_rates_are_a_prior(tmp_path):
    path = write_pass_rates(str(tmp_path / "rates.jsonl"), [{"id": "a", "pass_rate": 1.0, "k": 8},
                                                            {"id": "b", "pass_rate": 0.25, "k": 8}])
    offline = read_pass_rates(path)
    assert offline == {"a": 1.0, "b": 0.25}
    sampler = CurriculumSampler(["a", "b", "c"], CurriculumConfig(offline_weight=4.0), group_size=4, seed=0,
                                offline=offline)
    assert sampler.pass_rates().tolist() == [1.0, 0.25, 0.5]
    sampler.update(0, [False] * 4)  # the model forgot: the prior fades to 2 pseudo-trials at 1.0 vs 4 failures
    assert sampler.pass_rates()[0] == pytest.approx(2 / 6)
    (tmp_path / "bad.jsonl").write_text('{"id": "a", "pass_rate": 1.5}\n')
    with pytest.raises(ValueError, match="outside"):
        read_pass_rates(str(tmp_path / "bad.jsonl"))


def test_sampler_state_round_trip_is_exact():
    ids = [f"p{i}" for i in range(12)]
    a = CurriculumSampler(ids, CurriculumConfig(), group_size=4, seed=7)
    for i in a.sample(5):
        a.update(i, [i % 2 == 0, True, False, True])
    b = CurriculumSampler(ids, CurriculumConfig(), group_size=4, seed=999)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))  # plain data: survives any serialiser
    assert a.sample(9) == b.sample(9)
    assert np.array_equal(a.pass_rates(), b.pass_rates())
    with pytest.raises(ValueError, match="different prompt set"):
        CurriculumSampler(ids[:-1], CurriculumConfig(), group_size=4, seed=0).load_state_dict(a.state_dict())


def test_disabled_curriculum_is_uniform_and_config_errors():
    sampler = CurriculumSampler(["a", "b"], CurriculumConfig(enabled=False), group_size=4, seed=0)
    sampler.update(0, [True] * 4)
    assert sampler.probabilities().tolist() == [0.5, 0.5]
    assert sorted(sampler.sample(2)) == [0, 1] and len(sampler.sample(5)) == 5
    with pytest.raises(ConfigError, match="weight_fn"):
        build_config(TrainConfig, {"model": "x", "mode": "rlcs", "rlcs": {"curriculum": {"weight_fn": "nope"}}})
    with pytest.raises(ConfigError, match="max_think_tokens"):
        build_config(TrainConfig, {"model": "x", "mode": "rlcs", "rlcs": {"max_think_tokens": 99, "max_new_tokens": 9}})
    with pytest.raises(ConfigError, match="ZeRO-3"):
        build_config(TrainConfig, {"model": "x", "mode": "rlcs", "zero_stage": 3})


def test_rlcs_passk_command_on_jsonl_prompts(tmp_path):
    """`vlmloom rlcs-passk` with JSONL prompts whose images are files: k rollouts each, scored by the real reward
    system (an untrained model breaks the format, so every pass rate is 0 — and every row is written)."""
    from vlmloom.demo import rlcs_task
    from vlmloom.cli.main import main

    items = rlcs_task.make_task(4, seed=2)
    model_dir = rlcs_task.build_tokenizer_and_model(str(tmp_path), items)
    with open(tmp_path / "prompts.jsonl", "w") as fh:
        for it in items:
            (tmp_path / f"{it.id}.png").write_bytes(it.image)
            fh.write(json.dumps({"id": it.id, "domain": it.domain, "answer": it.answer, "question": it.question,
                                 "images": [f"{it.id}.png"]}) + "\n")
    config = {"mode": "rlcs", "model": model_dir,
              "rlcs": {"prompts": [str(tmp_path / "prompts.jsonl")], "max_new_tokens": 4, "max_think_tokens": 3,
                       "force_answer_tokens": 2, "rewards": {"workers": 0}}}
    (tmp_path / "rl.yaml").write_text(json.dumps(config))
    out = tmp_path / "rates.jsonl"
    assert main(["rlcs-passk", "--config", str(tmp_path / "rl.yaml"), "--k", "3", "--output", str(out)]) == 0
    rows = [json.loads(line) for line in open(out)]
    assert [r["id"] for r in rows] == [it.id for it in items]
    assert all(r["k"] == 3 and r["pass_rate"] == 0.0 for r in rows)
    assert read_pass_rates(str(out)) == {it.id: 0.0 for it in items}


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray not installed (pip install 'vlmloom[rl]')")
def test_ray_reward_and_rollout_actors(tmp_path):
    """With ray: true, rewards are scored in a Ray actor and rollouts generated by an actor holding a copy of
    the policy; both give what the in-process versions give.

    The check runs in a fresh interpreter: `ray.init` starts its servers through `subprocess.Popen(preexec_fn=...)`,
    which runs Python in the forked child, and Python documents that as unsafe in a threaded process. By this point
    the pytest process holds Beam's and torch's thread pools, and one CI run hung there for 10 minutes (the child
    never exec'd, the parent waited on its error pipe). `vlmloom train` (mode: rlcs) starts Ray before its process
    group, model and DeepSpeed engine (trainer/loop.setup)."""
    code = (f"import runpy; runpy.run_path({__file__!r})['_ray_actors_check']({str(tmp_path)!r}); "
            "print('ray check passed')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=400)
    assert done.returncode == 0 and "ray check passed" in done.stdout, done.stdout[-4000:] + done.stderr[-4000:]


def _ray_actors_check(tmp: str) -> None:
    import ray
    import torch
    from transformers import AutoTokenizer

    from vlmloom.demo import rlcs_task
    from vlmloom.trainer.data import load_image_processor
    from vlmloom.trainer.model import load_model
    from vlmloom.trainer.rewards import RewardItem
    from vlmloom.trainer.rollout import (GenerationSettings, LocalRewards, PromptRenderer, RayRewards, RayRollout,
                                         TransformersRollout)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        items = [RewardItem(id="a", domain="text", answer="red",
                            response="<think>x</think><answer><|begin_of_box|>red<|end_of_box|></answer>"),
                 RewardItem(id="b", domain="numeric", answer="3",
                            response="<think>x</think><answer><|begin_of_box|>4<|end_of_box|></answer>")]
        remote = RayRewards({"workers": 0}, num_cpus=2)
        local = LocalRewards({"workers": 0})
        assert [r.score for r in remote.score(items)] == [r.score for r in local.score(items)] == [1.0, 0.0]
        remote.close()
        local.close()

        task = rlcs_task.make_task(2, seed=3)
        model_dir = rlcs_task.build_tokenizer_and_model(tmp, task)
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = load_model(model_dir)
        rendered = [PromptRenderer(tok).render(p) for p in rlcs_task.rl_prompts(task)]
        settings = GenerationSettings(max_new_tokens=5, max_think_tokens=5, force_answer_tokens=2, temperature=1.0,
                                      top_p=1.0)
        torch.manual_seed(5)
        actor = RayRollout(model, model_dir, settings, num_cpus=2)
        remote_groups = actor.generate(rendered, 2)
        actor.close()
        assert [len(g) for g in remote_groups] == [2, 2]
        assert all(len(r.response_ids) >= 1 for g in remote_groups for r in g)
        torch.manual_seed(5)
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        torch.manual_seed(seed)
        local_groups = TransformersRollout(model, tok, load_image_processor(""), settings).generate(rendered, 2)
        assert [[r.response_ids for r in g] for g in remote_groups] == [[r.response_ids for r in g] for g in local_groups]
    finally:
        ray.shutdown()
