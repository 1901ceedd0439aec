"""`hf` (also `datasets`): Hugging Face `datasets` data as published: hub Parquet shards and `save_to_disk`
folders (Arrow IPC streams + `dataset_info.json` / `state.json`). An `Image()` column is a struct
{bytes, path} and `Sequence(Image())` a list of them: each becomes an ImageRef (its bytes, or its `path` read
under the manifest path rules when the bytes were not embedded). Columns `image` / `images` are the record's
images when present (other image columns are counted `ignored_field:<name>`), else every image column is.
Rows with `conversations` / `messages` / `instruction` read as `qa` (formats/conversations.py), others as
`inputs[].kind` with `text` | `caption` as text; every other column is carried into `meta`."""
from __future__ import annotations

from typing import Any

from vlmloom.curation.formats import (ReadContext, RowFormat, carry_rest, image_base, new_sample, read_image,
                                      register)
from vlmloom.curation.formats.conversations import Conversations
from vlmloom.curation.readers import InvalidRecord
from vlmloom.schemas.records import ImageRef, Sample

TEXT_COLUMNS = ("text", "caption")


def is_image_struct(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"bytes", "path"}


def _image_column(value: Any) -> bool:
    if is_image_struct(value):
        return True
    return isinstance(value, list) and bool(value) and all(is_image_struct(v) or v is None for v in value) and \
        any(v is not None for v in value)


class HuggingFace(RowFormat):
    name = "hf"
    uses = ("id", "image", "images", "text", "caption")

    def matches(self, row: dict[str, Any]) -> bool:
        return any(_image_column(v) for v in row.values())

    def row_to_sample(self, row: dict[str, Any], where: str, path: str, ctx: ReadContext,
                      image_columns: frozenset = frozenset()) -> Sample:
        # The Arrow schema says which columns are images; rows without one (JSON) by their values.
        columns = [name for name, value in row.items() if name in image_columns or _image_column(value)]
        chosen = [name for name in columns if name in ("image", "images")] or columns
        for name in columns:
            if name not in chosen:
                ctx.count(f"ignored_field:{name}")
        images = []
        for name in chosen:
            value = row[name]
            for item in value if isinstance(value, list) else [value]:
                if item is not None:
                    images.append(self._image(item, name, path, ctx, where))
        rest = {name: value for name, value in row.items() if name not in columns}
        conversations = Conversations()
        if conversations.matches(rest):
            return conversations.row_to_sample({**rest, "images": images}, where, path, ctx)
        text_column = next((name for name in TEXT_COLUMNS if name in rest), None)
        text = rest.get(text_column) if text_column else None
        if text is not None and not isinstance(text, str):
            raise InvalidRecord("caption_not_text", f"{where}: field {text_column!r} is {type(text).__name__}")
        meta = carry_rest(rest, {text_column, "id"}, ctx)
        return new_sample(ctx, self.source_id(row, where), kind=ctx.kind, text=text or None, images=images,
                          meta=meta)

    @staticmethod
    def _image(item: dict, column: str, path: str, ctx: ReadContext, where: str) -> ImageRef:
        data, name = item.get("bytes"), item.get("path")
        if data is not None:
            return ImageRef(bytes=bytes(data), uri=f"{where}:{column}" + (f":{name}" if name else ""))
        if name:
            return read_image(name, image_base(path, ctx), ctx, where)
        raise InvalidRecord("invalid_field", f"{where}: image in {column!r} has neither bytes nor a path")


register(HuggingFace())
