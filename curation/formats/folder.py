"""`folder`: an image folder, one record per image with its sidecars (`a.jpg` + `a.txt` / `a.json` / `a.cls`),
grouped by the full file stem (`holiday.2020.01.jpg` + `holiday.2020.01.txt`). Sidecars are read as the
webdataset reader reads members; files that belong to no image are counted `ignored_file:<ext>` (a `.mov`, a
`README.md`), never read silently past. A `.pdf` file is its own unit: its pages are `ocr` records
(curation/formats/pdf.py)."""
from __future__ import annotations

import os
from typing import Any, Iterator

from vlmloom.curation import readers
from vlmloom.curation.formats import Format, ReadContext, extension, inside, register, rejection
from vlmloom.curation.formats.pdf import PDF_EXTENSION, Pdf, pdf_unit
from vlmloom.curation.formats.webdataset import record
from vlmloom.schemas.records import Rejection, Sample

IGNORED = "\0ignored"  # a unit that only says: this file is here, and no record uses it
PDF = "\0pdf"  # a unit that is one PDF file: (PDF, (source id, path, root), root)


class Folder(Format):
    name = "folder"
    uses = ("image", "text", "json")

    def read(self, unit: Any, ctx: ReadContext) -> Iterator[Sample | Rejection]:
        source_id, files, root = unit
        if source_id == IGNORED:
            for path in files:
                ctx.count(f"ignored_file:{extension(path) or 'none'}")
            return
        if source_id == PDF:
            yield from Pdf().read(files, ctx)
            return
        data = {}
        for ext, path in files.items():
            if "://" not in path and not inside(path, root):
                yield rejection(ctx.source, source_id, "unsafe_member_path",
                                f"{path}: a symlink that leaves the input folder {root}")
                return
            try:
                with ctx.open(path) as fh:
                    data[ext] = readers.read_bytes(fh)
            except OSError as exc:
                yield rejection(ctx.source, source_id, "read_error", f"{path}: {type(exc).__name__}: {exc}")
                return
        first = sorted(files)[0]
        spans = {}
        for ext, path in files.items():
            local = ctx.local_file(path)
            if local:  # the whole file, re-read where the symlink check resolved it
                spans[ext] = (os.path.realpath(local), 0, len(data[ext]))
        yield record(readers.RawRecord(source_id, data, files[first][:-len(first) - 1], member_uris=dict(files),
                                       spans=spans), ctx)


def folder_units(files: list[str], root: str) -> list[Any]:
    """(source id, {ext: path}, root) per image record, plus one (IGNORED, [paths], root) for the rest."""
    groups = readers.group_folder_files(files, root)
    used = {path for group in groups.values() for path in group.values()}
    units: list[Any] = [(source_id, group, root) for source_id, group in sorted(groups.items())]
    pdfs = sorted(f for f in set(files) - used if extension(f) == PDF_EXTENSION)
    units += [(PDF, pdf_unit(path, root), root) for path in pdfs]
    rest = sorted(set(files) - used - set(pdfs))
    if rest:
        units.append((IGNORED, rest, root))
    return units


register(Folder())
