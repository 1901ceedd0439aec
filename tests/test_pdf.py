"""PDF pages as OCR records: text layer as transcript, page lineage, every page accounted for, bad PDFs rejected."""
import io

import pytest
from PIL import Image

from vlmloom.curation.pdf import PdfConfig, pdf_records
from vlmloom.demo.pdfs import broken_pdf_bytes, pdf_bytes
from vlmloom.schemas.config import ConfigError
from vlmloom.schemas.records import Rejection, Sample, make_key

PAGES = [["Chapter 1", "Light travels (in) straight lines."], ["Page two", "Refraction bends it."], ["End"]]


def _records(data, **config):
    return list(pdf_records(data, "books", "optics.pdf", "/data/optics.pdf", PdfConfig(**config)))


def test_each_page_is_an_ocr_record_with_its_text_layer_and_lineage():
    records = _records(pdf_bytes(PAGES, width=420, height=300), dpi=72)
    assert [type(r) for r in records] == [Sample, Sample, Sample]
    assert [r.text for r in records] == ["Chapter 1\nLight travels (in) straight lines.",
                                         "Page two\nRefraction bends it.", "End"]
    assert [r.source_id for r in records] == ["optics.pdf#page=1", "optics.pdf#page=2", "optics.pdf#page=3"]
    assert records[1].key == make_key("books", "optics.pdf#page=2")
    assert records[2].meta == {"pdf": "/data/optics.pdf", "pages": 3, "page": 3}
    for record in records:
        assert record.kind == "ocr" and len(record.images) == 1
        image = Image.open(io.BytesIO(record.images[0].bytes))
        # 420×300 pt at 72 dpi is 420×300 px; the page's blue band is drawn, so the render is not blank
        assert image.size == (420, 300) == (record.images[0].width, record.images[0].height)
        assert image.format == "PNG" and image.convert("L").getextrema()[0] < 128


def test_dpi_scales_the_render():
    (record,) = _records(pdf_bytes([["x"]], width=144, height=72), dpi=200)
    assert (record.images[0].width, record.images[0].height) == (400, 200)


def test_interleaved_mode_keeps_pages_in_order():
    (doc,) = _records(pdf_bytes(PAGES), mode="interleaved", dpi=36)
    assert doc.kind == "interleaved" and doc.source_id == "optics.pdf" and len(doc.images) == 3
    assert [(s.type, s.image_index if s.type == "image" else s.text) for s in doc.segments] == [
        ("image", 0), ("text", "Chapter 1\nLight travels (in) straight lines."),
        ("image", 1), ("text", "Page two\nRefraction bends it."), ("image", 2), ("text", "End")]
    assert [i.uri for i in doc.images] == [f"/data/optics.pdf#page={n}" for n in (1, 2, 3)]


@pytest.mark.parametrize("data,reason", [
    (pdf_bytes([["secret"]], encrypted=True), "encrypted_pdf"),
    (broken_pdf_bytes(), "corrupt_pdf"),
    (b"", "corrupt_pdf"),
    (pdf_bytes([["cut"]])[:200], "corrupt_pdf"),
])
def test_unreadable_pdfs_are_one_rejection_with_a_reason(data, reason):
    (rejection,) = _records(data)
    assert isinstance(rejection, Rejection)
    assert (rejection.reason, rejection.source_id, rejection.stage) == (reason, "optics.pdf", "read")


def test_pages_past_the_cap_are_each_accounted_for():
    records = _records(pdf_bytes([[f"page {n}"] for n in range(1, 6)]), max_pages=2, dpi=36)
    assert [r.text for r in records if isinstance(r, Sample)] == ["page 1", "page 2"]
    assert [(r.source_id, r.reason) for r in records if isinstance(r, Rejection)] == [
        (f"optics.pdf#page={n}", "too_many_pages") for n in (3, 4, 5)]


def test_a_page_too_large_to_render_is_rejected_before_rendering():
    records = _records(pdf_bytes([["big"]], width=420, height=300), dpi=600, max_page_pixels=1_000_000)
    assert [(r.reason, r.source_id) for r in records] == [("page_too_large", "optics.pdf#page=1")]


@pytest.mark.parametrize("field,value", [("mode", "pages"), ("dpi", 5), ("max_pages", 0), ("image_format", "gif")])
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ConfigError, match=f"pdf.{field}"):
        PdfConfig(**{field: value})


def test_pdfs_in_a_folder_and_as_their_own_format_curate_to_page_records(tmp_path):
    import pyarrow.parquet as pq

    from vlmloom.pipelines.curate import curate, load_config

    (tmp_path / "scans").mkdir()
    (tmp_path / "scans" / "optics.pdf").write_bytes(pdf_bytes(PAGES))
    (tmp_path / "scans" / "locked.pdf").write_bytes(pdf_bytes([["secret"]], encrypted=True))
    (tmp_path / "scans" / "notes.md").write_text("not a record")
    (tmp_path / "books").mkdir()
    (tmp_path / "books" / "atlas.pdf").write_bytes(pdf_bytes([["Maps of the world", "and their makers"]]))
    out = tmp_path / "out"
    report = curate(load_config({"inputs": [{"path": str(tmp_path / "scans"), "name": "scans"},
                                            {"path": str(tmp_path / "books" / "*.pdf"), "format": "pdf"}],
                                 "output": str(out), "disable": ["language", "heuristics"]}))
    kept = sorted((r["source"], r["source_id"], r["kind"]) for r in pq.read_table(out / "manifest").to_pylist())
    assert kept == [("books", "atlas.pdf#page=1", "ocr")] + [
        ("scans", f"optics.pdf#page={n}", "ocr") for n in (1, 2, 3)]  # pages of one book are not near duplicates
    rejected = [(r["source_id"], r["reason"]) for r in pq.read_table(out / "rejected").to_pylist()]
    assert rejected == [("locked.pdf", "encrypted_pdf")]
    assert report["by_source"]["scans"]["read"]["ignored_file:md"] == 1
