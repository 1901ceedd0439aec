"""The pack step end to end: curated dirs (+ recipe) → packed dir; report, determinism, mixtures, CLI."""
import filecmp
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from vlmloom.packing.balance import BalanceConfig
from vlmloom.packing.cli import main, parse_config
from vlmloom.packing.curated import CuratedDirError, curated_shards, iter_curated_samples, iter_shard_samples
from vlmloom.demo.records import synthetic_samples
from vlmloom.schemas.curated import write_curated_dir
from vlmloom.packing.mixture import Recipe, RecipeSource
from vlmloom.packing.pack import PackConfig, pack
from vlmloom.packing.reader import PackedDataset
from vlmloom.packing.tokenizer import load_tokenizer
from vlmloom.schemas.config import ConfigError
from vlmloom.schemas.records import Message, Sample


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    root = tmp_path_factory.mktemp("curated")
    a = synthetic_samples(60, seed=1, source="caps", kinds=("caption", "ocr", "interleaved"), image_side=(20, 90))
    bad = Sample(key="caps-bad", source="caps", source_id="bad", kind="qa", answer="3",
                 messages=[Message("user", "q"), Message("assistant", "no reasoning")])
    b = synthetic_samples(30, seed=2, source="sft", kinds=("qa",), image_side=(20, 90))
    return write_curated_dir(str(root / "caps"), a + [bad], per_shard=16), write_curated_dir(str(root / "sft"), b)


def test_iter_curated_samples(curated, tmp_path):
    samples = list(iter_curated_samples(curated[0]))
    assert len(samples) == 61 and all(len(s.images[0].bytes) > 0 for s in samples if s.images)
    assert len({s.key for s in samples}) == 61
    for shard in curated_shards(curated[0]):  # shard order, then key order inside a shard
        keys = [s.key for s in iter_shard_samples(shard)]
        assert keys == sorted(keys)
    os.makedirs(tmp_path / "shards")
    with pytest.raises(CuratedDirError, match="_SUCCESS"):
        list(iter_curated_samples(str(tmp_path)))


def test_pack_report_and_files(curated, tmp_path):
    out = str(tmp_path / "p")
    report = pack(PackConfig(inputs=list(curated), output=out, seq_len=1024, sequences_per_shard=4,
                             tokenizer_vocab_size=300))
    assert sorted(os.listdir(out)) == ["_SUCCESS", "manifest.parquet", "pack_report.html", "pack_report.json",
                                       "rejected.parquet", "shards", "tokenizer"]
    assert json.load(open(f"{out}/pack_report.json")) == json.loads(json.dumps(report))
    assert report["dropped_by_reason"] == {"malformed_cot": 1}
    assert pq.read_table(f"{out}/rejected.parquet").to_pylist()[0]["key"] == "caps-bad"
    manifest = pq.read_table(f"{out}/manifest.parquet").to_pylist()
    assert report["sequences"] == len(manifest) == len(list(PackedDataset(out)))
    assert report["samples_packed"] == 60 + 30 == sum(r["num_samples"] for r in manifest)
    assert report["tokens"] == sum(r["num_tokens"] for r in manifest)
    assert report["fill_efficiency"] == pytest.approx(report["tokens"] / (1024 * len(manifest)), abs=1e-6)
    assert report["sequences"] <= report["lower_bound_sequences"] + 1
    assert report["shards"] == -(-len(manifest) // 4) == len(os.listdir(f"{out}/shards"))
    assert sum(report["histograms"]["sample_length"]["counts"]) == 90
    per_sequence = report["histograms"]["samples_per_sequence"]
    assert per_sequence["edges"][-1] is None and sum(per_sequence["counts"]) == len(manifest)
    page = open(f"{out}/pack_report.html", encoding="utf-8").read()
    assert "≥129" in page and "1024" in page and "e+" not in page  # open last bin; whole edges in full
    tok = load_tokenizer(f"{out}/tokenizer")
    assert report["tokenizer"]["pad_id"] == tok.pad_token_id
    with pytest.raises(ConfigError, match="exists"):
        pack(PackConfig(inputs=list(curated), output=out, seq_len=1024))


def test_regeneration_is_byte_identical(curated, tmp_path):
    recipe = Recipe(seed=5, sources=[RecipeSource(path=curated[0], weight=1.5, max_upsample=2),
                                     RecipeSource(path=curated[1], weight=1.0)])
    outs = []
    for name, cache_mb in (("a", 512), ("b", 0)):  # b re-reads the curated tars in pass 2
        outs.append(str(tmp_path / name))
        pack(PackConfig(output=outs[-1], seq_len=768, sequences_per_shard=5, recipe=recipe, tokenizer_vocab_size=300,
                        balance=BalanceConfig(world_size=2, window_steps=4), cache_mb=cache_mb))
    shards = sorted(os.listdir(f"{outs[0]}/shards"))
    assert shards == sorted(os.listdir(f"{outs[1]}/shards"))
    match, mismatch, errors = filecmp.cmpfiles(f"{outs[0]}/shards", f"{outs[1]}/shards", shards, shallow=False)
    assert mismatch == [] and errors == []
    for f in ("manifest.parquet", "tokenizer/tokenizer.json"):
        assert filecmp.cmp(f"{outs[0]}/{f}", f"{outs[1]}/{f}", shallow=False), f
    reports = [json.load(open(f"{o}/pack_report.json")) for o in outs]
    for r in reports:
        r["config"].pop("output")
        r["config"].pop("cache_mb")
        r.pop("config_hash")
    assert reports[0] == reports[1]
    assert reports[0]["sources"]["caps"]["multiplier"] == 1.5


def test_overwrite_replaces(curated, tmp_path):
    out = str(tmp_path / "o")
    pack(PackConfig(inputs=[curated[1]], output=out, seq_len=2048, tokenizer_vocab_size=300))
    os.makedirs(f"{out}/stale")
    pack(PackConfig(inputs=[curated[1]], output=out, seq_len=2048, tokenizer_vocab_size=300, overwrite=True))
    assert not os.path.exists(f"{out}/stale") and os.path.exists(f"{out}/_SUCCESS")
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p or ".old-" in p]


def test_token_share_mixture(curated, tmp_path):
    recipe = Recipe(seed=1, sources=[RecipeSource(name="caps", token_share=0.3),
                                     RecipeSource(name="sft", token_share=0.7, max_upsample=3.0)])
    report = pack(PackConfig(inputs=list(curated), output=str(tmp_path / "m"), seq_len=1024, recipe=recipe,
                             tokenizer_vocab_size=300))
    s = report["sources"]
    assert s["caps"]["realised_share"] == pytest.approx(0.3, abs=0.03)
    assert s["sft"]["realised_share"] == pytest.approx(0.7, abs=0.03)
    assert 1.0 < s["sft"]["multiplier"] <= 3.0 and s["sft"]["samples_used"] > 30
    assert report["recipe"]["sources"][0]["path"] == curated[0] and len(report["recipe_hash"]) == 16
    keys = [k for x in pq.read_table(str(tmp_path / "m" / "manifest.parquet")).to_pylist() for k in x["sample_keys"]]
    assert len(keys) == s["caps"]["samples_used"] + s["sft"]["samples_used"]


def test_recipe_validation():
    with pytest.raises(ConfigError, match="exactly one of weight or token_share"):
        parse_config(["x", "--output", "o", "--set", "recipe.sources=[{path: x}]"])
    with pytest.raises(ConfigError, match="did you mean 'seq_len'"):
        parse_config(["x", "--output", "o", "--set", "seq_lenn=3"])
    with pytest.raises(ConfigError, match="known packers"):
        parse_config(["x", "--output", "o", "--set", "packer=magic"])


def test_cli_with_truncation_and_balance(curated, tmp_path, capsys):
    out = str(tmp_path / "c")
    code = main([curated[0], "--output", out, "--seq-len", "96", "--set", "overlong=truncate",
                 "--set", "tokenizer_vocab_size=300", "--set", "balance.world_size=2", "--set", "balance.window_steps=8",
                 "--set", "sequences_per_shard=3"])
    printed = capsys.readouterr().out
    assert code == 0 and "fill efficiency" in printed and "balance over 2 ranks" in printed
    report = json.load(open(f"{out}/pack_report.json"))
    assert report["truncated"] > 0
    assert set(report["dropped_by_reason"]) <= {"malformed_cot", "too_long_image_cut"}
    b = report["balance"]
    assert b["after"]["mean_max_over_mean"] <= b["before"]["mean_max_over_mean"]
    # rank r's shards (i % 2 == r) hold the sequences at odd/even positions: each rank reads its own stream
    for rank in range(2):
        got = [int(x["key"]) for x in PackedDataset(out, rank=rank, world_size=2)]
        assert got and all(k % 2 == rank for k in got)
    assert main([curated[0], "--output", out, "--seq-len", "96"]) == 2


def test_shards_read_by_webdataset(curated, tmp_path):
    """The packed tars are plain webdataset: its reader sees the same entries and arrays."""
    import glob
    import io

    wds = pytest.importorskip("webdataset")
    out = str(tmp_path / "w")
    pack(PackConfig(inputs=[curated[0]], output=out, seq_len=1024, sequences_per_shard=3, tokenizer_vocab_size=300))
    ours = list(PackedDataset(out))
    theirs = list(wds.WebDataset(sorted(glob.glob(f"{out}/shards/*.tar")), shardshuffle=False, empty_check=False))
    assert [x["__key__"] for x in theirs] == [x["key"] for x in ours]
    for a, b in zip(ours, theirs):
        assert np.array_equal(np.load(io.BytesIO(b["position_ids.npy"])), a["position_ids"])
        images = sorted((k for k in b if k.startswith("img_")), key=lambda k: int(k[4:].split(".")[0]))
        assert [b[k] for k in images] == a["images"]
        assert json.loads(b["json"])["num_tokens"] == int(a["seq_lens"].sum())


def test_pack_report_counts_how_samples_were_rendered(tmp_path, capsys):
    """OCR samples with curation's grounding turns are packed as chat, and the report says so per kind; samples
    whose turns are unusable are counted by reason (trained as documents), as is what the turns leave out."""
    from vlmloom.curation.grounding import GroundingAnnotator, GroundingConfig
    from vlmloom.schemas.records import OcrLine

    samples = synthetic_samples(12, seed=4, kinds=("caption", "ocr"), image_side=(30, 60))
    annotator = GroundingAnnotator(GroundingConfig(enabled=True, sources=("ocr",), min_boxes=1))
    for i, s in enumerate(s for s in samples if s.kind == "ocr"):
        s.annotations.ocr = [OcrLine(f"line {i} a", [10, 10, 500, 80]), OcrLine(f"line {i} b", [10, 100, 600, 180])]
        assert annotator.judge(s).keep and s.messages
    ocr = [s for s in samples if s.kind == "ocr"]
    ocr[0].messages = ocr[0].messages[:-1]  # ends with a user turn: no_assistant_turn
    write_curated_dir(str(tmp_path / "cur"), samples)
    report = pack(PackConfig(inputs=[str(tmp_path / "cur")], output=str(tmp_path / "packed"), seq_len=1024,
                             tokenizer_vocab_size=300))
    r = report["rendering"]
    captions = sum(s.kind == "caption" for s in samples)
    assert r["chat"] == {"ocr": len(ocr) - 1}
    assert r["document"] == {"caption": captions, "ocr": 1}
    assert r["turns_unusable"] == {"no_assistant_turn": 1}
    assert r["text_left_out"] == 0 and r["boxes_left_out"] == 0  # the transcription turn trains their text
    assert json.load(open(tmp_path / "packed" / "pack_report.json"))["rendering"] == r
    from vlmloom.packing.cli import summary
    assert "chat turns unusable (trained as documents): no_assistant_turn=1" in summary(report, "x")
