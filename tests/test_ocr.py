"""OCR annotation: geometry, the character-accuracy measure, rapidocr on clean renders, and the Beam stage."""
from __future__ import annotations

import hashlib
import io

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamPipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image, ImageDraw, ImageFont

from vlmloom.curation.ocr import (OCR_BACKENDS, OcrAnnotator, OcrConfig, RawLine, character_accuracy, edit_distance,
                                  normalize_box, reading_order, to_ocr_line, transcript)
from vlmloom.pipelines.model_stages import ocr_stage
from vlmloom.schemas.config import ConfigError, build_config
from vlmloom.schemas.records import ImageRef, OcrLine, Sample

DOC_LINES = ["Invoice 2041 for Northwind Traders", "Total due: 1,284.50 EUR by 30 June", "Thank you for your order."]


def _font(size: int):
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


def render(lines: list[str], width: int = 640, line_height: int = 48, size: int = 26) -> tuple[bytes, list[dict]]:
    image = Image.new("RGB", (width, 20 + line_height * len(lines)), "white")
    draw = ImageDraw.Draw(image)
    truth = []
    for i, text in enumerate(lines):
        y = 12 + i * line_height
        draw.text((16, y), text, fill="black", font=_font(size))
        truth.append({"text": text, "box": list(draw.textbbox((16, y), text, font=_font(size)))})
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue(), truth


def make_sample(name: str, data: bytes | None, kind: str = "ocr", **kw) -> Sample:
    width = height = 0
    if data and data.startswith(b"\x89PNG"):
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
    images = [ImageRef(sha256=hashlib.sha256(data).hexdigest(), width=width, height=height, format="png",
                       bytes=data)] if data is not None else []
    return Sample(key=name, source="test", source_id=name, kind=kind, images=images, **kw)


# --- pure functions ---------------------------------------------------------------------------
def _slow_edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def test_edit_distance_matches_reference():
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = "".join(rng.choice(list("abcé d"), size=rng.integers(0, 12)))
        b = "".join(rng.choice(list("abcé d"), size=rng.integers(0, 12)))
        assert edit_distance(a, b) == _slow_edit_distance(a, b), (a, b)


def test_character_accuracy():
    assert character_accuracy("hello", "hello") == 1.0
    assert character_accuracy("helo", "hello") == pytest.approx(0.8)
    assert character_accuracy(["ab", "cd"], "ab\ncd") == 1.0
    assert character_accuracy("", "") == 1.0
    assert character_accuracy("x", "") == 0.0
    assert character_accuracy("completely different and long", "abc") == 0.0


def test_boxes_are_thousandths_and_reading_order():
    assert normalize_box([50, 10, 0, 30], 100, 40) == [0, 250, 500, 750]
    assert normalize_box([-5, 0, 120, 40], 100, 40) == [0, 0, 1000, 1000]
    line = to_ocr_line(RawLine("a", [(10, 10), (60, 12), (60, 30), (10, 28)], 0.91), 200, 100)
    assert line.box == [50, 100, 300, 300] and line.polygon == [50, 100, 300, 120, 300, 300, 50, 280]
    right = OcrLine("right", [600, 102, 900, 150])
    left = OcrLine("left", [10, 100, 300, 148])
    below = OcrLine("below", [10, 300, 300, 350])
    assert [l.text for l in reading_order([below, right, left])] == ["left", "right", "below"]
    assert transcript([left, right]) == "left\nright"


def test_config_errors_say_how_to_fix():
    with pytest.raises(ConfigError, match="use one of"):
        build_config(OcrConfig, {"backend": "tesseract"})
    with pytest.raises(ConfigError, match="det_model_path"):
        build_config(OcrConfig, {"enabled": True, "backend": "paddleocr"})
    assert build_config(OcrConfig, {"enabled": True, "kinds": ["ocr", "gui"]}).kinds == ("ocr", "gui")


# --- rapidocr on clean renders ----------------------------------------------------------------
@pytest.fixture(scope="module")
def reader():
    return OCR_BACKENDS.get("rapidocr")(OcrConfig())


def test_rapidocr_character_accuracy_on_clean_render(reader):
    data, truth = render(DOC_LINES)
    sample = make_sample("doc", data, meta={"lines": truth})
    annotator = OcrAnnotator(OcrConfig(), reader)
    verdict = annotator.judge(sample, annotator.read_batch([sample])[0])
    assert verdict.keep
    accuracy = character_accuracy(transcript(sample.annotations.ocr), DOC_LINES)
    assert accuracy >= 0.95, (accuracy, transcript(sample.annotations.ocr))
    assert verdict.signals["ocr_char_accuracy"] == pytest.approx(accuracy, abs=1e-4)
    assert verdict.signals["ocr_lines"] == len(sample.annotations.ocr) >= 3
    assert sample.text == transcript(sample.annotations.ocr)
    for line, ref in zip(sample.annotations.ocr, truth):  # boxes land on the rendered text
        x1, y1, x2, y2 = normalize_box(ref["box"], 640, 20 + 48 * 3)
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2  # the rendered line's centre lies inside the detected box
        assert line.box[0] <= cx <= line.box[2] and line.box[1] <= cy <= line.box[3], (line, ref)


def test_ocr_stage_covers_every_reason(reader):
    doc, truth = render(["Quarterly report 2024", "Revenue grew by 12 percent"])
    blank = io.BytesIO()
    Image.new("RGB", (200, 60), "white").save(blank, format="PNG")
    samples = [
        make_sample("doc", doc, meta={"lines": truth}),
        make_sample("blank", blank.getvalue()),  # → ocr_no_text_detected
        make_sample("photo", blank.getvalue(), kind="caption", text="a white wall"),  # other kind: untouched
        make_sample("pre", blank.getvalue()),  # carries ground-truth lines: the model is skipped
        make_sample("broken", b"not an image"),  # unexpected error → quarantined, alone
    ]
    samples[3].annotations.ocr = [OcrLine("given", [0, 0, 500, 500], score=1.0)]
    stage = ocr_stage(OcrConfig(enabled=True, batch_size=8), max_error_ratio=0.5)
    with BeamPipeline() as p:
        out = p | beam.Create(samples) | stage
        assert_that(out["kept"] | "KeptKeys" >> beam.Map(lambda s: (s.key, s.signals.get("ocr_lines"),
                                                                   [l.text for l in s.annotations.ocr][:1])),
                    equal_to([("doc", 2, ["Quarterly report 2024"]), ("photo", None, []), ("pre", 1, ["given"])]),
                    label="kept")
        assert_that(out["rejected"] | "Reasons" >> beam.Map(lambda r: (r.key, r.stage, r.reason)),
                    equal_to([("blank", "ocr", "ocr_no_text_detected"), ("broken", "ocr", "quarantined_error")]),
                    label="rejected")


def test_ocr_stage_empty_input():
    with BeamPipeline() as p:
        out = p | beam.Create([], reshuffle=False).with_output_types(Sample) | ocr_stage(OcrConfig(enabled=True))
        assert_that(out["kept"], equal_to([]), label="kept")
        assert_that(out["rejected"], equal_to([]), label="rejected")


def test_low_score_lines_are_discarded():
    annotator = OcrAnnotator(OcrConfig(min_score=0.8), reader=lambda image: [])
    data, _ = render(["x"])
    sample = make_sample("s", data)
    verdict = annotator.judge(sample, [RawLine("faint", [(0, 0), (10, 0), (10, 5), (0, 5)], 0.4)])
    assert not verdict.keep and verdict.reason == "ocr_no_text_detected" and "below ocr.min_score" in verdict.detail


def test_paddleocr_backend_skips_cleanly():
    pytest.importorskip("paddleocr")
    assert "paddleocr" in OCR_BACKENDS


@pytest.mark.slow
def test_model_stages_through_curate_on_demo_corpus(tmp_path):
    """The demo's model stages inside `curate`: OCR accuracy on the rendered documents (≥ 95% on clean
    renders), grounding from OCR/GUI boxes, and every planted benchmark leak caught by contamination."""
    import json
    import os

    import pyarrow.parquet as pq

    demo_corpus = pytest.importorskip("vlmloom.demo.corpus")
    from vlmloom.pipelines.curate import curate, load_config
    from vlmloom.demo.run import demo_model_overrides
    from vlmloom.schemas.config import apply_overrides, load_yaml

    corpus = str(tmp_path / "corpus")
    expected = demo_corpus.build_demo_corpus(corpus, demo_corpus.DemoCorpusConfig(num_samples=50))
    data = load_yaml(os.path.join(os.path.dirname(__file__), "..", "demo", "configs", "demo_curate.yaml"))
    data["inputs"] = [{"path": os.path.join(corpus, "tars", "*.tar"), "name": "demo_wds"},
                      {"path": os.path.join(corpus, "manifest.parquet"), "name": "demo_manifest"}]
    data["output"] = str(tmp_path / "curated")
    curate(load_config(apply_overrides(data, demo_model_overrides(corpus))), [])

    manifest = pq.read_table(tmp_path / "curated" / "manifest").to_pylist()
    rejected = pq.read_table(tmp_path / "curated" / "rejected").to_pylist()
    model_stages = {"ocr", "grounding", "concepts", "contamination"}
    assert [r for r in rejected if r["stage"] in model_stages and r["reason"] == "quarantined_error"] == []
    ocr = [json.loads(r["signals"]) for r in manifest if r["kind"] == "ocr"]
    accuracies = [s["ocr_char_accuracy"] for s in ocr if "ocr_char_accuracy" in s]
    assert ocr and len(accuracies) == len(ocr)
    assert sum(accuracies) / len(accuracies) >= 0.95 and min(accuracies) >= 0.9, accuracies
    assert all(s["grounding_boxes"] >= 2 for s in ocr)
    gui = [json.loads(r["signals"]) for r in manifest if r["kind"] == "gui"]
    assert gui and all(s.get("grounding_boxes_gui", 0) >= 2 for s in gui)
    caught = {(r["source_id"], r["detail"].split()[1]) for r in rejected if r["stage"] == "contamination"}
    removed_earlier = {r["source_id"] for r in rejected if r["stage"] != "contamination"}
    for plant in expected["benchmark_plants"]:
        if plant["source_id"] not in removed_earlier:
            assert (plant["source_id"], f"item_id={plant['item_id']}") in caught, plant
