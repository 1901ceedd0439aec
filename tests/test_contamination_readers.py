"""Benchmarks in their published shapes, read by curate's input readers: a HF `datasets` Parquet (VQAv2's and MMMU's
columns, written by `datasets` itself), a LLaVA-style JSON list with its images; what the readers reject is counted
or raised; and a curated record that copies a benchmark question or image is rejected while a clean one is kept."""
from __future__ import annotations

import json
import os

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamPipeline
from apache_beam.testing.util import assert_that, equal_to
from test_contamination import encode, picture  # the same generated pictures as the contamination tests

from vlmloom.curation import formats
from vlmloom.curation.contamination import (BenchmarkSource, ContaminationConfig, ContaminationIndex,
                                            _benchmark_fingerprint, load_benchmark)
from vlmloom.curation.formats import resolve
from vlmloom.pipelines.model_stages import contamination_stage
from vlmloom.schemas.config import ConfigError
from vlmloom.schemas.records import ImageRef, Message, Rejection, Sample

VQA_QUESTIONS = ["What is the man in the red jacket holding in his left hand near the old stone bridge",
                 "How many boats are tied to the wooden pier on the left side of the lake"]
MMMU_QUESTION = "Which painting technique is used for the sky in <image 1> compared with the sea in <image 2>"
LLAVA_QUESTION = "What is unusual about the way the two cats are sitting on the kitchen table in this photo"


@pytest.fixture(scope="module")
def vqav2_parquet(tmp_path_factory) -> str:
    """VQAv2 as the Hub publishes it: an `Image()` column (struct {bytes, path}), `question`, `question_id`, and
    `answers` as a list of {answer, answer_confidence, answer_id} (ten per question; two here)."""
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    features = Features({"question_type": Value("string"), "multiple_choice_answer": Value("string"),
                         "answers": [{"answer": Value("string"), "answer_confidence": Value("string"),
                                      "answer_id": Value("int64")}],
                         "image_id": Value("int64"), "answer_type": Value("string"), "question_id": Value("int64"),
                         "question": Value("string"), "image": ImageFeature()})
    rows = {"question_type": ["what is the man", "how many"], "multiple_choice_answer": ["umbrella", "3"],
            "answers": [[{"answer": "umbrella", "answer_confidence": "yes", "answer_id": 1},
                         {"answer": "an umbrella", "answer_confidence": "maybe", "answer_id": 2}],
                        [{"answer": "3", "answer_confidence": "yes", "answer_id": 1},
                         {"answer": "3", "answer_confidence": "yes", "answer_id": 2}]],
            "image_id": [262148, 393225], "answer_type": ["other", "number"], "question_id": [262148000, 393225001],
            "question": VQA_QUESTIONS,
            "image": [{"bytes": encode(picture(11), "JPEG", quality=92), "path": "COCO_val2014_000000262148.jpg"},
                      {"bytes": encode(picture(12), "JPEG", quality=92), "path": "COCO_val2014_000000393225.jpg"}]}
    path = tmp_path_factory.mktemp("vqav2") / "validation-00000-of-00001.parquet"
    Dataset.from_dict(rows, features=features).to_parquet(str(path))
    assert pq.read_schema(path).field("image").type.names == ["bytes", "path"]  # the published layout
    return str(path)


@pytest.fixture(scope="module")
def mmmu_parquet(tmp_path_factory) -> str:
    """MMMU's layout: `id`, `question`, `options` (a list written as text), `answer`, `image_1` … `image_7`."""
    from datasets import Dataset, Features, Value
    from datasets import Image as ImageFeature

    features = Features({"id": Value("string"), "question": Value("string"), "options": Value("string"),
                         "explanation": Value("string"), "image_1": ImageFeature(), "image_2": ImageFeature(),
                         "img_type": Value("string"), "answer": Value("string"), "topic_difficulty": Value("string"),
                         "question_type": Value("string"), "subfield": Value("string")})
    rows = {"id": ["validation_Art_1"], "question": [MMMU_QUESTION], "options": ["['Impasto', 'Glazing']"],
            "explanation": [""], "image_1": [{"bytes": encode(picture(13)), "path": None}],
            "image_2": [{"bytes": encode(picture(14)), "path": None}], "img_type": ["['Paintings']"], "answer": ["B"],
            "topic_difficulty": ["Easy"], "question_type": ["multiple-choice"], "subfield": ["Fine Arts"]}
    path = tmp_path_factory.mktemp("mmmu") / "validation-00000-of-00001.parquet"
    Dataset.from_dict(rows, features=features).to_parquet(str(path))
    return str(path)


@pytest.fixture(scope="module")
def llava_folder(tmp_path_factory) -> str:
    """LLaVA-Bench-like: a JSON list of {id, image, conversations} beside its images."""
    folder = tmp_path_factory.mktemp("llava")
    (folder / "001.jpg").write_bytes(encode(picture(15), "JPEG", quality=92))
    (folder / "002.jpg").write_bytes(encode(picture(16), "JPEG", quality=92))
    rows = [{"id": "001", "image": "001.jpg", "conversations": [
                {"from": "human", "value": f"<image>\n{LLAVA_QUESTION}?"},
                {"from": "gpt", "value": "They sit back to back."}]},
            {"id": "002", "image": "002.jpg", "conversations": [
                {"from": "human", "value": "<image>\nDescribe the picture."},
                {"from": "gpt", "value": "A blurry pattern of coloured squares."}]}]
    (folder / "llava_bench.json").write_text(json.dumps(rows, indent=1))
    return str(folder)


def test_hf_parquet_benchmarks_read_as_published(vqav2_parquet, mmmu_parquet):
    vqa = list(load_benchmark(BenchmarkSource(name="vqav2", path=vqav2_parquet)))
    assert [(i.item_id, i.question, i.answer, len(i.images)) for i in vqa] == [
        ("262148000", VQA_QUESTIONS[0], "umbrella an umbrella", 1), ("393225001", VQA_QUESTIONS[1], "3", 1)]
    assert vqa[0].texts == [VQA_QUESTIONS[0], "umbrella", "an umbrella"]
    assert vqa[0].images[0] == encode(picture(11), "JPEG", quality=92)
    mmmu = list(load_benchmark(BenchmarkSource(name="mmmu", path=mmmu_parquet, format="hf")))
    assert [(i.item_id, i.question, i.answer, len(i.images)) for i in mmmu] == [
        ("validation_Art_1", MMMU_QUESTION, "B", 2)]


class MeanColourEncoder:
    """A stand-in image encoder: the embedding is the mean colour (distinct pictures are far apart)."""

    def embed_images(self, images):
        vectors = np.array([np.asarray(i.convert("RGB"), dtype=np.float64).mean(axis=(0, 1)) for i in images])
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_every_image_of_an_item_is_indexed_and_confirmed_against_itself(mmmu_parquet):
    """MMMU's image_2: its own pHash finds it, and the embedding check compares it with image_2, not image_1."""
    config = ContaminationConfig(benchmarks=(BenchmarkSource(name="mmmu", path=mmmu_parquet),), check_text=False,
                                 min_embedding_cosine=0.999)
    index = ContaminationIndex.build(config, encoder=MeanColourEncoder())
    assert index.phash_items.tolist() == [0, 0]
    (hit,) = index.lookup([_sample("copy", image=encode(picture(14)))])
    assert (hit.benchmark, hit.item_id) == ("mmmu", "validation_Art_1") and "cosine=1.000" in hit.detail()


def test_llava_json_benchmark(llava_folder):
    items = list(load_benchmark(BenchmarkSource(name="llava", path=llava_folder)))
    assert [(i.item_id, i.texts) for i in items] == [
        ("001", [f"{LLAVA_QUESTION}?", "They sit back to back."]),
        ("002", ["Describe the picture.", "A blurry pattern of coloured squares."])]
    assert [i.images for i in items] == [[encode(picture(15), "JPEG", quality=92)],
                                         [encode(picture(16), "JPEG", quality=92)]]


def test_answer_lists_are_a_benchmark_allowance(tmp_path):
    """A list of accepted answers is read for a benchmark; curate's reader still refuses it for a training record."""
    (tmp_path / "a.png").write_bytes(encode(picture(3)))
    (tmp_path / "a.json").write_text(json.dumps({"question": "q?", "answer": ["1", "2"]}))
    files = resolve.local_match(str(tmp_path / "**"))
    units, _ = resolve.plan_units("folder", files, str(tmp_path))
    curate_ctx = formats.ReadContext(source="s", kind="qa")
    (record,) = list(resolve.read_unit("folder", units[0], curate_ctx))
    assert isinstance(record, Rejection) and record.reason == "invalid_field" and "'answer'" in record.detail
    (item,) = list(load_benchmark(BenchmarkSource(name="b", path=str(tmp_path))))
    assert (item.item_id, item.question, item.answer, item.texts) == ("a", "q?", "1 2", ["q?", "1", "2"])


def test_unreadable_and_empty_benchmarks_are_reported(tmp_path):
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(ConfigError, match=r"benchmarks\[c\].*corrupt\.parquet:<parquet>: corrupt_parquet"):
        list(load_benchmark(BenchmarkSource(name="c", path=str(corrupt))))
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{nope\n[1, 2]\n")
    with pytest.raises(ConfigError, match=r"yielded no benchmark items: every record was rejected "
                                          r"\{'invalid_json': 1, 'record_not_object': 1\}"):
        list(load_benchmark(BenchmarkSource(name="b", path=str(broken))))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "README.md").write_text("no data")
    with pytest.raises(ConfigError, match=r"benchmarks\[d\]: .*set contamination.benchmarks\[d\].format"):
        list(load_benchmark(BenchmarkSource(name="d", path=str(tmp_path / "docs"))))
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps({"id": "t1", "question": "Which gas do plants take in from the air to make sugar in "
                                 "sunlight during photosynthesis", "answer": "carbon dioxide"}) + "\n{nope\n")
    config = ContaminationConfig(benchmarks=(BenchmarkSource(name="gsm", path=str(mixed)),), check_images=False)
    index = ContaminationIndex.build(config)
    assert index.items == [("gsm", "t1")] and index.unread == {"gsm": {"invalid_json": 1}}
    hit = index.text_hit(Sample(key="k", source="s", source_id="k", text="so: which gas do plants take in from the "
                                "air to make sugar in sunlight during photosynthesis?"))
    assert (hit.benchmark, hit.item_id) == ("gsm", "t1")  # a text-only row: its question column is its text


def test_fingerprint_follows_the_files_the_reader_reads(tmp_path, llava_folder):
    import shutil

    folder = tmp_path / "llava"
    shutil.copytree(llava_folder, folder)
    config = ContaminationConfig(benchmarks=(BenchmarkSource(name="l", path=str(folder)),))
    before = _benchmark_fingerprint(config, False)
    assert _benchmark_fingerprint(config, False) == before
    (folder / "002.jpg").write_bytes(encode(picture(17), "JPEG"))  # an image the JSON names
    changed = _benchmark_fingerprint(config, False)
    assert changed != before
    remapped = ContaminationConfig(benchmarks=(BenchmarkSource(name="l", path=str(folder), fields={"id": "x"}),))
    assert _benchmark_fingerprint(remapped, False) != changed


def _sample(key: str, text: str | None = None, image: bytes | None = None, **kw) -> Sample:
    images = [ImageRef(width=96, height=96, format="jpeg", bytes=image)] if image else []
    return Sample(key=key, source="train", source_id=key, text=text, images=images, **kw)


def test_stage_rejects_copies_of_published_benchmarks(vqav2_parquet, mmmu_parquet, llava_folder):
    config = ContaminationConfig(enabled=True, benchmarks=(
        BenchmarkSource(name="vqav2", path=vqav2_parquet), BenchmarkSource(name="mmmu", path=mmmu_parquet),
        BenchmarkSource(name="llava", path=llava_folder)))
    copied = encode(picture(14).resize((128, 128)), "JPEG", quality=70)  # MMMU's second image, resized, recompressed
    samples = [
        _sample("vqa_text", text=f"Q: {VQA_QUESTIONS[1].lower()}? A: three", image=encode(picture(21), "JPEG")),
        _sample("mmmu_image", text="a seascape study", image=copied),
        _sample("llava_turn", kind="qa", messages=[Message("user", f"<image>\n{LLAVA_QUESTION}"),
                                                   Message("assistant", "back to back")]),
        _sample("clean", text="a dog runs on a wide sandy beach at noon", image=encode(picture(22), "JPEG")),
    ]
    with BeamPipeline() as p:
        out = p | beam.Create(samples) | contamination_stage(config)
        assert_that(out["kept"] | "Kept" >> beam.Map(lambda s: s.key), equal_to(["clean"]), label="kept")
        assert_that(out["rejected"] | "Rejected" >> beam.Map(lambda r: (r.key, r.reason, r.detail.split(" ")[:2])),
                    equal_to([("vqa_text", "benchmark_text_overlap", ["benchmark=vqav2", "item_id=393225001"]),
                              ("mmmu_image", "benchmark_image_duplicate", ["benchmark=mmmu",
                                                                           "item_id=validation_Art_1"]),
                              ("llava_turn", "benchmark_text_overlap", ["benchmark=llava", "item_id=001"])]),
                    label="rejected")


def test_curate_drops_training_records_that_copy_a_benchmark(tmp_path, vqav2_parquet, llava_folder):
    """`vlmloom curate` end to end: LLaVA training records, one asking a VQAv2 question, one on a copy of a
    LLaVA-Bench image, one clean; only the clean one is kept, the others are rejected naming the benchmark item."""
    from vlmloom.pipelines.curate import curate, load_config

    train = tmp_path / "train"
    train.mkdir()
    (train / "copy.jpg").write_bytes(encode(picture(16).resize((112, 112)), "JPEG", quality=75))
    (train / "own1.jpg").write_bytes(encode(picture(31), "JPEG"))
    (train / "own2.jpg").write_bytes(encode(picture(32), "JPEG"))

    def row(i, image, question, answer):
        return {"id": f"t{i}", "image": image, "conversations": [{"from": "human", "value": f"<image>\n{question}"},
                                                                   {"from": "gpt", "value": answer}]}

    rows = [row(1, "own1.jpg", f"{VQA_QUESTIONS[0]}?", "An umbrella."),
            row(2, "copy.jpg", "What colours do you see?", "Many squares of colour."),
            row(3, "own2.jpg", "What pattern fills this small square image?", "Soft blurred colour blocks.")]
    (train / "sft.json").write_text(json.dumps(rows))
    out = tmp_path / "out"
    curate(load_config({"inputs": [{"path": str(train), "name": "sft"}], "output": str(out),
                        "disable": ["language", "heuristics"],
                        "models": {"contamination": {"enabled": True, "benchmarks": [
                            {"name": "vqav2", "path": vqav2_parquet}, {"name": "llava", "path": llava_folder}]}}}))
    kept = [r["source_id"] for r in pq.read_table(out / "manifest").to_pylist()]
    rejected = sorted((r["source_id"], r["reason"], json.loads(r["fields"])["contamination_benchmark"],
                       json.loads(r["fields"])["contamination_item_id"])
                      for r in pq.read_table(out / "rejected").to_pylist())
    assert kept == ["t3"]
    assert rejected == [("t1", "benchmark_text_overlap", "vqav2", "262148000"),
                        ("t2", "benchmark_image_duplicate", "llava", "002")]
    assert os.path.exists(out / "report.json")
