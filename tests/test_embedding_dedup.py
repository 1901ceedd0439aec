"""Embedding dedup (the paper's video dedup) and semantic text dedup: the pair rule, bucket pairs, and the Beam
stage on generated videos (tiny random CLIP for frames) and handmade captions."""
import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from beam_runners import RUNNERS
from vlmloom.curation.embeddings import (TEXT_EMBEDDERS, EmbeddingDedupConfig, NearRule, SemanticTextDedupConfig,
                                         embedding_bucket_edges, evenly_spaced)
from vlmloom.curation.neardup import DedupConfig
from vlmloom.curation.video import validate_video_sample, video_sample_from_bytes
from vlmloom.demo.media import moving_shape_video
from vlmloom.demo.models import save_random_clip
from vlmloom.pipelines.dedup import _StandaloneDedup
from vlmloom.schemas.config import ConfigError, build_config
from vlmloom.schemas.records import Sample

NO = np.zeros(0, np.float32)  # no text
OFF = dict(exact=False, phash=False, minhash=False)
# A tiny random CLIP maps every frame near one direction: clips differ at the 4th decimal (different clips
# 0.998–0.9993, the same clip at two sizes > 0.99995), so the tests' visual threshold sits between.
VISUAL = 0.9997


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_random_clip(str(tmp_path_factory.mktemp("clip")), "tiny", "clip")



def _caption(key, text):
    return Sample(key=key, source="t", source_id=key, text=text)


def _v(*xs):
    v = np.asarray(xs, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_near_rule_needs_both_sides_and_text_presence_to_match():
    rule = NearRule(0.9, 0.8)
    same, tilted = _v(1, 0), _v(0.95, np.sqrt(1 - 0.95 ** 2))  # visual cosine 0.95
    text, para, other = _v(1, 0, 0), _v(0.85, np.sqrt(1 - 0.85 ** 2), 0), _v(0, 0, 1)
    assert rule((same, text), (tilted, para))  # 0.95 ≥ 0.9 and 0.85 ≥ 0.8
    assert not rule((same, text), (tilted, other))  # same clip, different meaning
    assert not rule((same, text), (_v(0, 1), text))  # same caption, different clip
    assert rule((same, NO), (tilted, NO))  # neither has text: visual alone
    assert not rule((same, text), (tilted, NO))  # a caption the other lacks
    assert NearRule(0.9)((same, NO), (tilted, NO))


def test_bucket_edges_are_capped_and_filtered_by_text():
    rule = NearRule(0.9, 0.8)
    t = _v(1, 0)
    members = [("c", _v(1, 0), t), ("a", _v(1, 0), t), ("b", _v(1, 0), _v(0, 1))]
    found = embedding_bucket_edges(members, rule, 100)
    assert (found.edges, found.capped) == ([("a", "c")], False)  # b's caption is not near
    capped = embedding_bucket_edges(members, rule, 1)
    assert (capped.edges, capped.capped) == ([], True)  # only a–b compared, and b's text fails


def test_evenly_spaced_frames():
    assert evenly_spaced(12, 4) == [0, 4, 7, 11]
    assert evenly_spaced(2, 4) == [0, 1]
    assert evenly_spaced(9, 1) == [4]
    assert evenly_spaced(0, 4) == []


def test_config_section_and_validation():
    cfg = build_config(DedupConfig, {"embedding": {"enabled": True, "visual_model_path": "/m", "text_threshold": 0.7},
                                     "semantic_text": {"threshold": 0.9}})
    assert cfg.embedding.text_threshold == 0.7 and cfg.semantic_text.threshold == 0.9
    with pytest.raises(ConfigError, match="visual_model_path"):
        build_config(DedupConfig, {"embedding": {"enabled": True}})
    with pytest.raises(ConfigError, match="unknown"):
        build_config(DedupConfig, {"semantic_text": {"backend": "nope"}})
    assert not DedupConfig().embedding.enabled and not DedupConfig().semantic_text.enabled


def test_curate_registers_the_stages_and_disable_turns_them_off():
    from vlmloom.pipelines.curate import CurateConfig, curate_stages

    on = {"dedup": {"semantic_text": {"enabled": True},
                    "embedding": {"enabled": True, "visual_model_path": "/m", "text_backend": "hashing"}}}
    names = lambda cfg: [n for _, stage in curate_stages(build_config(CurateConfig, cfg))  # noqa: E731
                         for n in getattr(stage, "stage_names", [])]
    assert names(on) == ["exact_dedup", "near_dup_image", "near_dup_text", "near_dup_embedding",
                         "near_dup_semantic_text"]
    assert names({**on, "disable": ["near_dup_embedding"]})[-1] == "near_dup_semantic_text"
    assert "near_dup_semantic_text" not in names({**on, "disable": ["near_dup_semantic_text"]})
    assert names({}) == ["exact_dedup", "near_dup_image", "near_dup_text"]  # off by default


def test_semantic_text_chain_never_drops_past_the_threshold():
    """A~B (0.9), B~C (0.9), A–C 0.8 < 0.85: one cluster, A (longest text) kept, B dropped, C kept and counted."""
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    a, b = " ".join(words), " ".join(["zed"] + words[1:])
    c = " ".join(["zed", "yak"] + words[2:])
    vecs = TEXT_EMBEDDERS.get("hashing")().embed([a, b, c])
    assert np.allclose([vecs[0] @ vecs[1], vecs[1] @ vecs[2], vecs[0] @ vecs[2]], [0.9, 0.9, 0.8], atol=1e-6)
    samples = [_caption("A", a), _caption("B", b), _caption("C", c), _caption("D", "something else entirely")]
    config = DedupConfig(**OFF, semantic_text=SemanticTextDedupConfig(
        enabled=True, backend="hashing", threshold=0.85, lsh_bits=4, lsh_tables=8))
    with TestPipeline() as p:
        out = p | beam.Create(samples) | _StandaloneDedup(config)
        assert_that(out["kept"] | "K" >> beam.Map(lambda s: s.key), equal_to(["A", "C", "D"]), label="kept")
        assert_that(out["rejected"] | "R" >> beam.Map(lambda r: (r.key, r.reason, r.detail)),
                    equal_to([("B", "near_duplicate_semantic_text", "duplicate of A")]), label="rejected")
    from apache_beam.metrics.metric import MetricsFilter

    counters = p.result.metrics().query(MetricsFilter().with_name("near_dup_semantic_text_chain_kept"))["counters"]
    assert sum(c.committed for c in counters) == 1


def _clips():
    red = ("disc", "red", "left to right")
    return {"red64": moving_shape_video(*red, frames=12, fps=8, size=64),
            "red48": moving_shape_video(*red, frames=12, fps=8, size=48),
            "red40": moving_shape_video(*red, frames=12, fps=8, size=40),
            "blue64": moving_shape_video("square", "blue", "top to bottom", frames=12, fps=8, size=64)}


def _videos(captions: dict[str, tuple[str, str]]):
    """Video samples as the decode stage leaves them (probed: frame size and count filled in)."""
    clips = _clips()
    samples = [video_sample_from_bytes("t", key, clips[clip], uri=f"{key}.mp4", text=text)
               for key, (clip, text) in captions.items()]
    for sample in samples:
        assert validate_video_sample(sample)[0] is None
    return samples


@pytest.mark.parametrize("runner", ["in_process", pytest.param("multi_processing", marks=pytest.mark.slow)])
def test_video_dedup_needs_both_sides_same_under_both_runners(clip_dir, runner):
    """Hashing text backend (lexical, set by hand): v2 = v1's clip at 48 px with a near caption → dropped (v1 is the
    larger copy: the representative rule's pixels, though v2's caption is longer); v3 = the
    clip at 40 px, a different caption → kept; v4 = another clip with v1's caption → kept; n1/n2 = the clip without
    text → visual alone, n2 dropped; c1 = a caption record (kind not listed) → untouched; bad = a video whose frames
    do not decode → takes no part, kept (the decode stage is where videos are judged)."""
    line = "a red disc moves from the left to the right side"
    samples = _videos({"v1": ("red64", line), "v2": ("red48", line + " slowly"),
                       "v3": ("red40", "a blue square falls down from top to bottom"),
                       "v4": ("blue64", line), "n1": ("red64", None), "n2": ("red48", None)})
    samples = [s.__class__(**{**s.__dict__, "key": s.source_id}) for s in samples] + [_caption("c1", line)]
    bad = video_sample_from_bytes("t", "bad", b"\x00\x00\x00\x18ftypmp42" + bytes(64), uri="bad.mp4", text=line)
    samples.append(bad.__class__(**{**bad.__dict__, "key": "bad"}))
    config = DedupConfig(**OFF, embedding=EmbeddingDedupConfig(
        enabled=True, visual_model_path=clip_dir, text_backend="hashing", frame_size=64, visual_threshold=VISUAL,
        text_threshold=0.8, lsh_bits=4, lsh_tables=8, batch_size=3))
    with TestPipeline(options=PipelineOptions(RUNNERS[runner])) as p:
        out = p | beam.Create(samples) | _StandaloneDedup(config)
        assert_that(out["kept"] | "K" >> beam.Map(lambda s: s.key), equal_to(["v1", "v3", "v4", "n1", "c1", "bad"]),
                    label="kept")
        assert_that(out["rejected"] | "R" >> beam.Map(lambda r: (r.key, r.reason, r.detail)),
                    equal_to([("v2", "near_duplicate_embedding", "duplicate of v1"),
                              ("n2", "near_duplicate_embedding", "duplicate of n1")]), label="rejected")


def test_video_dedup_with_minilm_paraphrase(clip_dir):
    """The real text model: a paraphrase of the caption on the same clip (another size) is dropped; a caption of a
    different meaning on the same clip is kept; a different clip with the same caption is kept."""
    captions = {"v1": ("red64", "A red disc slides from the left side to the right side."),
                "v2": ("red48", "A red disc moves from the left to the right."),
                "v3": ("red40", "A blue square falls from the top to the bottom."),
                "v4": ("blue64", "A red disc slides from the left side to the right side.")}
    text = TEXT_EMBEDDERS.get("minilm")()
    vecs = text.embed([t for _, t in captions.values()])
    assert vecs[0] @ vecs[1] >= 0.8 > vecs[0] @ vecs[2]  # the premise: MiniLM sees the paraphrase, not the other
    samples = [s.__class__(**{**s.__dict__, "key": s.source_id}) for s in _videos(captions)]
    config = DedupConfig(**OFF, embedding=EmbeddingDedupConfig(
        enabled=True, visual_model_path=clip_dir, frame_size=64, visual_threshold=VISUAL, lsh_bits=4, lsh_tables=8))
    with TestPipeline() as p:
        out = p | beam.Create(samples) | _StandaloneDedup(config)
        assert_that(out["kept"] | "K" >> beam.Map(lambda s: s.key), equal_to(["v1", "v3", "v4"]), label="kept")
        assert_that(out["rejected"] | "R" >> beam.Map(lambda r: (r.key, r.reason, r.detail)),
                    equal_to([("v2", "near_duplicate_embedding", "duplicate of v1")]), label="rejected")
