"""CLIP filter: encoders from tiny random CLIP/SigLIP dirs, threshold and top-fraction cuts, the Beam stage."""
from __future__ import annotations

import io
import math

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamPipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from vlmloom.curation.clip import ClipConfig, ClipScorer, load_encoder, top_fraction_cutoff
from vlmloom.demo.models import save_random_clip
from vlmloom.pipelines.model_stages import ClipStage, ModelStagesConfig, build_model_stages, describe_disabled
from vlmloom.schemas.config import ConfigError, build_config
from vlmloom.schemas.records import ImageRef, Sample

COLOURS = ["red", "blue", "green", "white", "black", "yellow", "purple", "orange"]
CAPTIONS = ["a red car", "a dog on the beach", "two cat near a tree", "a photo of a house", "text document",
            "a man sitting on a chair", "blue sky over water", "a small chart"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_random_clip(str(tmp_path_factory.mktemp("clip")), "tiny", "clip")


def png(colour: str, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def samples() -> list[Sample]:
    out = [Sample(key=f"s{i}", source="t", source_id=str(i), text=caption,
                  images=[ImageRef(width=40, height=30, format="png", bytes=png(colour))])
           for i, (colour, caption) in enumerate(zip(COLOURS, CAPTIONS))]
    out.append(Sample(key="notext", source="t", source_id="n", images=[ImageRef(bytes=png("red"))]))
    out.append(Sample(key="doc", source="t", source_id="d", kind="ocr", text="page"))  # other kind: untouched
    return out


@pytest.fixture(scope="module")
def scores(clip_dir) -> dict[str, float]:
    data = samples()[:len(COLOURS)]
    return {s.key: score for s, score in zip(data, ClipScorer(ClipConfig(model_path=clip_dir)).score_batch(data))}


def test_encoders_return_unit_rows(clip_dir, tmp_path):
    for path in (clip_dir, save_random_clip(str(tmp_path / "siglip"), "tiny", "siglip")):
        encoder = load_encoder("transformers", path)
        images = encoder.embed_images([Image.new("RGB", (50, 20), c) for c in ("red", "blue")])
        texts = encoder.embed_texts(["a red car", "a dog", "unknownword"])
        assert images.shape[0] == 2 and texts.shape[0] == 3 and images.shape[1] == texts.shape[1]
        assert np.allclose(np.linalg.norm(images, axis=1), 1, atol=1e-5)
        assert np.allclose(np.linalg.norm(texts, axis=1), 1, atol=1e-5)


def test_scores_do_not_depend_on_batching(clip_dir, scores):
    scorer = ClipScorer(ClipConfig(model_path=clip_dir))
    one_by_one = {s.key: scorer.score_batch([s])[0] for s in samples()[:3]}
    for key, value in one_by_one.items():
        assert value == pytest.approx(scores[key], abs=1e-4)


def test_missing_model_dir_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="not a local directory"):
        load_encoder("transformers", str(tmp_path / "nowhere" / "model"))


def test_top_fraction_cutoff():
    assert top_fraction_cutoff([0.1, 0.5, 0.3, 0.9], 0.5) == 0.5
    assert top_fraction_cutoff([0.1, 0.5, 0.3, 0.9], 0.3) == 0.5  # ceil(1.2) = 2 kept
    assert top_fraction_cutoff([], 0.5) == -math.inf
    assert top_fraction_cutoff([0.2], 1.0) == -math.inf


def test_config_errors():
    with pytest.raises(ConfigError, match="clip.model_path is empty"):
        build_config(ClipConfig, {"enabled": True})
    with pytest.raises(ConfigError, match="use one of"):
        build_config(ClipConfig, {"backend": "openclip"})
    with pytest.raises(ConfigError, match="neither"):
        build_config(ClipConfig, {"enabled": True, "model_path": "x", "threshold": -1})


def test_clip_stage_threshold(clip_dir, scores):
    threshold = float(np.median(list(scores.values())))
    above = sorted(k for k, v in scores.items() if v >= threshold)
    below = sorted(k for k, v in scores.items() if v < threshold)
    assert above and below
    config = ClipConfig(enabled=True, model_path=clip_dir, threshold=threshold, batch_size=3)
    with BeamPipeline() as p:
        out = p | beam.Create(samples()) | ClipStage(config)
        assert_that(out["kept"] | "Kept" >> beam.Map(lambda s: (s.key, s.signals.get("clip_score") is not None)),
                    equal_to([(k, True) for k in above] + [("doc", False)]), label="kept")
        assert_that(out["rejected"] | "Rejected" >> beam.Map(lambda r: (r.key, r.reason)),
                    equal_to([(k, "clip_below_threshold") for k in below] + [("notext", "clip_missing_input")]),
                    label="rejected")


def test_clip_stage_top_fraction(clip_dir, scores):
    ranked = sorted(scores, key=lambda k: -scores[k])
    config = ClipConfig(enabled=True, model_path=clip_dir, threshold=-1, top_fraction=0.25)
    with BeamPipeline() as p:
        out = p | beam.Create(samples()) | ClipStage(config)
        assert_that(out["kept"] | "Kept" >> beam.Map(lambda s: (s.key, tuple(e.stage for e in s.lineage))),
                    equal_to([(k, ("clip",)) for k in ranked[:2]] + [("doc", ())]), label="kept")
        assert_that(out["rejected"] | "Rejected" >> beam.Map(lambda r: (r.key, r.reason)),
                    equal_to([(k, "clip_below_top_fraction") for k in ranked[2:]]
                             + [("notext", "clip_missing_input")]), label="rejected")


def test_clip_stage_empty_input(clip_dir):
    config = ClipConfig(enabled=True, model_path=clip_dir, top_fraction=0.5)
    with BeamPipeline() as p:
        out = p | beam.Create([]).with_output_types(Sample) | ClipStage(config)
        assert_that(out["kept"], equal_to([]), label="kept")
        assert_that(out["rejected"], equal_to([]), label="rejected")


def test_build_model_stages_order_and_disabled_lines(clip_dir, tmp_path):
    config = build_config(ModelStagesConfig, {
        "clip": {"enabled": True, "model_path": clip_dir},
        "ocr": {"enabled": True},
        "concepts": {"enabled": True},
        "grounding": {"enabled": True},
    })
    assert [name for name, _ in build_model_stages(config)] == ["clip", "concepts", "ocr", "grounding"]
    lines = describe_disabled(config)
    assert [line.split(":")[0] for line in lines] == ["contamination", "recaption"]
    assert "recaption.base_url" in lines[1]
    assert describe_disabled(ModelStagesConfig())[0].startswith("clip: off (no clip.model_path")
    with pytest.raises(ConfigError, match="clip.model_path is empty"):
        build_config(ModelStagesConfig, {"clip": {"enabled": True}})


def test_open_clip_backend_skips_cleanly():
    pytest.importorskip("open_clip")
    pytest.importorskip("torchvision")
    assert load_encoder  # a real open_clip test needs a local checkpoint; see curation/clip.py


def test_contamination_confirms_with_the_clip_encoder(clip_dir, tmp_path):
    from vlmloom.curation.contamination import BenchmarkItem, BenchmarkSource, ContaminationConfig, ContaminationIndex
    from vlmloom.pipelines.model_stages import effective

    config = build_config(ModelStagesConfig, {
        "clip": {"enabled": True, "model_path": clip_dir},
        "contamination": {"enabled": True, "benchmarks": [{"name": "b", "path": str(tmp_path)}]},
    })
    assert effective(config).contamination.embedding_model_path == clip_dir  # falls back to clip's model
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).resize((64, 64))
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    index = ContaminationIndex.build(ContaminationConfig(check_text=False),
                                     iter([BenchmarkItem("b", "item-1", image_bytes=buf.getvalue())]),
                                     encoder=load_encoder("transformers", clip_dir))
    hit = index.lookup([Sample(key="x", source="t", source_id="x", images=[ImageRef(bytes=buf.getvalue())])])[0]
    assert hit is not None and hit.item_id == "item-1" and "cosine=" in hit.detail()
    assert BenchmarkSource(name="b", path=str(tmp_path)) in effective(config).contamination.benchmarks


def test_top_fraction_accumulator_is_bounded_and_independent_of_partitioning():
    from vlmloom.pipelines.model_stages import TopFractionCutoff
    rng = np.random.default_rng(0)
    scores = rng.uniform(-1, 1, 60_000).round(6).tolist()
    fn = TopFractionCutoff(0.1)

    def run(parts):
        accumulators = []
        for part in range(parts):
            acc = fn.create_accumulator()
            for s in scores[part::parts]:
                acc = fn.add_input(acc, s)
            accumulators.append(acc)
        merged = fn.merge_accumulators(accumulators)
        return len(merged), fn.extract_output(merged)

    size_one, cutoff_one = run(1)
    assert size_one <= 20_001  # bins of 1e-4 over [-1, 1], not one entry per score
    assert all(run(parts)[1] == cutoff_one for parts in (2, 3, 7))
    kept = sum(1 for s in scores if round(s * 10_000) >= round(cutoff_one * 10_000))
    assert 6_000 <= kept <= 6_000 + 20  # the top 10%, plus ties inside the cutoff's bin
