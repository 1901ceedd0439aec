"""Trainer pieces without DeepSpeed: collator, packed-vs-unpacked equality, freezing, config and CLI parsing."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vlmloom.schemas.config import ConfigError, build_config
from vlmloom.schemas.packed import IGNORE_INDEX
from vlmloom.demo import packed as synthetic
from vlmloom.trainer.config import TrainConfig
from vlmloom.trainer.data import PackedCollator, pretrain_labels, shifted_targets
from vlmloom.trainer.loss import CausalLMLoss, model_inputs
from vlmloom.trainer.model import freeze_parts, load_model, tiny_glm4v_config

TINY = {"vocab_size": 256}
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model():
    return load_model(TINY, attn_implementation="sdpa", seed=0).eval()


@pytest.fixture(scope="module")
def samples(model):
    # two with a 56x56 image (grid 1x6x6 → 9 tokens), two text-only; different lengths
    return synthetic.random_samples(model.config, 4, seed=1)


def test_shifted_targets_stop_at_sample_boundaries():
    labels = np.array([10, 11, 12, 20, 21, -100, -100], dtype=np.int32)
    targets = shifted_targets(labels, np.array([3, 2], dtype=np.int32))
    # position 2 (last of sample 1) must not predict 20; position 4 (last of sample 2) must not predict padding
    assert targets.tolist() == [11, 12, -100, 21, -100, -100, -100]


def test_pretrain_labels_skip_image_tokens_and_padding():
    ids = np.array([5, 255, 255, 6, 7, 0, 0], dtype=np.int32)
    labels = pretrain_labels(ids, np.array([5]), ignore_ids={255})
    assert labels.tolist() == [5, -100, -100, 6, 7, -100, -100]


def test_collator_shapes_grid_and_token_types(model, samples):
    record = synthetic.pack_samples(samples, 160)
    batch = PackedCollator(model.config)([record, synthetic.pad_sample(samples[1], 160)])
    assert batch["input_ids"].shape == (2, 160)
    assert batch["position_ids"].shape == (4, 2, 160)
    assert torch.equal(batch["position_ids"][:, 0], torch.from_numpy(record["position_ids"]).long())
    assert batch["image_grid_thw"].tolist() == [[1, 6, 6], [1, 6, 6]]
    assert batch["pixel_values"].shape == (2 * 36, 3 * 2 * 14 * 14)
    image_tokens = batch["input_ids"] == model.config.image_token_id
    assert torch.equal(batch["mm_token_type_ids"].bool(), image_tokens)
    assert int(image_tokens.sum()) == 18
    stats = batch["stats"]
    assert stats["tokens"] == sum(len(s["input_ids"]) for s in samples) + len(samples[1]["input_ids"])
    assert stats["label_tokens"] == int((batch["targets"] != IGNORE_INDEX).sum())
    assert stats["capacity"] == 320 and stats["samples"] == 5 and stats["patches"] == 72


def test_collator_rejects_a_grid_the_processor_does_not_give(model, samples):
    record = synthetic.pad_sample(samples[0], 64)
    record["image_grid_thw"] = np.array([[1, 4, 9]], dtype=np.int32)  # same 9 tokens, other shape
    with pytest.raises(ValueError, match="stored image_grid_thw"):
        PackedCollator(model.config)([record])


def test_collator_rejects_image_token_count_mismatch(model, samples):
    record = synthetic.pad_sample(samples[0], 64)
    record["image_grid_thw"] = np.array([[1, 8, 8]], dtype=np.int32)
    with pytest.raises(ValueError, match="image tokens"):
        PackedCollator(model.config)([record])


def test_pretrain_derives_missing_labels_and_sft_refuses_them(model, samples):
    record = synthetic.pad_sample(samples[1], 64)  # text only
    del record["labels"]
    batch = PackedCollator(model.config)([record])
    n = len(samples[1]["input_ids"])
    assert batch["targets"][0, : n - 1].tolist() == record["input_ids"][1:n].tolist()
    with pytest.raises(ValueError, match="no labels"):
        PackedCollator(model.config, derive_labels=False)([record])


def test_collator_rejects_text_positions_that_do_not_restart_per_sample(model, samples):
    record = synthetic.pack_samples(samples[:2], 96)
    n = int(record["seq_lens"].sum())
    record["position_ids"][0, :n] = np.arange(n)  # one running count: the mask would join the samples
    with pytest.raises(ValueError, match="restart at 0"):
        PackedCollator(model.config)([record])


def test_packed_loss_and_logits_equal_unpacked(model, samples):
    """A packed row never attends across samples: per-sample logits and the token-level loss match."""
    collator = PackedCollator(model.config)
    wrapper = CausalLMLoss(model)
    packed = collator([synthetic.pack_samples(samples, 160)])
    with torch.no_grad():
        packed_sum, packed_count = wrapper(**model_inputs(packed, CPU))
        packed_logits = wrapper.logits(packed)[0]
        total, count, offset = 0.0, 0, 0
        for s in samples:
            alone = collator([synthetic.pad_sample(s, len(s["input_ids"]))])
            loss_sum, n = wrapper(**model_inputs(alone, CPU))
            total, count = total + float(loss_sum), count + int(n)
            n_tokens = len(s["input_ids"])
            torch.testing.assert_close(packed_logits[offset:offset + n_tokens], wrapper.logits(alone)[0],
                                       rtol=1e-5, atol=1e-5)
            offset += n_tokens
    assert int(packed_count) == count
    assert float(packed_sum) / int(packed_count) == pytest.approx(total / count, rel=1e-6)


def test_packed_rows_without_text_positions_would_leak(model, samples):
    """Guard for the test above: with 3-row (M-RoPE only) position ids transformers builds no block mask."""
    collator = PackedCollator(model.config)
    batch = collator([synthetic.pack_samples(samples, 160)])
    with torch.no_grad():
        four = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                     pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
                     mm_token_type_ids=batch["mm_token_type_ids"], use_cache=False).logits
        three = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"][1:],
                      pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
                      mm_token_type_ids=batch["mm_token_type_ids"], use_cache=False).logits
    first = len(samples[0]["input_ids"])
    assert torch.allclose(four[0, :first], three[0, :first], atol=1e-5)  # the first sample sees only itself
    assert not torch.allclose(four[0, first:], three[0, first:], atol=1e-3)


def test_token_normalised_loss_over_micro_batches_equals_one_big_batch(model, samples):
    """Σ micro (loss_sum · 1/step_tokens) gives the big batch's gradient; a mean of means would not."""
    collator = PackedCollator(model.config)
    rows = [synthetic.pad_sample(s, 64) for s in samples]
    wrapper = CausalLMLoss(model)

    def grads(loss_fn):
        model.zero_grad(set_to_none=True)
        loss_fn().backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    def big():
        loss_sum, n = wrapper(**model_inputs(collator(rows), CPU))
        return loss_sum / n

    micro = [collator(rows[:1]), collator(rows[1:])]
    step_tokens = sum(b["stats"]["label_tokens"] for b in micro)

    def accumulated():
        return sum(wrapper(**model_inputs(b, CPU))[0] / step_tokens for b in micro)

    def mean_of_means():
        return sum(s / n for s, n in (wrapper(**model_inputs(b, CPU)) for b in micro)) / len(micro)

    g_big, g_acc, g_mean = grads(big), grads(accumulated), grads(mean_of_means)
    torch.testing.assert_close(g_acc, g_big, rtol=1e-4, atol=1e-7)
    assert not torch.allclose(g_mean, g_big, rtol=1e-3, atol=1e-6)
    model.zero_grad(set_to_none=True)


def test_freeze_parts_counts():
    model = load_model(TINY, attn_implementation="sdpa")
    counts = freeze_parts(model, vision=True, projector=False, llm=True)
    assert counts["vision"] == 0 and counts["llm"] == 0 and counts["projector"] > 0
    trainable = {n.split(".")[2] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"downsample", "merger"}


def test_tiny_config_uses_glm_vision_geometry():
    config = tiny_glm4v_config(vocab_size=300)
    assert config.image_token_id == 299 and config.text_config.vocab_size == 300
    v = config.vision_config
    assert (v.patch_size, v.spatial_merge_size, v.temporal_patch_size) == (14, 2, 2)
    section = config.text_config.rope_parameters["mrope_section"]
    assert sum(section) == (64 // 4) // 4


def test_config_errors_say_how_to_fix():
    with pytest.raises(ConfigError, match="zero_stage"):
        build_config(TrainConfig, {"model": TINY, "zero_stage": 4})
    with pytest.raises(ConfigError, match="did you mean 'grad_accum'"):
        build_config(TrainConfig, {"model": TINY, "grad_acum": 2})
    with pytest.raises(ConfigError, match="nothing would train"):
        build_config(TrainConfig, {"model": TINY, "freeze_vision": True, "freeze_projector": True, "freeze_llm": True})
    with pytest.raises(ConfigError, match="model"):
        build_config(TrainConfig, {})


def test_cli_parses_yaml_flags_and_overrides(tmp_path):
    from vlmloom.trainer.cli import parse_args

    path = tmp_path / "train.yaml"
    path.write_text("mode: sft\nmodel: {vocab_size: 256}\nsteps: 5\nzero_stage: 1\n")
    config = parse_args(["zero_stage=2", "--config", str(path), "--data", "a", "model.hidden_size=32", "--data", "b",
                         "--output", "o", "freeze_vision=true"])
    assert config.mode == "sft" and config.steps == 5 and config.zero_stage == 2
    assert config.data == ["a", "b"] and config.output == "o" and config.freeze_vision is True
    assert config.model == {"vocab_size": 256, "hidden_size": 32}


def test_synthetic_records_are_what_packing_produces(samples, tmp_path):
    """Tests train on synthetic records: they must be the records packing writes. The same samples through
    `packing.shards.assemble` give the same arrays (padding included), and a real packed shard read back by
    `PackedDataset` has the same fields, dtypes and padding convention."""
    from vlmloom.packing.builder import BuiltSample
    from vlmloom.demo.records import synthetic_samples
    from vlmloom.schemas.curated import write_curated_dir
    from vlmloom.packing.pack import PackConfig, pack
    from vlmloom.packing.reader import PackedDataset
    from vlmloom.packing.shards import assemble

    L, pad_id = 160, 3
    synthetic_record = synthetic.pack_samples(samples, L, pad_id=pad_id)
    built = [BuiltSample(key=s["key"], source="synthetic", kind="caption", input_ids=s["input_ids"],
                         labels=s["labels"], rope_position_ids=s["position_ids"][1:],
                         image_grid_thw=s["image_grid_thw"], images=s["images"], image_formats=["png"] * len(s["images"]))
                for s in samples]
    assembled = assemble(built, L, pad_id)
    for name in ("input_ids", "labels", "position_ids", "seq_lens", "image_grid_thw"):
        np.testing.assert_array_equal(synthetic_record[name], assembled[name], err_msg=name)
        assert synthetic_record[name].dtype == assembled[name].dtype, name
    assert synthetic_record["images"] == assembled["images"]

    write_curated_dir(str(tmp_path / "cur"), synthetic_samples(6, seed=3, max_words=12, image_side=(20, 40)))
    pack(PackConfig(inputs=[str(tmp_path / "cur")], output=str(tmp_path / "packed"), seq_len=512,
                    tokenizer_vocab_size=300))
    real = next(r for r in PackedDataset(str(tmp_path / "packed")) if r["seq_lens"].sum() < 512)
    assert set(synthetic_record) == set(real)
    for name in ("input_ids", "labels", "position_ids", "seq_lens", "image_grid_thw"):
        assert synthetic_record[name].dtype == real[name].dtype and synthetic_record[name].ndim == real[name].ndim
    for record in (real, synthetic_record):
        n = int(record["seq_lens"].sum())
        pad = record["input_ids"].shape[0] - n
        np.testing.assert_array_equal(record["position_ids"][:, n:], np.tile(np.arange(pad), (4, 1)))
        assert (record["labels"][n:] == IGNORE_INDEX).all()
        assert len(set(record["input_ids"][n:].tolist())) == 1
