"""`pdf`: PDF files, each page an `ocr` record (its render and its text layer; curation/pdf.py), also read from
image folders (a `.pdf` beside the images is its own unit). A page's source id is `FILE.pdf#page=N`, relative to
the input folder; its raw digest is the file's sha256 and the page number."""
from __future__ import annotations

import posixpath
from typing import Any, Iterator

from vlmloom.curation import readers
from vlmloom.curation.formats import Format, ReadContext, bytes_digest, finish, register, rejection
from vlmloom.curation.pdf import PdfConfig, pdf_records
from vlmloom.curation.readers import InvalidRecord
from vlmloom.schemas.records import Rejection, Sample

PDF_EXTENSION = "pdf"


def pdf_unit(path: str, root: str) -> tuple[str, str, str]:
    """(source id, path, root): the file's path relative to the input folder names its pages."""
    return posixpath.relpath(path.replace("\\", "/"), root.replace("\\", "/")) if root else path, path, root


class Pdf(Format):
    name = "pdf"
    uses = ("pdf",)

    def read(self, unit: Any, ctx: ReadContext) -> Iterator[Sample | Rejection]:
        source_id, path, _ = unit if isinstance(unit, tuple) else pdf_unit(unit, posixpath.dirname(unit))
        try:
            with ctx.open(path) as fh:
                data = readers.read_bytes(fh)
        except OSError as exc:
            yield rejection(ctx.source, source_id, "read_error", f"{path}: {type(exc).__name__}: {exc}")
            return
        digest = bytes_digest(data)
        for item in pdf_records(data, ctx.source, source_id, path, PdfConfig()):
            if isinstance(item, Rejection):
                yield item
                continue
            try:
                yield finish(item, f"{path}#page={item.meta.get('page', 0)}",
                             bytes_digest(f"{digest}#{item.source_id}".encode()))
            except InvalidRecord as exc:
                yield rejection(ctx.source, item.source_id, exc.reason, exc.detail)


register(Pdf())
