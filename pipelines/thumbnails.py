"""Thumbnails for the HTML report, read back from what the job wrote and from its inputs.

    kept_thumbnails(out_dir)                     → [(key, data URL)] of image 0 of the first kept samples
    rejected_thumbnails(input_paths, wanted)     → {(source, source_id): data URL} for a few rejected records,
                                                   re-read from the webdataset tar inputs
"""
from __future__ import annotations

import base64
import io

from apache_beam.io.filesystems import FileSystems

from vlmloom.schemas import formats
from vlmloom.schemas.tars import iter_tar_groups


def kept_thumbnails(out_dir: str, limit: int = 12) -> list[tuple[str, str]]:
    """(key, data URL) of the first images in the first shard."""
    from PIL import Image

    match = FileSystems.match([FileSystems.join(out_dir, formats.SHARDS_DIR, "*.tar")])[0].metadata_list
    if not match:
        return []
    out = []
    with FileSystems.open(sorted(m.path for m in match)[0]) as fh:
        for key, members in iter_tar_groups(io.BytesIO(fh.read())):
            for ext in (e for e in members if e in ("jpg", "png", "webp")):  # image 0 of each sample
                img = Image.open(io.BytesIO(members[ext])).convert("RGB")
                img.thumbnail((128, 128))
                buf = io.BytesIO()
                img.save(buf, "JPEG", quality=80)
                out.append((key, "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()))
                if len(out) >= limit:
                    return out
    return out


def _thumbnail_url(data: bytes) -> str | None:
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data))
        if img.size[0] * img.size[1] > 50_000_000:
            return None
        img = img.convert("RGB")
        img.thumbnail((96, 96))
    except Exception:  # noqa: BLE001 - a rejected image is often undecodable: it just gets no thumbnail
        return None
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=75)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def rejected_thumbnails(input_paths: dict[str, list[str]], wanted: dict[tuple[str, str], str],
                        max_bytes_scanned: int = 512 * 2**20) -> dict[tuple[str, str], str]:
    """Thumbnails for a few rejected (source, source_id) pairs, read back from webdataset tar inputs.
    Stops when all are found or after `max_bytes_scanned`; records from other input formats get none."""
    from vlmloom.curation import readers

    found: dict[tuple[str, str], str] = {}
    scanned = 0
    for source, paths in sorted(input_paths.items()):
        ids = {sid for (src, sid) in wanted if src == source}
        for path in paths:
            if not ids or scanned > max_bytes_scanned:
                break
            with FileSystems.open(path) as fh:
                for item in readers.iter_tar_records(fh, path):
                    if isinstance(item, tuple) or item.source_id not in ids:
                        continue
                    ids.discard(item.source_id)
                    scanned += sum(len(v) for v in item.files.values())
                    images = [v for k, v in sorted(item.files.items()) if k.split(".")[-1] in readers.IMAGE_EXTENSIONS]
                    url = _thumbnail_url(images[0]) if images else None
                    if url:
                        found[(source, item.source_id)] = url
                    if not ids:
                        break
    return found
