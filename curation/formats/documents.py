"""What the readers of rows that name images (formats/obelics.py, formats/conversations.py) share: an image named
by a local file, a URL for the download stage, or an HF image struct."""
from __future__ import annotations

from typing import Any

from vlmloom.curation.formats import ReadContext, image_base, read_image
from vlmloom.curation.formats.urls import http_url
from vlmloom.curation.readers import InvalidRecord
from vlmloom.schemas.records import ImageRef


def document_image(value: Any, path: str, ctx: ReadContext, where: str) -> ImageRef:
    """An http(s) URL → ImageRef(uri=URL) for the download stage; an HF image struct → its bytes; another string
    → a local file under `inputs[].image_root` (else the file's folder)."""
    if isinstance(value, dict) and value.get("bytes") is not None:
        return ImageRef(bytes=bytes(value["bytes"]), uri=value.get("path") or where)
    if isinstance(value, dict) and value.get("path"):
        value = value["path"]
    if isinstance(value, str) and value.lower().startswith(("http://", "https://")):
        return ImageRef(uri=http_url(value, where))
    if isinstance(value, str) and value:
        return read_image(value, image_base(path, ctx), ctx, where)
    raise InvalidRecord("invalid_field", f"{where}: image {value!r:.80} is not a URL, a path or image bytes")
