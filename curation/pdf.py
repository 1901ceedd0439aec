"""PDF pages as OCR data (the paper's digitised academic books): one PDF → one `ocr` Sample per page (the page
rendered at `pdf.dpi`, its text layer as the transcript), or one `interleaved` document per PDF.

    pdf_records(data, source, source_id, uri, PdfConfig()) → Iterator[Sample | Rejection]

Rendering and text extraction use pdfium (`pypdfium2`, whose wheel ships it; permissive licence). Nothing here
raises on input bytes: an encrypted PDF is `encrypted_pdf`, one pdfium cannot open is `corrupt_pdf`, a page that
fails to render is that page's `corrupt_pdf_page`, pages past `pdf.max_pages` are `too_many_pages` (one
rejection each, so every page is accounted for), a page whose render would exceed `pdf.max_page_pixels` is
`page_too_large`. A page's source id is `SOURCE_ID#page=N` (1-based), and its meta names the PDF and the page.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Iterator

from vlmloom.schemas.config import ConfigError
from vlmloom.schemas.records import ImageRef, Rejection, Sample, Segment, make_key

READ_STAGE = "read"
PDF_MODES = ("ocr", "interleaved")


@dataclass(frozen=True, kw_only=True)
class PdfConfig:
    mode: str = "ocr"  # "ocr": one ocr record per page; "interleaved": one document per PDF (page image, page text, ...)
    dpi: int = 100  # render resolution; 100 dpi puts a Letter page at 850×1100
    max_pages: int = 500  # pages past this are rejected too_many_pages (one rejection per page)
    max_page_pixels: int = 40_000_000  # a page whose render would exceed this is rejected page_too_large
    image_format: str = "png"  # "png" (lossless text edges) or "jpeg"

    def __post_init__(self):
        if self.mode not in PDF_MODES:
            raise ConfigError(f"pdf.mode: {self.mode!r} is not one of {', '.join(PDF_MODES)}")
        if not 18 <= self.dpi <= 600:
            raise ConfigError(f"pdf.dpi ({self.dpi}) must lie in 18..600")
        if self.max_pages < 1:
            raise ConfigError(f"pdf.max_pages ({self.max_pages}) must be ≥ 1")
        if self.image_format not in ("png", "jpeg"):
            raise ConfigError(f"pdf.image_format: {self.image_format!r} is not png or jpeg")


def _rejection(source: str, source_id: str, reason: str, detail: str) -> Rejection:
    return Rejection(make_key(source, source_id), source, source_id, READ_STAGE, reason, detail)


def _open(data: bytes):
    """(document, None) or (None, (reason, detail)) — pdfium's error text tells a password from bad bytes."""
    import pypdfium2 as pdfium

    try:
        return pdfium.PdfDocument(data), None
    except pdfium.PdfiumError as exc:
        reason = "encrypted_pdf" if "password" in str(exc).lower() else "corrupt_pdf"
        return None, (reason, str(exc))


def _page_text(page) -> str:
    text = page.get_textpage().get_text_range()
    # pdfium separates lines with CRLF and may leave NULs from broken fonts
    return "\n".join(line.rstrip() for line in text.replace("\x00", "").replace("\r\n", "\n").split("\n")).strip()


def _render(page, config: PdfConfig) -> tuple[bytes, int, int] | tuple[None, str, str]:
    width_pt, height_pt = page.get_size()
    scale = config.dpi / 72.0
    pixels = width_pt * scale * height_pt * scale
    if pixels > config.max_page_pixels:
        return None, "page_too_large", (f"{width_pt:.0f}×{height_pt:.0f} pt at {config.dpi} dpi is {pixels:.0f} "
                                        f"pixels > pdf.max_page_pixels {config.max_page_pixels}")
    image = page.render(scale=scale).to_pil().convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=config.image_format.upper())
    return buffer.getvalue(), image.width, image.height


def pdf_records(data: bytes, source: str, source_id: str, uri: str,
                config: PdfConfig = PdfConfig()) -> Iterator[Sample | Rejection]:
    """The records of one PDF file (see the module docstring)."""
    document, error = _open(data)
    if document is None:
        yield _rejection(source, source_id, *error)
        return
    try:
        total = len(document)
        if total == 0:
            yield _rejection(source, source_id, "empty_pdf", f"{uri}: the PDF has no pages")
            return
        pages = []  # (page number, image bytes, width, height, text)
        for number in range(1, total + 1):
            page_id = f"{source_id}#page={number}"
            if number > config.max_pages:
                if config.mode == "ocr":
                    yield _rejection(source, page_id, "too_many_pages",
                                     f"{uri}: page {number} of {total} > pdf.max_pages {config.max_pages}")
                continue
            try:
                page = document[number - 1]
                rendered = _render(page, config)
                text = _page_text(page)
            except Exception as exc:  # pdfium raises its own and ctypes errors on damaged page trees
                yield _rejection(source, page_id, "corrupt_pdf_page", f"{uri}: page {number}: {exc}")
                continue
            if rendered[0] is None:
                yield _rejection(source, page_id, rendered[1], f"{uri}: page {number}: {rendered[2]}")
                continue
            pages.append((number, *rendered, text))
    finally:
        document.close()

    meta_base = {"pdf": uri, "pages": total}
    if config.mode == "ocr":
        for number, image_bytes, width, height, text in pages:
            page_id = f"{source_id}#page={number}"
            image = ImageRef(bytes=image_bytes, width=width, height=height, format=config.image_format,
                             uri=f"{uri}#page={number}")
            yield Sample(key=make_key(source, page_id), source=source, source_id=page_id, kind="ocr",
                         images=[image], text=text or None, meta={**meta_base, "page": number})
        return
    if not pages:
        yield _rejection(source, source_id, "empty_pdf", f"{uri}: no page of {total} could be read")
        return
    images, segments = [], []
    for number, image_bytes, width, height, text in pages:
        segments.append(Segment(type="image", image_index=len(images)))
        images.append(ImageRef(bytes=image_bytes, width=width, height=height, format=config.image_format,
                               uri=f"{uri}#page={number}"))
        if text:
            segments.append(Segment(type="text", text=text))
    yield Sample(key=make_key(source, source_id), source=source, source_id=source_id, kind="interleaved",
                 images=images, segments=segments, meta={**meta_base, "page_numbers": [p[0] for p in pages]})
