"""Benchmark contamination: loading (Parquet, folder, webdataset), pHash and n-gram lookups, the Beam stage."""
from __future__ import annotations

import io
import json
import tarfile

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamPipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image, ImageFilter

from vlmloom.curation.contamination import (BenchmarkItem, BenchmarkSource, ContaminationConfig, ContaminationIndex,
                                            load_benchmark, normalize_tokens, sample_phash)
from vlmloom.pipelines.model_stages import contamination_stage
from vlmloom.schemas.config import ConfigError, build_config
from vlmloom.schemas.records import ImageRef, Message, Sample

QUESTION = "What is the total area of the shaded region in the figure if each small square has side two"
SHORT_QUESTION = "Which planet in the picture has rings around it"  # 9 tokens < 13


def picture(seed: int, size: int = 96) -> Image.Image:
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 255, size=(6, 6, 3), dtype=np.uint8)
    return Image.fromarray(blocks).resize((size, size), Image.NEAREST).filter(ImageFilter.GaussianBlur(2))


def encode(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def bench_parquet(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "items.parquet"
    pq.write_table(pa.table({
        "item_id": ["q1", "q2", "q3"],
        "question": [QUESTION, SHORT_QUESTION, "Name it."],
        "answer": ["8", "Saturn", "x"],
        "image_bytes": [encode(picture(1)), encode(picture(2)), None],
    }), path)
    return str(path)


def sample(key: str, text: str | None = None, image: bytes | None = None, **kw) -> Sample:
    images = [ImageRef(width=96, height=96, format="png", bytes=image)] if image else []
    return Sample(key=key, source="t", source_id=key, text=text, images=images, **kw)


def test_normalize_tokens():
    assert normalize_tokens("Hello,  WORLD! it's ＡＢＣ_1") == ["hello", "world", "it", "s", "abc", "1"]


def test_load_benchmark_formats(tmp_path, bench_parquet):
    items = list(load_benchmark(BenchmarkSource(name="p", path=bench_parquet)))
    assert [(i.item_id, i.answer, i.image_bytes is not None) for i in items] == [("q1", "8", True), ("q2", "Saturn", True),
                                                                                 ("q3", "x", False)]
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.png").write_bytes(encode(picture(3)))
    (folder / "sub" / "a.json").write_text(json.dumps({"question": "q?", "answer": ["1", "2"]}))
    (folder / "b.jpg").write_bytes(encode(picture(4), "JPEG"))
    items = list(load_benchmark(BenchmarkSource(name="f", path=str(folder))))
    assert [(i.item_id, i.question, i.answer) for i in items] == [("b", "", ""), ("sub/a", "q?", "1 2")]
    shard = tmp_path / "bench-000.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in [("k1.png", encode(picture(5))), ("k1.json", json.dumps({"id": "w1", "question": "hi"}).encode())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    items = list(load_benchmark(BenchmarkSource(name="w", path=str(shard))))
    assert [(i.benchmark, i.item_id, i.question, i.image_bytes is not None) for i in items] == [("w", "w1", "hi", True)]


def test_index_lookups(bench_parquet):
    config = ContaminationConfig(benchmarks=(BenchmarkSource(name="demo", path=bench_parquet),))
    index = ContaminationIndex.build(config)
    assert len(index) == 3 and len(index.phashes) == 2
    near = sample("near", image=encode(picture(1).resize((120, 120)), "JPEG", quality=70))
    far = sample("far", image=encode(picture(9)))
    hits = index.lookup([near, far])
    assert hits[0].reason == "benchmark_image_duplicate" and hits[0].item_id == "q1" and hits[1] is None
    text = sample("t", text="Homework: what is the TOTAL area of the shaded region in the figure, if each small square "
                            "has side two? Show work.")
    assert index.text_hit(text).item_id == "q1"
    assert index.text_hit(sample("s", text="quiz which planet in the picture has rings around it")).item_id == "q2"
    assert index.text_hit(sample("m", messages=[Message("user", "which planet in the picture has rings")])) is None
    assert index.text_hit(sample("n", text="Name it.")) is None  # 2 tokens < min_short_tokens: not indexed


class MeanColourEncoder:
    """A stand-in image encoder: the embedding is the mean colour, so recoloured copies are far apart."""

    def embed_images(self, images):
        vectors = np.array([np.asarray(i.convert("RGB"), dtype=np.float64).mean(axis=(0, 1)) for i in images])
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_embedding_confirms_phash_candidates(bench_parquet):
    config = ContaminationConfig(benchmarks=(BenchmarkSource(name="demo", path=bench_parquet),), check_text=False,
                                 max_phash_distance=20, min_embedding_cosine=0.999)
    index = ContaminationIndex.build(config, encoder=MeanColourEncoder())
    copy = sample("copy", image=encode(picture(1)))
    # Same structure, different palette: a pHash candidate (luminance DCT) that the embedding rejects.
    tinted = Image.fromarray((np.asarray(picture(1)) * [1.0, 0.2, 0.2]).astype(np.uint8))
    recoloured = sample("tint", image=encode(tinted))
    assert index.phash_candidates(sample_phash(recoloured))
    hits = index.lookup([copy, recoloured])
    assert hits[0] is not None and "cosine=1.000" in hits[0].detail()
    assert hits[1] is None


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="benchmarks is empty"):
        build_config(ContaminationConfig, {"enabled": True})
    with pytest.raises(ConfigError, match="does not exist"):
        build_config(ContaminationConfig, {"enabled": True, "benchmarks": [{"name": "a", "path": str(tmp_path / "no")}]})
    config = build_config(ContaminationConfig, {"benchmarks": [{"name": "a", "path": str(tmp_path)}]})
    assert config.benchmarks == (BenchmarkSource(name="a", path=str(tmp_path)),)


def test_contamination_stage_covers_every_reason(bench_parquet):
    config = ContaminationConfig(enabled=True, benchmarks=(BenchmarkSource(name="demo", path=bench_parquet),))
    samples = [
        sample("copy", text="a nice picture", image=encode(picture(1), "JPEG", quality=80)),
        sample("leak", text=f"Q: {QUESTION}? A: 8", image=encode(picture(7))),
        sample("clean", text="a dog on a beach", image=encode(picture(8))),
        sample("textonly", text="completely unrelated words here"),
    ]
    with BeamPipeline() as p:
        out = p | beam.Create(samples) | contamination_stage(config)
        assert_that(out["kept"] | "Kept" >> beam.Map(lambda s: s.key), equal_to(["clean", "textonly"]), label="kept")
        assert_that(out["rejected"] | "Rejected" >> beam.Map(lambda r: (r.key, r.reason, r.detail.split(" ")[:2])),
                    equal_to([("copy", "benchmark_image_duplicate", ["benchmark=demo", "item_id=q1"]),
                              ("leak", "benchmark_text_overlap", ["benchmark=demo", "item_id=q1"])]),
                    label="rejected")


def test_contamination_stage_empty_input(bench_parquet):
    config = ContaminationConfig(enabled=True, benchmarks=(BenchmarkSource(name="demo", path=bench_parquet),))
    with BeamPipeline() as p:
        out = p | beam.Create([]).with_output_types(Sample) | contamination_stage(config)
        assert_that(out["kept"], equal_to([]), label="kept")
        assert_that(out["rejected"], equal_to([]), label="rejected")


def test_build_accepts_items_directly():
    config = ContaminationConfig(check_images=False)
    index = ContaminationIndex.build(config, iter([BenchmarkItem("b", "1", question=QUESTION)]))
    assert index.text_hit(sample("x", text=QUESTION)).benchmark == "b"


def test_index_cache_is_reused_and_invalidated(tmp_path, bench_parquet):
    import shutil

    from vlmloom.curation.contamination import build_cached_index

    bench = tmp_path / "items.parquet"
    shutil.copy(bench_parquet, bench)
    config = ContaminationConfig(benchmarks=(BenchmarkSource(name="demo", path=str(bench)),),
                                 cache_dir=str(tmp_path / "cache"))
    first = build_cached_index(config)
    files = list((tmp_path / "cache").iterdir())
    assert len(files) == 1
    second = build_cached_index(config)
    assert second.items == first.items and second.grams == first.grams
    assert second.phashes.tolist() == first.phashes.tolist()
    assert second.text_hit(sample("t", text=QUESTION)).item_id == "q1"
    pq.write_table(pa.table({"item_id": ["z"], "question": ["new"], "answer": ["a"]}), bench)
    assert build_cached_index(config).items == [("demo", "z")]
    assert len(list((tmp_path / "cache").iterdir())) == 2
