"""`urls` (also `laion`): URL lists in the LAION / img2dataset shape (Parquet, CSV, TSV, JSONL): one caption record
per row, its image named by URL only (`ImageRef(uri=URL, bytes=None)`): the download stage fetches it before decode.
Columns: `url` | `URL` | `image_url`, `caption` | `TEXT` | `text`, optional `key` | `id`; every other column
(`WIDTH`, `similarity`, `punsafe`, `hash`, ...) is carried into `meta`. A URL that is not http(s) is refused
(`invalid_url`): a URL list never names local files."""
from __future__ import annotations

from typing import Any

from vlmloom.curation.formats import ReadContext, RowFormat, carry_rest, new_sample, register
from vlmloom.curation.readers import InvalidRecord, row_source_id
from vlmloom.schemas.records import ImageRef, Sample

URL_COLUMNS = ("url", "URL", "image_url")
TEXT_COLUMNS = ("caption", "TEXT", "text")


def _first(row: dict[str, Any], names: tuple[str, ...]) -> str | None:
    return next((name for name in names if name in row), None)


def http_url(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidRecord("missing_url", f"{where}: no image URL")
    url = value.strip()
    if not url.lower().startswith(("http://", "https://")):
        raise InvalidRecord("invalid_url", f"{where}: {url[:200]!r} is not an http(s) URL")
    return url


class UrlList(RowFormat):
    name = "urls"
    uses = ("id", "url", "text")

    def matches(self, row: dict[str, Any]) -> bool:
        return _first(row, URL_COLUMNS) is not None and "image_bytes" not in row and "image_path" not in row

    def source_id(self, row: dict[str, Any], where: str) -> str:
        return row_source_id({k: row.get(k) for k in ("id", "key")}, where)

    def row_to_sample(self, row: dict[str, Any], where: str, path: str, ctx: ReadContext,
                      image_columns: frozenset = frozenset()) -> Sample:
        url_column, text_column = _first(row, URL_COLUMNS), _first(row, TEXT_COLUMNS)
        url = http_url(row.get(url_column) if url_column else None, where)
        text = row.get(text_column) if text_column else None
        if text is not None and not isinstance(text, str):
            raise InvalidRecord("caption_not_text", f"{where}: field {text_column!r} is {type(text).__name__}")
        meta = carry_rest(row, {url_column, text_column, "id", "key"}, ctx)
        return new_sample(ctx, self.source_id(row, where), kind=ctx.kind, text=text or None,
                          images=[ImageRef(uri=url)], meta=meta)


register(UrlList())
