"""Image–text relevance in interleaved documents: nearby text, which images leave (a fake encoder whose cosines are
known exactly), the kind rule for a document left without images, the Beam stage (quarantine), and a curate run
with a tiny random CLIP through the real handler: counts, signals, and the same bytes on 1 worker and 2 processes."""
from __future__ import annotations

import hashlib
import io
import json
import math
import os

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from beam_runners import RUNNERS
from vlmloom.curation.clip import ENCODER_BACKENDS, ClipConfig
from vlmloom.curation.documents import DocumentConfig
from vlmloom.curation.image_relevance import RelevanceScorer, judge_relevance, nearby_texts
from vlmloom.pipelines import report as report_mod
from vlmloom.schemas.config import ConfigError
from vlmloom.schemas.records import ImageRef, Sample, Segment

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "magenta": (255, 0, 255)}


def png(colour: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), COLOURS[colour]).save(buf, format="PNG")
    return buf.getvalue()


class RgbEncoder:
    """Images → their colour as a unit vector (r, g, b, 0); texts → the unit sum of the colour words they hold
    (red e0, green e1, blue e2), or e3 when they hold none. So red vs "a red one" is 1, red vs "red and blue"
    1/√2 (0.7071), magenta vs "a red one" 1/√2, any image vs a text without colour words 0."""

    def embed_images(self, images):
        rows = np.array([[*(c / 255 for c in image.getpixel((0, 0))), 0.0] for image in images])
        return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)  # black: a zero row

    def embed_texts(self, texts):
        rows = np.array([[*(float(w in t.split()) for w in ("red", "green", "blue")), 0.0] for t in texts])
        rows[rows.sum(axis=1) == 0, 3] = 1.0
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@ENCODER_BACKENDS.register("test_rgb")
def _rgb_encoder(model_path, device="cpu", threads=0, max_text_tokens=77):
    return RgbEncoder()


def doc(key, parts, kind="interleaved"):
    """parts: strings are text segments, ("img", colour) images (colour None: an image without bytes)."""
    images, segments = [], []
    for part in parts:
        if isinstance(part, tuple):
            segments.append(Segment(type="image", image_index=len(images)))
            images.append(ImageRef(sha256=f"{key}-{len(images)}", bytes=png(part[1]) if part[1] else None))
        else:
            segments.append(Segment(type="text", text=part))
    return Sample(key=key, source="web", source_id=key, kind=kind, images=images, segments=segments)


def layout(sample):
    return [s.text if s.type == "text" else sample.images[s.image_index].sha256 for s in sample.segments]


def test_nearby_text_is_each_side_within_the_window_passing_over_images():
    d = doc("d", ["intro words here", ("img", "red"), ("img", "blue"), "a  caption\nbelow", "more", ("img", "red")])
    assert nearby_texts(d, 300) == [("intro words here", "a caption below more")] * 2 + [
        ("intro words here a caption below more",)]
    # a 9-character window: the nearest characters, cut back to whole words ("words here", "below more" would be 10)
    assert nearby_texts(d, 9) == [("here", "a caption")] * 2 + [("more",)]
    # an image no segment places is scored against the document's first window; no text at all: nothing
    unplaced = Sample(key="u", source="web", source_id="u", kind="interleaved", images=[ImageRef(sha256="x")],
                      segments=[Segment(type="text", text="first part"), Segment(type="text", text="second")])
    assert nearby_texts(unplaced, 12) == [("first part",)]
    assert nearby_texts(doc("e", [("img", "red")]), 300) == [()]


def scorer(window=300):
    return RelevanceScorer(ClipConfig(model_path="unused", batch_size=2), window, encoder=RgbEncoder())


def test_scores_are_the_best_side_and_low_ones_leave():
    d = doc("d", ["a red one", ("img", "red"), ("img", "green"), "plain words", ("img", "magenta"),
                  ("img", "blue"), "red and blue", ("img", None)])
    scores = scorer().score_document(d)
    # red: "a red one" 1; green: nothing green anywhere near, 0; magenta: before "a red one plain words" is red
    # only (1/√2), after "red and blue" (1); blue: before has red (0), after "red and blue" 1/√2; no bytes: None
    assert scores == [1.0, 0.0, 1.0, 0.7071, None]
    # an 11-character window: magenta sees "plain words" (0) and "red and" (1/√2), blue "plain words" and "red and"
    assert scorer(window=11).score_document(d) == [1.0, 0.0, 0.7071, 0.0, None]
    kept, verdict = judge_relevance(d, scores, DocumentConfig(min_image_text_similarity=0.8))
    assert layout(kept) == ["a red one", "d-0", "plain words", "d-2", "red and blue", "d-4"]
    assert verdict.keep and verdict.signals == {"document_images": 3, "document_text_chars": 32,
                                                "image_text_scores": scores, "irrelevant_images_removed": 2}
    kept, verdict = judge_relevance(d, scores, DocumentConfig(min_image_text_similarity=-1))  # off
    assert kept is d and verdict.signals["irrelevant_images_removed"] == 0


def test_batching_does_not_change_scores():
    docs = [doc("a", ["red", ("img", "red"), ("img", "blue")]), doc("b", [("img", "green"), "green blue"])]
    assert scorer().score_batch(docs) == [scorer().score_document(d) for d in docs] == [[1.0, 0.0],
                                                                                           [0.7071]]


def test_a_document_left_without_images_follows_its_kind_rule():
    d = doc("d", ["nothing coloured here", ("img", "red"), ("img", "blue")])
    scores = scorer().score_document(d)
    assert scores == [0.0, 0.0]
    kept, verdict = judge_relevance(d, scores, DocumentConfig())  # interleaved needs no image: a text document
    assert verdict.keep and layout(kept) == ["nothing coloured here"] and verdict.signals["document_images"] == 0
    _, verdict = judge_relevance(d, scores, DocumentConfig(min_images=1))  # ... unless the documents rules ask
    assert (verdict.keep, verdict.reason) == (False, "too_few_images")
    page = doc("p", ["nothing coloured here", ("img", "red")], kind="ocr")  # a kind that needs an image
    _, verdict = judge_relevance(page, scorer().score_document(page), DocumentConfig(kinds=("ocr",)))
    assert (verdict.keep, verdict.reason) == (False, "no_image")


@pytest.mark.parametrize("values", [{"min_image_text_similarity": 1.5}, {"min_image_text_similarity": -2},
                                    {"image_text_window_chars": 0}])
def test_config_errors(values):
    with pytest.raises(ConfigError, match="documents"):
        DocumentConfig(**values)


def test_the_stage_removes_counts_and_quarantines_a_failing_document():
    from vlmloom.pipelines.model_stages import ImageRelevanceStage

    broken = doc("broken", ["a red one", ("img", "red")])
    broken.images[0].bytes = b"not an image"
    docs = [doc("d1", ["a red one", ("img", "red"), ("img", "green")]),
            doc("d2", ["blue sky", ("img", "red")]),  # its only image leaves; min_images 1 rejects it
            doc("d3", ["no images at all"]), broken,
            Sample(key="c", source="web", source_id="c", text="a caption", images=[ImageRef(bytes=png("green"))])]
    config = DocumentConfig(min_image_text_similarity=0.5, min_images=1)
    clip = ClipConfig(enabled=True, backend="test_rgb", model_path="unused", batch_size=4)
    with TestPipeline() as p:
        out = p | beam.Create(docs) | ImageRelevanceStage(config, clip, max_error_ratio=0.5)  # 1 of 3 fails
        assert_that(out["kept"] | "K" >> beam.Map(lambda s: (s.key, tuple(layout(s)) if s.segments else None,
                                                             s.signals.get("image_text_scores"))),
                    equal_to([("d1", ("a red one", "d1-0"), [1.0, 0.0]), ("d3", ("no images at all",), None),
                              ("c", None, None)]), label="kept")
        assert_that(out["rejected"] | "R" >> beam.Map(
            lambda r: (r.key, r.stage, r.reason, r.field_values().get("irrelevant_images_removed"),
                       "cannot identify image file" in r.detail)),
            equal_to([("d2", "image_relevance", "too_few_images", 1, False),
                      ("broken", "image_relevance", "quarantined_error", None, True)]), label="rejected")


# --- curate with a tiny random CLIP through the real handler -------------------------------------------------
WORDS = ["a red car", "a dog on the beach", "two cat near a tree", "a photo of a house", "blue sky over water",
         "a man sitting on a chair", "a small chart", "green tree near the street"]


def jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    arr = (rng.random((6, 8, 3)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(arr).resize((64, 48), Image.NEAREST).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def mmc4_documents(root) -> tuple[list[dict], list[Sample]]:
    """Six MMC4 documents of 2–3 images; also the samples the reader makes of them (image before its sentence)."""
    os.makedirs(root / "images")
    rows, samples, n = [], [], 0
    for d in range(6):
        sentences = [WORDS[(d + k) % len(WORDS)] + f" number {d}{k}" for k in range(3)]
        info, images, before = [], [], {}
        for k in range(2 + d % 2):
            name = f"i{n}.jpg"
            data = jpeg(n)
            (root / "images" / name).write_bytes(data)
            info.append({"image_name": name, "raw_url": f"https://x/{name}", "matched_text_index": k})
            images.append(ImageRef(sha256=hashlib.sha256(data).hexdigest(), bytes=data))
            before.setdefault(k, []).append(len(images) - 1)
            n += 1
        rows.append({"text_list": sentences, "image_info": info, "url": f"https://doc/{d}"})
        segments = []
        for k, sentence in enumerate(sentences):
            segments += [Segment(type="image", image_index=i) for i in before.get(k, [])]
            segments.append(Segment(type="text", text=sentence))
        samples.append(Sample(key=f"d{d}", source="docs", source_id=f"docs_shard_0_v2.jsonl:{d + 1}",
                              kind="interleaved", images=images,
                              segments=segments))
    (root / "docs_shard_0_v2.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [{"path": str(root), "image_root": str(root / "images"), "name": "docs"}], samples


@pytest.fixture(scope="module")
def tiny_clip_run(tmp_path_factory):
    from vlmloom.demo.models import save_random_clip
    from vlmloom.pipelines.curate import curate, load_config

    root = tmp_path_factory.mktemp("relevance")
    clip_dir = save_random_clip(str(root / "clip"), "tiny", "clip")
    inputs, samples = mmc4_documents(root / "docs")
    clip = ClipConfig(model_path=clip_dir)
    expected = RelevanceScorer(clip, 300).score_batch(samples)  # the same encoder, called directly
    flat = sorted(s for scores in expected for s in scores)
    threshold = round((flat[len(flat) // 2 - 1] + flat[len(flat) // 2]) / 2, 6)  # about half the images leave
    data = {"inputs": inputs, "disable": ["heuristics", "language", "clip"],
            "documents": {"min_image_text_similarity": threshold, "min_images": 1},
            "models": {"clip": {"enabled": True, "model_path": clip_dir, "batch_size": 4}}}

    def run(out, runner):
        report = curate(load_config({**data, "output": str(out)}), RUNNERS[runner])
        return report

    report = run(root / "out", "in_process")
    return root, run, report, samples, expected, threshold


def test_a_documents_scores_are_the_same_bits_whatever_shares_its_batch(tiny_clip_run, monkeypatch):
    from vlmloom.curation import image_relevance

    root, _, _, samples, _, _ = tiny_clip_run
    monkeypatch.setattr(image_relevance, "SCORE_DIGITS", 17)  # no rounding: the raw floats must agree
    scorer = RelevanceScorer(ClipConfig(model_path=str(root / "clip"), batch_size=4), 300)
    together = scorer.score_batch(samples)
    assert [scorer.score_batch([s])[0] for s in samples] == together
    assert scorer.score_batch(samples[3:] + samples[:3]) == together[3:] + together[:3]


def test_curate_runs_the_stage_with_a_tiny_clip(tiny_clip_run):
    root, _, report, samples, expected, threshold = tiny_clip_run
    assert all(s is not None for scores in expected for s in scores)
    removed = {s.key: [i for i, score in enumerate(scores) if score < threshold] for s, scores in zip(samples, expected)}
    left = {key: len(s.images) - len(removed[key]) for key, s in ((s.key, s) for s in samples)}
    total = sum(len(r) for r in removed.values())
    assert 0 < total < sum(len(s.images) for s in samples)
    assert report["images_removed"] == {"image_relevance": {"irrelevant_image": total}}
    assert report["counters"]["image_relevance/images_removed_irrelevant_image"] == total
    manifest = report_mod.read_manifest(str(root / "out"))
    rejected = report_mod.read_rejections(str(root / "out"))
    by_id = {s.source_id: s for s in samples}
    seen = {}
    for row in manifest:
        signals = json.loads(row["signals"])
        seen[row["source_id"]] = (signals["image_text_scores"], signals["irrelevant_images_removed"],
                                  signals["document_images"], "kept")
        assert row["num_images"] == signals["document_images"]
    for row in rejected:
        fields = json.loads(row["fields"])
        assert (row["stage"], row["reason"]) == ("image_relevance", "too_few_images")
        seen[row["source_id"]] = (fields["image_text_scores"], fields["irrelevant_images_removed"],
                                  fields["document_images"], "rejected")
    want = {}
    for source_id, sample in by_id.items():
        scores = expected[samples.index(sample)]
        want[source_id] = (pytest.approx(scores, abs=1e-4), len(removed[sample.key]), left[sample.key],
                           "kept" if left[sample.key] else "rejected")
    assert seen == want
    # vlmloom trace shows a kept document's scores under the stage that wrote them
    from vlmloom.pipelines.trace import trace

    row = manifest[0]
    stages = {e["stage"]: e for e in trace(row["key"], str(root / "out"))["samples"][0]["curation"]["stages"]}
    assert stages["image_relevance"]["signals"]["image_text_scores"] == json.loads(row["signals"])["image_text_scores"]
    funnel = {row["stage"]: row for row in report["funnel"]}
    assert funnel["image_relevance"]["dropped"] == (
        {"too_few_images": sum(1 for v in left.values() if not v)} if not all(left.values()) else {})


@pytest.mark.slow
def test_the_stage_gives_the_same_bytes_on_two_processes(tiny_clip_run):
    root, run, _, _, _, _ = tiny_clip_run
    run(root / "out2", "multi_processing")
    for sub in ("shards", "manifest", "rejected"):
        names = sorted(os.listdir(root / "out" / sub))
        assert names == sorted(os.listdir(root / "out2" / sub))
        for name in names:
            assert (root / "out" / sub / name).read_bytes() == (root / "out2" / sub / name).read_bytes(), name
