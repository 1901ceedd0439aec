"""`mmc4`: Multimodal C4 documents (`text_list`, `image_info[]` with `image_name`, `raw_url`, `matched_text_index`,
`matched_sim`) → kind `interleaved`, segments in document order: each image just before the sentence it was
matched to (as OpenFlamingo reads MMC4), images in `image_info` order among themselves.

An image is the local file `inputs[].image_root/image_name` when `image_root` is set and the file exists, else
its `raw_url` for the download stage (a missing local file is counted `image_url_fallback`). Per-image fields
other than those three (`matched_sim`, `face_detections`) go to `meta.image_info`; document fields (`url`,
`similarity_matrix`, ...) to `meta`."""
from __future__ import annotations

from typing import Any

from vlmloom.curation.formats import ReadContext, RowFormat, carry_rest, carried, new_sample, read_image, register
from vlmloom.curation.formats.urls import http_url
from vlmloom.curation.readers import InvalidRecord
from vlmloom.schemas.records import ImageRef, Sample, Segment

IMAGE_FIELDS = ("image_name", "raw_url", "matched_text_index")


class Mmc4(RowFormat):
    name = "mmc4"
    uses = ("id", "text_list", "image_info")

    def matches(self, row: dict[str, Any]) -> bool:
        return isinstance(row.get("text_list"), list) and "image_info" in row

    def row_to_sample(self, row: dict[str, Any], where: str, path: str, ctx: ReadContext,
                      image_columns: frozenset = frozenset()) -> Sample:
        texts = row.get("text_list")
        infos = row.get("image_info") or []
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise InvalidRecord("invalid_field", f"{where}: 'text_list' must be a list of strings")
        if not isinstance(infos, list) or not all(isinstance(i, dict) for i in infos):
            raise InvalidRecord("invalid_field", f"{where}: 'image_info' must be a list of objects")
        before: dict[int, list[int]] = {}
        images: list[ImageRef] = []
        image_meta = []
        for n, info in enumerate(infos):
            index = info.get("matched_text_index")
            if type(index) is not int or not 0 <= index < len(texts):
                raise InvalidRecord("invalid_field", f"{where}: image_info[{n}].matched_text_index {index!r} is "
                                                     f"not an index into text_list ({len(texts)} sentences)")
            before.setdefault(index, []).append(len(images))
            images.append(self._image(info, path, ctx, f"{where} image_info[{n}]"))
            image_meta.append({k: carried(v)[1] for k, v in info.items() if k not in IMAGE_FIELDS})
        segments = []
        for index, text in enumerate(texts):
            segments += [Segment("image", image_index=i) for i in before.get(index, [])]
            segments.append(Segment("text", text=text))
        meta = carry_rest(row, {"id", "text_list", "image_info"}, ctx)
        if any(image_meta):
            meta["image_info"] = image_meta
        return new_sample(ctx, self.source_id(row, where), kind="interleaved", images=images, segments=segments,
                          meta=meta)

    @staticmethod
    def _image(info: dict, path: str, ctx: ReadContext, where: str) -> ImageRef:
        name = info.get("image_name")
        if ctx.image_root and isinstance(name, str) and name:
            try:
                return read_image(name, ctx.image_root.rstrip("/"), ctx, where)
            except InvalidRecord as exc:
                if exc.reason != "missing_image_file" or not info.get("raw_url"):
                    raise
                ctx.count("image_url_fallback")
        return ImageRef(uri=http_url(info.get("raw_url"), where))


register(Mmc4())
