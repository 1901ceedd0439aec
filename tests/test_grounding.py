"""Grounding annotation from OCR lines and GUI element sidecars, the box rendering, and the Beam stage."""
from __future__ import annotations

import io

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamPipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from vlmloom.curation.grounding import (TRANSCRIBE_PROMPT, Detection, GroundingAnnotator, GroundingConfig,
                                        render_box, sample_transcript)
from vlmloom.pipelines.model_stages import grounding_stage
from vlmloom.schemas.config import ConfigError, build_config
from vlmloom.schemas.records import Grounding, ImageRef, OcrLine, Sample


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(buf, format="PNG")
    return buf.getvalue()


def make(key: str, kind: str, width: int = 200, height: int = 100, **kw) -> Sample:
    return Sample(key=key, source="t", source_id=key, kind=kind,
                  images=[ImageRef(width=width, height=height, format="png", bytes=_png(width, height))], **kw)


ELEMENTS = [
    {"label": "Search", "type": "button", "box": [10, 10, 50, 30]},
    {"label": "", "type": "checkbox", "box": [100, 50, 120, 70]},
    {"label": "Broken", "type": "text", "box": [30, 30, 30, 40]},  # zero width: ignored
    {"label": "No box", "type": "text"},  # malformed: ignored
]


def test_render_box():
    assert render_box([1, 20, 300, 999]) == "<|begin_of_box|>[1,20,300,999]<|end_of_box|>"


def test_gui_elements_become_thousandths_and_messages():
    sample = make("gui", "gui", meta={"elements": ELEMENTS})
    verdict = GroundingAnnotator(GroundingConfig()).judge(sample)
    assert verdict.keep and verdict.signals["grounding_boxes"] == 2 and verdict.signals["grounding_boxes_gui"] == 2
    assert sample.annotations.grounding == [Grounding("Search", [50, 100, 250, 300], "gui"),
                                            Grounding("checkbox", [500, 500, 600, 700], "gui")]
    assert [m.role for m in sample.messages] == ["user", "assistant", "user", "assistant"]
    assert sample.messages[0].content.startswith("<image>") and '"Search"' in sample.messages[0].content
    assert sample.messages[1].content == "<|begin_of_box|>[50,100,250,300]<|end_of_box|>"
    assert "<image>" not in sample.messages[2].content
    assert not any(TRANSCRIBE_PROMPT in m.content for m in sample.messages)  # no OCR text: no transcription turn


def test_ocr_sample_gets_a_transcription_turn_first():
    """An OCR sample's transcript (its document text, else its OCR lines in reading order) is answered in one
    turn ahead of the grounding Q/A, so chat rendering trains the text; only the first user turn has <image>."""
    lines = [OcrLine("Due", [0, 300, 100, 330]), OcrLine("Paid", [0, 200, 300, 250]),
             OcrLine("Right", [500, 205, 700, 245]), OcrLine("Head", [0, 0, 300, 50])]
    sample = make("doc", "ocr")
    sample.annotations.ocr = list(lines)
    assert GroundingAnnotator(GroundingConfig(max_turns=1)).judge(sample).keep
    assert [m.role for m in sample.messages] == ["user", "assistant", "user", "assistant"]
    assert sample.messages[0].content == "<image>" + TRANSCRIBE_PROMPT
    assert sample.messages[1].content == "Head\nPaid\nRight\nDue"  # reading order: rows top-down, left to right
    assert sample.messages[2].content.startswith("Locate ") and "<image>" not in sample.messages[2].content
    assert sample.messages[3].content == render_box(sample.annotations.grounding[0].box)

    with_text = make("doc2", "ocr", text="  HEAD\nPAID RIGHT\nDUE  ")
    with_text.annotations.ocr = list(lines)
    assert GroundingAnnotator(GroundingConfig(max_turns=0)).judge(with_text).keep
    assert [m.content for m in with_text.messages] == ["<image>" + TRANSCRIBE_PROMPT, "HEAD\nPAID RIGHT\nDUE"]

    off = make("doc3", "ocr")
    off.annotations.ocr = list(lines)
    assert GroundingAnnotator(GroundingConfig(transcript_max_chars=0)).judge(off).keep
    assert len(off.messages) == 2 * 4 and not any(TRANSCRIBE_PROMPT in m.content for m in off.messages)


def test_transcript_cap_cuts_at_a_line_break():
    sample = make("doc", "ocr", text="first line\nsecond line\nthird")
    assert sample_transcript(sample, 100) == "first line\nsecond line\nthird"
    assert sample_transcript(sample, 22) == "first line\nsecond line"  # the break at 22 is within the cap
    assert sample_transcript(sample, 21) == "first line"
    assert sample_transcript(sample, 4) == "firs"  # the first line alone is longer: cut mid-line
    assert sample_transcript(sample, 0) == ""
    with pytest.raises(ConfigError, match="transcript_max_chars"):
        build_config(GroundingConfig, {"transcript_max_chars": -1})


def test_gui_sample_with_ocr_text_transcribes_its_lines_not_its_caption():
    sample = make("gui", "gui", text="a settings screen", meta={"elements": ELEMENTS})
    sample.annotations.ocr = [OcrLine("Cancel", [600, 800, 700, 850]), OcrLine("Settings", [0, 0, 300, 60])]
    assert GroundingAnnotator(GroundingConfig(sources=("gui",))).judge(sample).keep
    assert [m.content for m in sample.messages[:2]] == ["<image>" + TRANSCRIBE_PROMPT, "Settings\nCancel"]
    assert len(sample.messages) == 2 + 2 * 2


def test_ocr_lines_ambiguous_phrases_and_caps():
    lines = [OcrLine("Total", [0, 0, 100, 50]), OcrLine("Total", [0, 100, 100, 150]),
             OcrLine("Paid", [0, 200, 300, 250]), OcrLine("Due", [0, 300, 100, 330]), OcrLine(" ", [0, 0, 5, 5])]
    sample = make("doc", "ocr")
    sample.annotations.ocr = lines
    verdict = GroundingAnnotator(GroundingConfig(max_boxes=1, add_messages=False)).judge(sample)
    assert not verdict.keep and verdict.reason == "grounding_too_few_boxes"  # capped to 1 < min_boxes 2
    sample = make("doc", "ocr")
    sample.annotations.ocr = lines
    verdict = GroundingAnnotator(GroundingConfig(add_messages=False)).judge(sample)
    assert verdict.keep and [g.phrase for g in sample.annotations.grounding] == ["Paid", "Due"]
    assert sample.messages == []


def test_detections_are_thresholded_and_merged_with_existing():
    sample = make("nat", "grounding")
    sample.annotations.grounding = [Grounding("given", [0, 0, 10, 10], "input")]
    config = GroundingConfig(sources=("detector",), detector_threshold=0.5)
    verdict = GroundingAnnotator(config).judge(sample, [Detection("dog", [20, 10, 120, 90], 0.9),
                                                        Detection("cat", [0, 0, 50, 50], 0.2)])
    assert verdict.keep
    assert sample.annotations.grounding == [Grounding("given", [0, 0, 10, 10], "input"),
                                            Grounding("dog", [100, 100, 600, 900], "detector")]


def test_config_errors():
    with pytest.raises(ConfigError, match="subset of"):
        build_config(GroundingConfig, {"sources": ["ocr", "sam"]})
    with pytest.raises(ConfigError, match="detector_model_path"):
        build_config(GroundingConfig, {"enabled": True, "sources": ["detector"], "detector_labels": ["dog"]})


def test_grounding_stage_covers_every_reason():
    doc = make("doc", "ocr")
    doc.annotations.ocr = [OcrLine("Name", [0, 0, 100, 40]), OcrLine("Address", [0, 50, 200, 90])]
    lonely = make("lonely", "ocr")
    lonely.annotations.ocr = [OcrLine("Only", [0, 0, 100, 40])]
    samples = [doc, lonely, make("gui", "gui", meta={"elements": ELEMENTS}),
               make("photo", "caption", text="a cat"),  # other kind: passes untouched
               make("nobox", "gui", meta={"elements": [{"label": "x", "box": [1, 1]}]})]
    with BeamPipeline() as p:
        out = p | beam.Create(samples) | grounding_stage(GroundingConfig(enabled=True))
        assert_that(out["kept"] | "Kept" >> beam.Map(lambda s: (s.key, len(s.annotations.grounding), len(s.messages))),
                    equal_to([("doc", 2, 6), ("gui", 2, 4), ("photo", 0, 0)]), label="kept")
        assert_that(out["rejected"] | "Rejected" >> beam.Map(lambda r: (r.key, r.reason)),
                    equal_to([("lonely", "grounding_too_few_boxes"), ("nobox", "grounding_too_few_boxes")]),
                    label="rejected")


def test_grounding_stage_empty_input():
    with BeamPipeline() as p:
        out = p | beam.Create([]).with_output_types(Sample) | grounding_stage(GroundingConfig(enabled=True))
        assert_that(out["kept"], equal_to([]), label="kept")
        assert_that(out["rejected"], equal_to([]), label="rejected")


def save_random_owlvit(path: str) -> str:
    """A tiny random OWL-ViT zero-shot detector with a word-level tokenizer, saved to `path`."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import (OwlViTConfig, OwlViTForObjectDetection, OwlViTImageProcessorPil, OwlViTProcessor,
                              PreTrainedTokenizerFast)

    words = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"] + "a photo of dog cat car red button".split()
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="[BOS] $A [EOS]",
                                                             special_tokens=[("[BOS]", 2), ("[EOS]", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="[BOS]", eos_token="[EOS]",
                                   pad_token="[PAD]", unk_token="[UNK]", model_max_length=16)
    image_processor = OwlViTImageProcessorPil(size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32})
    OwlViTProcessor(image_processor=image_processor, tokenizer=fast).save_pretrained(path)
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    config = OwlViTConfig(text_config=dict(vocab_size=len(words), max_position_embeddings=16, eos_token_id=3,
                                           bos_token_id=2, pad_token_id=0, **tower),
                          vision_config=dict(image_size=32, patch_size=8, **tower), projection_dim=32)
    torch.manual_seed(0)
    OwlViTForObjectDetection(config).save_pretrained(path)
    return path


def test_detector_backend_runs_in_the_stage(tmp_path):
    path = save_random_owlvit(str(tmp_path / "owlvit"))
    config = GroundingConfig(enabled=True, sources=("detector",), kinds=("caption",), detector_model_path=path,
                             detector_labels=("dog", "car"), detector_threshold=0.0, min_boxes=1)
    photos = [make(f"p{i}", "caption", width=64, height=48) for i in range(3)]
    photos[0].signals["concept_names"] = ["cat"]  # matched concepts join the label set
    annotator = GroundingAnnotator(config)
    assert annotator.labels_for(photos[0]) == ["dog", "car", "cat"]
    detections = annotator.detect_batch(photos)
    assert all(d.label in ("dog", "car", "cat") and 0.0 <= d.score <= 1.0 for dets in detections for d in dets)
    with BeamPipeline() as p:
        out = p | beam.Create(photos) | grounding_stage(config)
        total = ((out["kept"] | "K" >> beam.Map(lambda s: 1)), (out["rejected"] | "R" >> beam.Map(lambda r: 1))) \
            | beam.Flatten() | beam.CombineGlobally(sum)
        assert_that(total, equal_to([3]), label="every sample accounted for")
