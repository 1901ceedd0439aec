"""`obelics`: OBELICS documents (aligned `texts` / `images` lists, one of the two set at each position, the other
None) → kind `interleaved` with segments in that order. Images are URLs (for the download stage), local paths
(under `inputs[].image_root`) or HF image structs; `metadata` / `general_metadata` are carried into `meta` (parsed
when they hold JSON text, as the published dataset does). Positions where both are None are counted
`empty_position`."""
from __future__ import annotations

from typing import Any

from vlmloom.curation.formats import ReadContext, RowFormat, carry_rest, new_sample, register
from vlmloom.curation.formats.documents import document_image
from vlmloom.curation.readers import InvalidRecord, parse_json
from vlmloom.schemas.records import Sample, Segment


class Obelics(RowFormat):
    name = "obelics"
    uses = ("id", "texts", "images")

    def matches(self, row: dict[str, Any]) -> bool:
        return isinstance(row.get("texts"), list) and isinstance(row.get("images"), list)

    def row_to_sample(self, row: dict[str, Any], where: str, path: str, ctx: ReadContext,
                      image_columns: frozenset = frozenset()) -> Sample:
        texts, images_in = row.get("texts"), row.get("images")
        if not isinstance(texts, list) or not isinstance(images_in, list) or len(texts) != len(images_in):
            raise InvalidRecord("invalid_field", f"{where}: 'texts' and 'images' must be lists of one length")
        images, segments = [], []
        for n, (text, image) in enumerate(zip(texts, images_in)):
            if text is not None and image is not None:
                raise InvalidRecord("invalid_field", f"{where}: position {n} holds both a text and an image")
            if text is not None:
                if not isinstance(text, str):
                    raise InvalidRecord("invalid_field", f"{where}: texts[{n}] is {type(text).__name__}")
                segments.append(Segment("text", text=text))
            elif image is not None:
                segments.append(Segment("image", image_index=len(images)))
                images.append(document_image(image, path, ctx, f"{where} images[{n}]"))
            else:
                ctx.count("empty_position")
        meta = carry_rest(row, {"id", "texts", "images"}, ctx)
        for name in ("metadata", "general_metadata"):
            if isinstance(meta.get(name), str):
                try:
                    meta[name] = parse_json(meta[name], f"{where} {name}")
                except InvalidRecord:
                    pass  # not JSON text (or too deep): carried as the text it is
        return new_sample(ctx, self.source_id(row, where), kind="interleaved", images=images, segments=segments,
                          meta=meta)


register(Obelics())
