"""End to end on real packed shards: curated fixtures → `pack` → tiny GLM-4.1V checkpoint built for the packed
tokenizer → `vlmloom train` (pretrain, then SFT from the exported model) through `PackedDataset`."""
from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")

from vlmloom.demo.records import synthetic_samples
from vlmloom.schemas.curated import write_curated_dir  # noqa: E402
from vlmloom.packing.pack import PackConfig, pack  # noqa: E402
from vlmloom.trainer.cli import main  # noqa: E402
from vlmloom.trainer.model import build_tiny_model_dir  # noqa: E402


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_packed")
    write_curated_dir(str(root / "cur"), synthetic_samples(40, seed=5, max_words=30, image_side=(20, 80)))
    pack(PackConfig(inputs=[str(root / "cur")], output=str(root / "packed"), seq_len=256, sequences_per_shard=4,
                    tokenizer_vocab_size=300))
    return root


def test_cli_trains_on_packed_shards_resumes_and_exports(packed, capsys):
    from transformers import AutoTokenizer

    data = str(packed / "packed")
    vocab = len(AutoTokenizer.from_pretrained(os.path.join(data, "tokenizer")))
    model_dir = build_tiny_model_dir(str(packed / "tiny"), vocab_size=vocab,
                                     tokenizer_dir=os.path.join(data, "tokenizer"))
    with open(os.path.join(model_dir, "config.json")) as fh:
        image_token_id = json.load(fh)["image_token_id"]
    assert image_token_id == AutoTokenizer.from_pretrained(os.path.join(data, "tokenizer")).convert_tokens_to_ids(
        "<|image|>")
    out = str(packed / "run")
    args = ["--data", data, "--model", model_dir, "--output", out, "steps=4", "lr=3e-3", "grad_accum=2",
            "progress=false", "shuffle_buffer=4", "num_workers=2"]
    assert main(args + ["stop_after=2"]) == 0
    assert main(args) == 0  # resumes at step 2 from the reader's saved position
    summary = json.loads(open(os.path.join(out, "summary.json")).read())
    assert summary["steps"] == 4 and summary["resumed_from"].endswith("step_000000002")
    straight = str(packed / "straight")
    assert main(args[:5] + [straight] + args[6:] + ["export=false"]) == 0
    losses = [json.loads(line)["loss"] for line in open(os.path.join(straight, "metrics.jsonl"))]
    resumed = [json.loads(line)["loss"] for line in open(os.path.join(out, "metrics.jsonl"))]
    assert resumed == losses  # 2 + 2 steps through the real reader (2 workers, shuffle buffer) == 4 straight
    hf = summary["export_dir"]
    assert os.path.isfile(os.path.join(hf, "tokenizer_config.json"))
    assert os.path.isfile(os.path.join(hf, "model.safetensors"))
    # SFT continues from the exported pre-trained model, as the demo does
    sft = str(packed / "sft")
    assert main(["--data", data, "--model", hf, "--output", sft, "mode=sft", "steps=2", "progress=false",
                 "freeze_vision=true"]) == 0
    assert json.loads(open(os.path.join(sft, "summary.json")).read())["steps"] == 2


def test_tiny_model_takes_vocabulary_from_the_packed_tokenizer(packed):
    from transformers import AutoTokenizer

    from vlmloom.trainer.model import resolve_model_spec

    data = str(packed / "packed")
    tok = AutoTokenizer.from_pretrained(os.path.join(data, "tokenizer"))
    spec = resolve_model_spec({"hidden_size": 32, "num_attention_heads": 2}, [data])
    assert spec["vocab_size"] == len(tok) and spec["hidden_size"] == 32
    assert spec["image_token_id"] == tok.convert_tokens_to_ids("<|image|>")
    assert spec["image_start_token_id"] == tok.convert_tokens_to_ids("<|begin_of_image|>")
    assert spec["pad_token_id"] == tok.pad_token_id
    assert resolve_model_spec("tiny", [data])["vocab_size"] == len(tok)
    out = str(packed / "tiny_from_tokenizer")
    assert main(["--data", data, "--output", out, "model=tiny", "steps=1", "progress=false", "export=false"]) == 0


@pytest.mark.timeout(120)
def test_more_loader_workers_than_shards_trains(packed, tmp_path):
    """`vlmloom train … num_workers=2` on a one-shard pack, repeating the data until `steps` (epochs=0): worker 1
    used to get no shard and spin forever, so no step was ever logged."""
    data = str(tmp_path / "one_shard")
    pack(PackConfig(inputs=[str(packed / "cur")], output=data, seq_len=256, sequences_per_shard=1000,
                    tokenizer_vocab_size=300))
    assert len(os.listdir(os.path.join(data, "shards"))) == 1
    out = str(tmp_path / "run")
    assert main(["--data", data, "--output", out, "model=tiny", "steps=3", "num_workers=2", "shuffle_buffer=2",
                 "progress=false", "export=false"]) == 0
    summary = json.loads(open(os.path.join(out, "summary.json")).read())
    assert summary["steps"] == 3 and summary["stop_reason"] == "steps_done"
    assert len(open(os.path.join(out, "metrics.jsonl")).read().splitlines()) == 3


def test_plain_iterable_with_loader_workers_is_refused():
    from vlmloom.trainer.data import make_loader

    with pytest.raises(ValueError, match="num_workers=0"):
        make_loader(iter([]), collator=None, micro_batch=1, num_workers=2)
