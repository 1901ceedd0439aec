"""`manifest`: vlmloom's own Parquet/JSONL rows (`id`, `image_bytes` or `image_path`, `caption|text`, `kind`,
`meta`, ...); other columns are carried into `meta`. `parquet` and `jsonl` name it too (older configs)."""
from __future__ import annotations

import posixpath
from typing import Any

from vlmloom.curation import readers
from vlmloom.curation.formats import ReadContext, RowFormat, read_image, register
from vlmloom.schemas.records import Sample


class Manifest(RowFormat):
    name = "manifest"
    uses = readers.MANIFEST_COLUMNS

    def matches(self, row: dict[str, Any]) -> bool:
        return True  # the fallback of `auto`

    def row_to_sample(self, row: dict[str, Any], where: str, path: str, ctx: ReadContext,
                      image_columns: frozenset = frozenset()) -> Sample:
        base = posixpath.dirname(path)  # a manifest's relative paths stay inside its own folder
        refs = {}

        def open_relative(rel: str) -> bytes:
            refs[rel] = read_image(rel, base, ctx, where)
            return refs[rel].bytes

        source_id = self.source_id(row, where)
        sample = readers._row_to_sample(row, ctx.source, source_id, where, open_relative, ctx.kind,
                                        ctx.image_root, ctx.count, ctx.answer_lists)
        for image in sample.images:
            if image.uri in refs:
                image.span = refs[image.uri].span
        return sample


register(Manifest())
