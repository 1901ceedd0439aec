"""RLCS on the one training loop (CPU, tiny GLM-4.1V): rollouts with images, force answering, packed policy loss
equal to the unpacked one, empty iterations that do not abort, and exact resume (2 + 2 iterations == 4)."""
from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")

from vlmloom.demo import rlcs_task  # noqa: E402
from vlmloom.schemas.config import build_config  # noqa: E402
from vlmloom.trainer import rlcs as rlcs_module  # noqa: E402
from vlmloom.trainer.config import TrainConfig  # noqa: E402
from vlmloom.trainer.loop import train  # noqa: E402
from vlmloom.trainer.rollout import Rollout, force_answer_cut, split_at_end  # noqa: E402


class HashRewards:
    """Test double of the reward system: a deterministic score from the response text (so groups of a random
    model are mixed) with the RewardResult fields the objective reads."""

    def __init__(self, config):
        self.calls = 0

    def score(self, items):
        from vlmloom.trainer.rewards import RewardResult

        self.calls += len(items)
        return [RewardResult(id=i.id, domain=i.domain, verifier="hash",
                             score=float(hashlib.sha1(i.response.encode()).digest()[0] % 2), reason="hash",
                             format_ok=False, elapsed_s=0.0) for i in items]

    def stats(self):
        return {"calls": self.calls}

    def close(self):
        pass


class ZeroRewards(HashRewards):
    def score(self, items):
        return [r.__class__(**{**r.__dict__, "score": 0.0}) for r in super().score(items)]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    out = tmp_path_factory.mktemp("rltask")
    items = rlcs_task.make_task(8, seed=1)
    model_dir = rlcs_task.build_tokenizer_and_model(str(out), items, seed=0)
    return items, model_dir


def rl_config(model_dir, output, **rlcs):
    data = {"mode": "rlcs", "model": model_dir, "output": str(output), "steps": 2, "lr": 1e-3, "progress": False,
            "tensorboard": False, "export": False, "micro_batch": 1,
            "rlcs": {"group_size": 4, "prompts_per_iteration": 2, "max_new_tokens": 6, "max_think_tokens": 6,
                     "force_answer_tokens": 3, "seq_len": 128, "expansion_max": 2.0, **rlcs}}
    return build_config(TrainConfig, data)


def test_force_answer_cut_and_split():
    END_THINK, END = 7, 0
    assert force_answer_cut([1, 2, 3, 4], end_think_id=END_THINK, end_ids=[END], max_think_tokens=3) == 3
    assert force_answer_cut([1, 7, 3, 4], end_think_id=END_THINK, end_ids=[END], max_think_tokens=3) is None
    assert force_answer_cut([1, 0, 3, 4], end_think_id=END_THINK, end_ids=[END], max_think_tokens=3) is None  # ended
    assert force_answer_cut([1, 2], end_think_id=END_THINK, end_ids=[END], max_think_tokens=3) is None  # short
    assert force_answer_cut([1, 2, 3, 7], end_think_id=END_THINK, end_ids=[END], max_think_tokens=3) == 3  # late
    assert split_at_end([4, 5, 0, 9], {0}) == ([4, 5, 0], True)
    assert split_at_end([4, 5], {0}) == ([4, 5], False)


def test_rollouts_with_images_and_force_answering(task, tmp_path):
    """A random policy never closes its thinking within 4 tokens: every rollout is force-answered, the appended
    </think><answer> is excluded from training, and the continuation is bounded."""
    from transformers import AutoTokenizer

    from vlmloom.trainer.data import load_image_processor
    from vlmloom.trainer.model import load_model
    from vlmloom.trainer.rollout import GenerationSettings, PromptRenderer, TransformersRollout

    items, model_dir = task
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = load_model(model_dir)
    prompts = rlcs_task.rl_prompts(items[:3])
    rendered = [PromptRenderer(tok).render(p) for p in prompts]
    assert all((r.input_ids == model.config.image_token_id).sum() == 9 for r in rendered)
    settings = GenerationSettings(max_new_tokens=8, max_think_tokens=4, force_answer_tokens=3, temperature=1.0,
                                  top_p=1.0)
    torch.manual_seed(0)
    groups = TransformersRollout(model, tok, load_image_processor(""), settings).generate(rendered, 3)
    assert [len(g) for g in groups] == [3, 3, 3]
    end_think, answer = tok.convert_tokens_to_ids("</think>"), tok.convert_tokens_to_ids("<answer>")
    forced = [r for g in groups for r in g if r.forced]
    assert forced, "a random 400-token policy should not emit </think> in 4 tokens"
    for r in forced:
        assert r.response_ids[4:6] == [end_think, answer] and r.trained[4:6] == [False, False]
        assert len(r.response_ids) <= 4 + 2 + 3 and all(r.trained[:4]) and all(r.trained[6:])
        assert "</think><answer>" in r.text


def test_packed_policy_loss_equals_unpacked(task):
    """The same rollouts packed into one row or each alone in its own row give the same per-sample loss terms:
    per-sample isolation holds for the RL update (4-row positions, no cross-sample attention)."""
    from transformers import AutoTokenizer

    from vlmloom.packing.shards import assemble
    from vlmloom.trainer.data import PackedCollator, load_image_processor
    from vlmloom.trainer.loss import PolicyGradientLoss, model_inputs
    from vlmloom.trainer.model import load_model
    from vlmloom.trainer.rollout import PromptRenderer, training_sample

    items, model_dir = task
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = load_model(model_dir)
    renderer = PromptRenderer(tok)
    rng = np.random.default_rng(0)
    samples = []
    for p in rlcs_task.rl_prompts(items[:3]):
        ids = rng.integers(20, 300, size=int(rng.integers(3, 9))).tolist()
        samples.append(training_sample(p.id, renderer.render(p), Rollout(ids, [True] * len(ids)),
                                       image_token_id=model.config.image_token_id, merge_size=2))
    collator = PackedCollator(model.config, image_processor=load_image_processor(""), derive_labels=False)
    wrapper = PolicyGradientLoss(model, policy_loss="clip_higher", clip_low=0.2, clip_high=0.28, temperature=0.7)

    def log_probs(rows):
        batch = collator(rows)
        with torch.no_grad():
            lp, _ = wrapper.token_log_probs(**model_inputs(batch, torch.device("cpu")))
        return lp

    packed_row = assemble(samples, 128, 0) | {"key": "packed"}
    alone = [assemble([s], 64, 0) | {"key": s.key} for s in samples]
    packed = log_probs([packed_row])
    unpacked = torch.cat([log_probs([row]) for row in alone])
    assert packed.shape[0] == sum(s.num_label_tokens for s in samples)
    torch.testing.assert_close(packed, unpacked, rtol=1e-4, atol=1e-5)


def test_all_uninformative_iterations_never_abort_and_the_budget_ends_the_run(task, tmp_path, monkeypatch):
    """Every group uninformative: empty steps, expansion grows. EMA(r): 0 → 0.5·0 + 0.5·1 = 0.5 → 0.75; the
    factor 1/(1 − EMA(r)) capped at 2 is 1 (2 prompts, 8 rollouts), then 2 (4 prompts asked), but the rollout
    budget of 12 leaves ⌈4 / 4⌉ = 1 prompt; then the run ends although `steps` is 10."""
    monkeypatch.setattr(rlcs_module, "LocalRewards", ZeroRewards)
    items, model_dir = task
    config = rl_config(model_dir, tmp_path / "zero", expansion_decay=0.5, rollout_budget=12)
    summary = train(config.__class__(**{**config.__dict__, "steps": 10}), source=rlcs_task.rl_prompts(items))
    its = summary["iterations"]
    assert summary["steps"] == 2 and len(its) == 2 and summary["stop_reason"] == "data_exhausted"
    assert all(it["uninformative_ratio"] == 1.0 and it["groups_kept"] == 0 for it in its)
    assert [it["ratio_ema"] for it in its] == [0.5, 0.75]
    assert [it["expansion_factor"] for it in its] == [1.0, 2.0]
    assert [it["prompts_rolled_out"] for it in its] == [2, 1] and [it["rollouts"] for it in its] == [8, 4]
    assert summary["losses"] == [0.0, 0.0]


def test_resume_is_exact_two_plus_two_equals_four(task, tmp_path, monkeypatch):
    """4 iterations straight == 2, checkpoint, resume, 2 more: same rollouts' rewards, same losses, same
    curriculum/expansion state (sampler RNG, online pass rates and EMA are in the checkpoint)."""
    monkeypatch.setattr(rlcs_module, "LocalRewards", HashRewards)
    items, model_dir = task
    prompts = rlcs_task.rl_prompts(items)
    straight = train(rl_config(model_dir, tmp_path / "straight", expansion_decay=0.5).__class__(
        **{**rl_config(model_dir, tmp_path / "straight", expansion_decay=0.5).__dict__, "steps": 4}), source=prompts)
    config = rl_config(model_dir, tmp_path / "split", expansion_decay=0.5)
    config = config.__class__(**{**config.__dict__, "steps": 4, "stop_after": 2})
    first = train(config, source=prompts)
    second = train(config.__class__(**{**config.__dict__, "stop_after": 0}), source=prompts)
    assert first["steps"] == 2 and second["resumed_from"].endswith("step_000000002")

    def key(it):
        return (it["mean_reward"], it["prompts_rolled_out"], it["groups_kept"], it["ratio_ema"],
                it["mean_pass_rate"])

    assert [key(it) for it in second["iterations"]] == [key(it) for it in straight["iterations"]]
    assert first["losses"] + second["losses"] == straight["losses"]
    assert any(it["groups_kept"] > 0 for it in straight["iterations"])  # updates happened, not only empty steps
    assert any(loss != 0.0 for loss in straight["losses"])


def test_rlcs_demo_on_a_curated_directory(task, tmp_path, capsys):
    """run_rlcs_demo reads qa samples (answer + domain, one image) from a curated directory and prints reward
    per domain; the real reward system scores them (a random model: every response fails the format gate)."""
    from vlmloom.demo.rlcs_demo import run_rlcs_demo
    from vlmloom.schemas.curated import write_curated_dir

    items, model_dir = task
    curated = write_curated_dir(str(tmp_path / "curated"), rlcs_task.sft_samples(items))
    result = run_rlcs_demo(curated, model_dir, str(tmp_path / "rl"), overrides={"steps": 1}, verbose=True)
    assert set(result["reward_by_domain"]) == {"text", "numeric"}
    assert result["iterations"][0]["prompts_rolled_out"] == 4
    assert "reward per domain: numeric 0.000, text 0.000" in capsys.readouterr().out


ITERATION_METRICS = ("policy_loss", "clip_fraction_high", "clip_fraction_low", "dual_clip_fraction", "ratio_mean",
                     "ratio_max", "entropy", "response_length", "format_pass_rate", "force_answer_rate",
                     "informative_group_share", "expansion_factor", "reward_text", "reward_numeric",
                     "verifier_timeouts", "verifier_errors", "mean_reward")


def test_one_iteration_logs_its_metrics_to_json_and_tensorboard(task, tmp_path, monkeypatch):
    """Issue 21 item 4: the first step of an RLCS iteration carries the iteration's figures and the policy
    figures; both reach metrics.jsonl and TensorBoard (scalars under train/)."""
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setattr(rlcs_module, "LocalRewards", HashRewards)
    items, model_dir = task
    config = rl_config(model_dir, tmp_path / "metrics", prompts_per_iteration=4, updates_per_iteration=2,
                       clip_ratio_c=3.0)
    config = config.__class__(**{**config.__dict__, "tensorboard": True})
    summary = train(config, source=rlcs_task.rl_prompts(items))
    records = [json.loads(line) for line in open(summary["metrics"], encoding="utf-8")]
    first = records[0]
    missing = [k for k in ITERATION_METRICS if k not in first]
    assert not missing, missing
    it = summary["iterations"][0]
    assert first["format_pass_rate"] == 0.0  # HashRewards marks every response as failing the format gate
    assert 0.0 <= first["force_answer_rate"] <= 1.0 and first["response_length"] > 0
    assert first["informative_group_share"] == pytest.approx(1.0 - it["uninformative_ratio"])
    assert first["expansion_factor"] == 1.0  # EMA(r) starts at 0
    assert first["verifier_timeouts"] == 0
    if it["groups_kept"]:
        assert first["ratio_mean"] == pytest.approx(1.0, abs=1e-5)  # first update: π = π_old
        assert first["clip_fraction_high"] == 0.0 and first["entropy"] > 0
        assert first["loss_tokens"] > 0
    assert all(k in records[-1] for k in ("policy_loss", "ratio_max", "clip_fraction_low", "entropy"))
    events = EventAccumulator(str(tmp_path / "metrics" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {f"train/{k}" for k in ITERATION_METRICS} <= tags



def test_demo_rl_stage_on_the_graded_task(tmp_path, capsys):
    """`make demo`'s RL stage at toy size: SFT, held-out reward before and after RLCS, one printed line per
    iteration; the rollout budget sets the iterations (16 rollouts = 2 iterations of 2 prompts × 4)."""
    from vlmloom.demo.rlcs_demo import run_rlcs_task_demo

    result = run_rlcs_task_demo(str(tmp_path), settings={
        "train_prompts": 6, "heldout": 3, "eval_k": 2, "sft_steps": 2, "group_size": 4, "prompts_per_iteration": 2,
        "rollout_budget": 16, "expansion_max": 1.0})
    its = result["iterations"]
    assert [it["rollouts"] for it in its] == [8, 8] and result["sft_summary"]["steps"] == 2
    assert 0.0 <= result["sft_heldout"] <= 1.0 and 0.0 <= result["rlcs_heldout"] <= 1.0
    out = capsys.readouterr().out
    assert out.count("informative") == 2 and "held-out reward (3 prompts × 2 samples): SFT" in out
    assert "after 16 rollouts (color " in out
    assert set(result["heldout_by_kind"]["sft"]) == {"all", "color", "position", "count"}
