"""The RL update on the smallest case (CPU, tiny GLM-4.1V): what the policy gradient trains on and which way it
moves the policy.

- The packed training path scores a rollout with the log-probs it was sampled with: HF's own forward (its M-RoPE
  positions, as `generate` computes them) and our packed rows (builder positions, 4-row position ids) agree.
- `RLCSObjective._update_steps` puts the loss on policy-sampled response tokens only (prompt and force-answer
  tokens excluded), broadcasts each response's advantage over its tokens, weighs each response 1 in total
  (per-sample aggregation) and stores old log-probs equal to the current policy's (ratio 1 before the update).
- Sign: one optimizer step on a batch with advantage +1 for one response and −1 for another raises the log-prob
  of the first and lowers that of the second.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("DS_ACCELERATOR", "cpu")

from vlmloom.demo import rlcs_task  # noqa: E402
from vlmloom.schemas.config import build_config  # noqa: E402
from vlmloom.schemas.packed import IGNORE_INDEX  # noqa: E402
from vlmloom.trainer.config import TrainConfig  # noqa: E402
from vlmloom.trainer.loss import model_inputs  # noqa: E402
from vlmloom.trainer.rollout import Rollout, training_sample  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from vlmloom.trainer.data import load_image_processor
    from vlmloom.trainer.model import load_model
    from vlmloom.trainer.rlcs import RLCSObjective

    out = tmp_path_factory.mktemp("rlpg")
    items = rlcs_task.make_task(4, seed=3)
    model_dir = rlcs_task.build_tokenizer_and_model(str(out), items, seed=0)
    config = build_config(TrainConfig, {
        "mode": "rlcs", "model": model_dir, "output": str(out / "run"), "micro_batch": 2,
        "rlcs": {"group_size": 2, "prompts_per_iteration": 2, "max_new_tokens": 8, "max_think_tokens": 8,
                 "force_answer_tokens": 3, "seq_len": 128, "rewards": {"workers": 0}}})
    torch.manual_seed(0)
    model = load_model(model_dir)
    objective = RLCSObjective(config, model, load_image_processor(""), prompts=rlcs_task.rl_prompts(items), rank=0,
                              world_size=1, device=CPU)
    yield objective
    objective.close()


def rollouts(objective):
    """Two prompts × two responses from the vocabulary's ordinary tokens; response 1 of prompt 0 carries two
    force-answer tokens (not sampled by the policy)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(objective.tokenizer_dir)
    end_think, answer = tok.convert_tokens_to_ids("</think>"), tok.convert_tokens_to_ids("<answer>")
    rng = np.random.default_rng(0)
    special = set(tok.all_special_ids) | {end_think, answer}
    ordinary = [i for i in range(len(tok)) if i not in special and i >= 20]
    out = []
    for g in range(2):
        group = []
        for j in range(2):
            ids = rng.choice(ordinary, size=5 + g + j).tolist()
            trained = [True] * len(ids)
            if (g, j) == (0, 1):
                ids[2:4], trained[2:4] = [end_think, answer], [False, False]
            group.append(Rollout(ids, trained))
        out.append(group)
    return out


def test_packed_log_probs_equal_hf_forward(setup):
    """The log-prob our packed path gives a response token is the one HF's forward (positions computed as in
    generation, from image_grid_thw) gives: the update scores what was sampled."""
    objective = setup
    model, groups = objective.model, rollouts(objective)
    for g, group in enumerate(groups):
        prompt = objective.renderer.render(objective.prompts[g])
        for j, rollout in enumerate(group):
            sample = training_sample(f"s{g}{j}", prompt, rollout, image_token_id=objective.image_token_id,
                                     merge_size=objective.merge_size)
            batch = objective.collator([_row(objective, [sample])])
            with torch.no_grad():
                ours, _ = objective.wrapper.token_log_probs(**model_inputs(batch, CPU))
                ids = torch.as_tensor(sample.input_ids, dtype=torch.long)[None]
                logits = model(input_ids=ids, pixel_values=batch["pixel_values"],
                               image_grid_thw=batch["image_grid_thw"],
                               mm_token_type_ids=(ids == objective.image_token_id).long(), use_cache=False).logits[0]
            n = len(prompt.input_ids)
            response = torch.as_tensor(rollout.response_ids)
            hf = torch.log_softmax(logits[n - 1:-1].float(), dim=-1).gather(1, response[:, None])[:, 0]
            torch.testing.assert_close(ours, hf[torch.as_tensor(rollout.trained)], rtol=1e-4, atol=1e-4)


def _row(objective, samples):
    from vlmloom.packing.shards import assemble

    row = assemble(samples, objective.rc.seq_len, objective.pad_id)
    row["key"] = "row"
    return row


def test_update_plumbing_and_sign(setup):
    objective = setup
    groups = rollouts(objective)
    samples, advantages, trained = [], [], []
    sign = {(0, 0): 1.0, (0, 1): -1.0, (1, 0): -1.0, (1, 1): 1.0}
    for g, group in enumerate(groups):
        for j, rollout in enumerate(group):
            samples.append(training_sample(f"s{g}{j}", objective.renderer.render(objective.prompts[g]), rollout,
                                           image_token_id=objective.image_token_id, merge_size=objective.merge_size))
            advantages.append(sign[g, j])
            trained.append(sum(rollout.trained))
    steps = objective._update_steps(samples, advantages)
    assert len(steps) == 1
    batches = steps[0]

    # plumbing: loss tokens = policy-sampled response tokens; advantage per response; each response weighs 1
    owners, adv_seen, weight_per_sample = [], {}, {}
    for batch, rows in zip(batches, _rows_of(objective, samples, batches)):
        mask = batch["targets"] != IGNORE_INDEX
        owner = torch.from_numpy(np.stack([r["sample_of_token"] for r in rows]))
        assert (batch["advantages"][~mask] == 0).all() and (batch["loss_weights"][~mask] == 0).all()
        for s in owner[mask].unique().tolist():
            sel = mask & (owner == s)
            adv_seen[s] = batch["advantages"][sel].unique().tolist()
            weight_per_sample[s] = float(batch["loss_weights"][sel].sum())
            owners.append((s, int(sel.sum())))
        with torch.no_grad():
            now, _ = objective.wrapper.token_log_probs(**model_inputs(batch, CPU))
        torch.testing.assert_close(batch["old_log_probs"][mask], now, rtol=1e-5, atol=1e-5)  # ratio 1 before update
    assert sorted(owners) == [(s, trained[s]) for s in range(len(samples))]  # force-answer tokens excluded
    assert adv_seen == {s: [advantages[s]] for s in range(len(samples))}
    assert weight_per_sample == pytest.approx({s: 1.0 for s in range(len(samples))})
    assert sum(objective.denominator(b) for b in batches) == pytest.approx(len(samples))

    # sign: one step of plain SGD on the step-normalised policy loss
    def response_log_probs():
        out = {}
        with torch.no_grad():
            for batch, rows in zip(batches, _rows_of(objective, samples, batches)):
                lp, _ = objective.wrapper.token_log_probs(**model_inputs(batch, CPU))
                owner = torch.from_numpy(np.stack([r["sample_of_token"] for r in rows]))[batch["targets"] != -100]
                for s in owner.unique().tolist():
                    out[s] = float(lp[owner == s].sum())
        return out

    before = response_log_probs()
    params = [p for p in objective.wrapper.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.05)
    denominator = sum(objective.denominator(b) for b in batches)
    objective.wrapper.train()
    for batch in batches:
        loss_sum, _ = objective.wrapper(**objective.inputs(batch, CPU))
        (loss_sum / denominator).backward()
    optimizer.step()
    after = response_log_probs()
    for s, a in enumerate(advantages):
        assert (after[s] - before[s]) * a > 0, (s, a, before[s], after[s])


def _rows_of(objective, samples, batches):
    """The packed rows behind each collated batch, rebuilt as `_update_steps` built them (same packer, same
    order), so the test can read `sample_of_token`."""
    from vlmloom.packing.packers import plan_bins
    from vlmloom.packing.shards import assemble

    L = objective.rc.seq_len
    rows = []
    for members in plan_bins([len(s) for s in samples], L, packer=objective.rc.packer, window=0):
        row = assemble([samples[m] for m in members], L, objective.pad_id)
        row["sample_of_token"] = np.concatenate(
            [np.full(len(samples[m]), m, np.int64) for m in members] +
            [np.full(L - int(row["seq_lens"].sum()), -1, np.int64)])
        rows.append(row)
    mb = objective.config.micro_batch
    return [rows[i:i + mb] for i in range(0, len(rows), mb)]


def test_partly_correct_demonstrations():
    """The toy's SFT noise: a share of demonstrations answer another word of the same kind, reasoning included;
    deterministic per seed; the ground truth the reward system reads is untouched."""
    items = rlcs_task.make_task(200, seed=5, colors=("red", "blue", "green"), max_count=3)
    assert rlcs_task.demonstration_answers(items, noise=0.0) == [it.answer for it in items]
    wrong = rlcs_task.demonstration_answers(items, noise=1.0, seed=1)
    assert all(w != it.answer for w, it in zip(wrong, items))
    assert all((w in ("red", "blue", "green")) == (it.kind == "color") for w, it in zip(wrong, items))
    half = rlcs_task.demonstration_answers(items, noise=0.5, seed=2)
    assert half == rlcs_task.demonstration_answers(items, noise=0.5, seed=2)
    assert 0.35 < sum(h != it.answer for h, it in zip(half, items)) / len(items) < 0.65
    samples = rlcs_task.sft_samples(items, noise=0.5, seed=2)
    for s, h, it in zip(samples, half, items):
        assert s.answer == it.answer and f"<|begin_of_box|>{h}<|end_of_box|>" in s.messages[-1].content
        assert (f"The image is {h}." if it.kind == "color" else "squares") in s.messages[-1].content
    with pytest.raises(ValueError):
        rlcs_task.demonstration_answers(items, noise=1.5)
