"""`coco`: COCO captions / instances JSON (`images`, `annotations`, `categories`) + an image folder → one record
per image with all its captions (the first by annotation id is `text`, all of them `meta.captions`) and its
instance boxes as grounding annotations (category names as phrases, boxes in 0–1000 integer coordinates). An
image with captions is a `caption` record, one with boxes only a `grounding` record.

All annotation files of the input are read together (captions_*.json and instances_*.json of one split join on
the image id). Images are `file_name` under `inputs[].image_root` (else the JSON's folder), by the manifest
path rules. Fields nobody reads (`info`, `licenses`, `segmentation`, `area`, ...) are counted
`ignored_field:<name>`; annotations of unknown images `orphan_annotation`."""
from __future__ import annotations

import posixpath
from typing import Any, Iterator

from vlmloom.curation import readers
from vlmloom.curation.formats import (Format, ReadContext, carried, extension, finish, new_sample, raw_digest,
                                      read_image, register, rejection)
from vlmloom.curation.readers import InvalidRecord
from vlmloom.schemas.records import Annotations, Grounding, Rejection, Sample

IMAGE_FIELDS = ("id", "file_name", "width", "height")
CAPTION_FIELDS = ("image_id", "caption")
BOX_FIELDS = ("image_id", "bbox", "category_id")


def box_0_1000(bbox: Any, width: int, height: int, where: str) -> list[int]:
    """COCO [x, y, w, h] in pixels → [x1, y1, x2, y2] integers in 0..1000 (GLM's grounding coordinates)."""
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
        raise InvalidRecord("invalid_field", f"{where}: bbox {bbox!r:.80} is not [x, y, w, h]")
    x, y, w, h = bbox
    scale = [(x, width), (y, height), (x + w, width), (y + h, height)]
    return [min(1000, max(0, round(v / side * 1000))) for v, side in scale]


def _by_id(entry: dict) -> tuple:
    """COCO ids are ints; order by number, and any other id after them by its text."""
    value = entry.get("id")
    return (0, value, "") if isinstance(value, int) and not isinstance(value, bool) else (1, 0, str(value))


class Coco(Format):
    name = "coco"
    uses = ("images", "annotations", "categories")

    def read(self, unit: list[str], ctx: ReadContext) -> Iterator[Sample | Rejection]:
        images: dict[Any, dict] = {}
        where_image: dict[Any, str] = {}
        captions: dict[Any, list[dict]] = {}
        boxes: dict[Any, list[dict]] = {}
        categories: dict[Any, str] = {}
        for path in unit:
            name = posixpath.basename(path)
            try:
                with ctx.open(path) as fh:
                    data = readers.parse_json(readers.read_bytes(fh), name)
                if not isinstance(data, dict) or not isinstance(data.get("images"), list):
                    raise InvalidRecord("not_coco", f"{name}: not a COCO annotation file (no 'images' list)")
            except (InvalidRecord, OSError) as exc:
                ctx.count(f"unreadable_file:{extension(path)}")
                reason, detail = (exc.reason, exc.detail) if isinstance(exc, InvalidRecord) else (
                    "read_error", f"{type(exc).__name__}: {exc}")
                yield rejection(ctx.source, f"{name}:<json>", reason, f"{path}: {detail}")
                continue
            for key in data:
                if key not in self.uses:
                    ctx.count(f"ignored_field:{key}")
            for image in data["images"]:
                if isinstance(image, dict) and "id" in image:
                    images.setdefault(image["id"], image)
                    where_image.setdefault(image["id"], path)
            for category in data.get("categories") or []:
                if isinstance(category, dict):
                    categories[category.get("id")] = str(category.get("name"))
            for ann in data.get("annotations") or []:
                if not isinstance(ann, dict):
                    continue
                if "caption" in ann:
                    captions.setdefault(ann.get("image_id"), []).append(ann)
                    used = CAPTION_FIELDS + ("id",)
                elif "bbox" in ann:
                    boxes.setdefault(ann.get("image_id"), []).append(ann)
                    used = BOX_FIELDS + ("id",)
                else:
                    used = ()
                for field_name in ann:
                    if field_name not in used:
                        ctx.count(f"ignored_field:{field_name}")
        for image_id in set(captions) | set(boxes):
            if image_id not in images:
                ctx.count("orphan_annotation")
        for image_id in sorted(images, key=lambda i: _by_id({"id": i})):
            source_id = readers.printable(str(image_id))
            try:
                yield self._record(image_id, images[image_id], captions.get(image_id, []),
                                   boxes.get(image_id, []), categories, where_image[image_id], ctx)
            except InvalidRecord as exc:
                yield rejection(ctx.source, source_id, exc.reason, exc.detail)

    def _record(self, image_id: Any, image: dict, caption_anns: list[dict], box_anns: list[dict],
                categories: dict, path: str, ctx: ReadContext) -> Sample:
        where = f"{posixpath.basename(path)}:image{image_id}"
        caption_anns = sorted(caption_anns, key=_by_id)
        box_anns = sorted(box_anns, key=_by_id)
        texts = [a["caption"] for a in caption_anns]
        if not all(isinstance(t, str) for t in texts):
            raise InvalidRecord("caption_not_text", f"{where}: a caption is not text")
        width, height = image.get("width"), image.get("height")
        if box_anns and not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
            raise InvalidRecord("invalid_field", f"{where}: boxes need the image's width and height")
        grounding = [Grounding(categories.get(a.get("category_id"), str(a.get("category_id"))),
                               box_0_1000(a.get("bbox"), width, height, where), "input") for a in box_anns]
        file_name = image.get("file_name")
        base = ctx.image_root.rstrip("/") if ctx.image_root else posixpath.dirname(path)
        images = [read_image(file_name, base, ctx, where)] if file_name else []
        meta = {k: carried(v)[1] for k, v in image.items() if k not in IMAGE_FIELDS}
        if texts:
            meta["captions"] = texts
        sample = new_sample(ctx, readers.printable(str(image_id)), kind="caption" if texts else "grounding",
                            text=texts[0] if texts else None, images=images,
                            annotations=Annotations(grounding=grounding), meta=meta)
        return finish(sample, where, raw_digest([image, caption_anns, box_anns]))


register(Coco())
