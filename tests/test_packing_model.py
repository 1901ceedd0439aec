"""A packed row through a tiny Glm4vForConditionalGeneration gives each sample's own logits and loss.

Oracle: the same model on each sample alone (no packing). transformers isolates packed samples only with
4-row position ids (row 0 restarting per sample) and use_cache=False.
"""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from vlmloom.packing.builder import SequenceBuilder
from vlmloom.demo.records import synthetic_samples
from vlmloom.packing.shards import assemble
from vlmloom.packing.tokenizer import BEGIN_OF_IMAGE, END_OF_IMAGE, IMAGE, train_tokenizer, VIDEO
from vlmloom.packing.tokenizer import BEGIN_OF_VIDEO, END_OF_VIDEO
from vlmloom.schemas.packed import IGNORE_INDEX

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    samples = synthetic_samples(4, seed=3, image_side=(28, 90), max_words=12)
    tok = train_tokenizer([w for s in synthetic_samples(40, seed=1) for w in [s.text or "", *[m.content for m in s.messages]]],
                          str(tmp_path_factory.mktemp("tok")), vocab_size=400)
    builder = SequenceBuilder(tok)
    built = [builder.build(s) for s in samples]
    ids = builder.ids
    config = transformers.Glm4vConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2],
                                          "partial_rotary_factor": 0.5}),
        vision_config=dict(depth=1, hidden_size=32, num_heads=2, intermediate_size=64, out_hidden_size=64,
                           image_size=28, patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids[IMAGE], video_token_id=ids[VIDEO], image_start_token_id=ids[BEGIN_OF_IMAGE],
        image_end_token_id=ids[END_OF_IMAGE], video_start_token_id=ids[BEGIN_OF_VIDEO],
        video_end_token_id=ids[END_OF_VIDEO])
    torch.manual_seed(0)
    model = transformers.Glm4vForConditionalGeneration(config).eval()
    processor = transformers.Glm4vImageProcessorPil()
    return builder, built, model, processor


def _pixels(processor, images):
    if not images:
        return None, None
    out = processor([Image.open(io.BytesIO(b)).convert("RGB") for b in images], return_tensors="pt")
    return out["pixel_values"], out["image_grid_thw"]


def _forward(model, processor, image_token_id, input_ids, position_ids, images, labels):
    pixel_values, grid = _pixels(processor, images)
    ids = torch.as_tensor(input_ids, dtype=torch.long)[None]
    with torch.no_grad():
        return model(input_ids=ids, position_ids=torch.as_tensor(position_ids, dtype=torch.long)[:, None],
                     pixel_values=pixel_values, image_grid_thw=grid,
                     mm_token_type_ids=(ids == image_token_id).long(), use_cache=False,
                     labels=torch.as_tensor(labels, dtype=torch.long)[None])


def test_packed_row_matches_each_sample_alone(setup):
    builder, built, model, processor = setup
    L = sum(len(b) for b in built) + 7  # some padding at the end
    row = assemble(built, L, builder.pad_id)
    assert np.array_equal(row["image_grid_thw"], _pixels(processor, row["images"])[1].numpy())
    packed = _forward(model, processor, builder.image_token_id, row["input_ids"], row["position_ids"],
                      row["images"], row["labels"])
    at = 0
    total_loss, total_tokens = 0.0, 0
    for b in built:
        n = len(b)
        alone_pos = np.concatenate([np.arange(n)[None], b.rope_position_ids]).astype(np.int64)
        alone = _forward(model, processor, builder.image_token_id, b.input_ids, alone_pos, b.images, b.labels)
        diff = (packed.logits[0, at:at + n] - alone.logits[0]).abs().max().item()
        assert diff < 1e-4, f"{b.key}: packed logits differ by {diff}"
        k = int(np.count_nonzero(b.labels[1:] != IGNORE_INDEX))
        total_loss += alone.loss.item() * k
        total_tokens += k
        at += n
    # The packed loss (mean over the row's label tokens) equals the token-weighted mean of the unpacked losses.
    assert packed.loss.item() == pytest.approx(total_loss / total_tokens, rel=1e-4)


def test_three_row_positions_do_leak_across_samples(setup):
    """The negative control: without row 0 the samples attend across each other."""
    builder, built, model, processor = setup
    row = assemble(built[:2], sum(len(b) for b in built[:2]), builder.pad_id)
    packed = _forward(model, processor, builder.image_token_id, row["input_ids"], row["position_ids"][1:],
                      row["images"], row["labels"])
    b = built[1]
    alone_pos = np.concatenate([np.arange(len(b))[None], b.rope_position_ids])
    alone = _forward(model, processor, builder.image_token_id, b.input_ids, alone_pos, b.images, b.labels)
    assert (packed.logits[0, len(built[0]):] - alone.logits[0]).abs().max().item() > 1e-3


def test_pack_read_collate_forward_end_to_end(tmp_path):
    """Shards written by `pack`, read by PackedDataset, batched by the trainer's PackedCollator: each sample's logits in a
    batch of 2 packed rows equal its logits alone."""
    from vlmloom.packing.curated import iter_curated_samples
    from vlmloom.schemas.curated import write_curated_dir
    from vlmloom.packing.pack import PackConfig, pack
    from vlmloom.packing.reader import PackedDataset
    from vlmloom.packing.tokenizer import load_tokenizer
    from vlmloom.trainer.data import PackedCollator
    from vlmloom.trainer.loss import CausalLMLoss

    write_curated_dir(str(tmp_path / "cur"), synthetic_samples(8, seed=11, image_side=(28, 70), max_words=10))
    pack(PackConfig(inputs=[str(tmp_path / "cur")], output=str(tmp_path / "p"), seq_len=192, tokenizer_vocab_size=300))
    tok = load_tokenizer(str(tmp_path / "p" / "tokenizer"))
    builder = SequenceBuilder(tok)
    ids = builder.ids
    config = transformers.Glm4vConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3],
                                          "partial_rotary_factor": 1.0}),
        vision_config=dict(depth=1, hidden_size=16, num_heads=1, intermediate_size=32, out_hidden_size=32),
        image_token_id=ids[IMAGE], video_token_id=ids[VIDEO], image_start_token_id=ids[BEGIN_OF_IMAGE],
        image_end_token_id=ids[END_OF_IMAGE], video_start_token_id=ids[BEGIN_OF_VIDEO],
        video_end_token_id=ids[END_OF_VIDEO])
    torch.manual_seed(1)
    model = transformers.Glm4vForConditionalGeneration(config).eval()
    items = list(PackedDataset(str(tmp_path / "p")))[:2]
    batch = PackedCollator(config)(items)
    assert batch["position_ids"].shape == (4, 2, 192)
    with torch.no_grad():
        packed = CausalLMLoss(model).logits(batch)
    by_key = {s.key: builder.build(s) for s in iter_curated_samples(str(tmp_path / "cur"))}
    processor = transformers.Glm4vImageProcessorPil()
    for row, item in enumerate(items):
        meta = _entry_meta(tmp_path / "p", item["key"])
        at = 0
        for key in meta["sample_keys"]:
            b = by_key[key]
            pos = np.concatenate([np.arange(len(b))[None], b.rope_position_ids])
            alone = _forward(model, processor, builder.image_token_id, b.input_ids, pos, b.images, b.labels)
            assert (packed[row, at:at + len(b)] - alone.logits[0]).abs().max().item() < 1e-4
            at += len(b)


def _entry_meta(packed_dir, key):
    import pyarrow.parquet as pq
    rows = {r["key"]: r for r in pq.read_table(f"{packed_dir}/manifest.parquet").to_pylist()}
    return rows[key]
