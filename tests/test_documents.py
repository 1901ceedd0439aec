"""Interleaved-document rules: image count, text per image, and images repeated across documents removed."""
import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from vlmloom.curation.documents import DocumentConfig, judge, remove_images
from vlmloom.pipelines.documents import DocumentRules
from vlmloom.schemas.config import ConfigError
from vlmloom.schemas.records import ImageRef, Sample, Segment


def _doc(key, parts, kind="interleaved"):
    """parts: strings are text segments, ("img", sha) tuples are images, in order."""
    images, segments = [], []
    for part in parts:
        if isinstance(part, tuple):
            segments.append(Segment(type="image", image_index=len(images)))
            images.append(ImageRef(sha256=part[1]))
        else:
            segments.append(Segment(type="text", text=part))
    return Sample(key=key, source="web", source_id=key, kind=kind, images=images, segments=segments)


def _layout(sample):
    return [s.text if s.type == "text" else sample.images[s.image_index].sha256 for s in sample.segments]


def test_remove_images_renumbers_segments_and_keeps_text_order():
    doc = _doc("d", ["a", ("img", "logo"), "b", ("img", "photo"), ("img", "ad"), "c"])
    out = remove_images(doc, {0, 2})
    assert _layout(out) == ["a", "b", "photo", "c"]
    assert [s.image_index for s in out.segments if s.type == "image"] == [0]
    assert _layout(doc) == ["a", "logo", "b", "photo", "ad", "c"]  # the input is not modified


@pytest.mark.parametrize("parts,config,reason", [
    ([("img", "x"), "t"], DocumentConfig(min_images=2), "too_few_images"),
    ([("img", "x"), ("img", "y"), ("img", "z"), "t"], DocumentConfig(max_images=2), "too_many_images"),
    ([("img", "x"), ("img", "y"), "ten chars!"], DocumentConfig(min_text_chars_per_image=6), "too_little_text_per_image"),
    ([("img", "x"), ("img", "y"), "twelve chars"], DocumentConfig(min_text_chars_per_image=6), None),
    (["text only"], DocumentConfig(), None),
])
def test_document_rules(parts, config, reason):
    verdict = judge(_doc("d", parts), config)
    assert verdict.reason == reason and verdict.keep == (reason is None)


def test_other_kinds_pass_untouched():
    assert judge(_doc("c", [("img", "x")], kind="caption"), DocumentConfig(min_images=3)).signals == {}


@pytest.mark.parametrize("values", [{"min_images": -1}, {"min_images": 3, "max_images": 2},
                                    {"max_repeated_image_documents": -1}])
def test_config_errors(values):
    with pytest.raises(ConfigError, match="documents"):
        DocumentConfig(**values)


def test_repeated_images_leave_every_document_that_holds_them():
    # "logo" is in 3 documents (> limit 2): removed from all three; "shared" in 2 documents stays.
    docs = [_doc("d1", ["one", ("img", "logo"), ("img", "p1"), "more"]),
            _doc("d2", [("img", "logo"), "two", ("img", "shared")]),
            _doc("d3", ["three", ("img", "logo"), ("img", "logo")]),  # held twice: one document
            _doc("d4", ["four", ("img", "shared")]),
            _doc("c5", [("img", "logo")], kind="caption")]  # not a document: neither counted nor touched
    config = DocumentConfig(max_repeated_image_documents=2, min_images=1)
    with TestPipeline() as p:
        out = p | beam.Create(docs) | DocumentRules(config)
        assert_that(out["kept"] | "K" >> beam.Map(
            lambda s: (s.key, tuple(_layout(s)), s.signals.get("document_images_removed"))),
            equal_to([("d1", ("one", "p1", "more"), 1), ("d2", ("two", "shared"), 1),
                      ("d4", ("four", "shared"), 0), ("c5", ("logo",), None)]), label="kept")
        # d3 held only the logo: with documents.min_images 1 it is rejected, its removal counted in its fields
        assert_that(out["rejected"] | "R" >> beam.Map(lambda r: (r.key, r.stage, r.reason,
                                                                   r.field_values()["document_images_removed"])),
                    equal_to([("d3", "documents", "too_few_images", 2)]), label="rejected")
