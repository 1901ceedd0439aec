"""Thumbnails (and texts) for the HTML report, read back from what the job wrote and from its inputs.

    kept_thumbnails(out_dir)                       → [(key, data URL)] of image 0 of the first kept samples
    kept_records(out_dir, manifest, keys)          → {key: Shown} for chosen kept samples (e.g. dedup representatives)
    rejected_records(input_paths, wanted)          → {(source, source_id): Shown} for a few rejected records,
                                                     re-read from the webdataset tar inputs
    benchmark_items(benchmarks, wanted)            → {(benchmark, item_id): Shown} for contamination hits
"""
from __future__ import annotations

import base64
import functools
import io
import os
from dataclasses import dataclass, field

from apache_beam.io.filesystems import FileSystems

from vlmloom.schemas import formats
from vlmloom.schemas.tars import iter_tar_groups

IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp")


@dataclass(frozen=True)
class Shown:
    url: str | None  # data URL of a JPEG thumbnail, None when the image cannot be shown
    text: str  # the sample's text (caption / document), for text near-duplicates
    image: bytes | None = field(default=None, repr=False)  # image 0's encoded bytes, for `phash`

    @functools.cached_property
    def phash(self) -> str | None:
        """pHash of image 0 as decode measures it (16 hex digits), for distances; computed when first asked
        (only near-duplicate image pairs do: it costs the report process imagehash's scipy import)."""
        return _phash(self.image) if self.image else None


def _thumbnail_url(data: bytes, side: int = 128) -> str | None:
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data))
        if img.size[0] * img.size[1] > 50_000_000:
            return None
        img = img.convert("RGB")
        img.thumbnail((side, side))
    except Exception:  # noqa: BLE001 - a rejected image is often undecodable: it just gets no thumbnail
        return None
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _phash(data: bytes) -> str | None:
    """The pHash decode computes (curation/decode.py: 8-bit RGB → grayscale → imagehash.phash)."""
    import imagehash
    from PIL import Image

    from vlmloom.curation.decode import to_rgb8

    try:
        return str(imagehash.phash(to_rgb8(Image.open(io.BytesIO(data))).convert("L")))
    except Exception:  # noqa: BLE001 - undecodable: no distance to show
        return None


def _first_image(members: dict[str, bytes]) -> bytes | None:
    for ext in sorted(members):
        if ext.split(".")[-1].lower() in IMAGE_MEMBERS:
            return members[ext]
    return None


def kept_thumbnails(out_dir: str, limit: int = 12) -> list[tuple[str, str]]:
    """(key, data URL) of the first images in the first shard."""
    match = FileSystems.match([FileSystems.join(out_dir, formats.SHARDS_DIR, "*.tar")])[0].metadata_list
    if not match:
        return []
    out = []
    with FileSystems.open(sorted(m.path for m in match)[0]) as fh:
        for key, members in iter_tar_groups(io.BytesIO(fh.read())):
            image = _first_image(members)
            url = _thumbnail_url(image) if image else None
            if url:
                out.append((key, url))
                if len(out) >= limit:
                    break
    return out


def kept_records(out_dir: str, manifest: list[dict], keys: set[str]) -> dict[str, Shown]:
    """Thumbnail and text of the kept samples `keys`, read from the shards the manifest names."""
    shards = sorted({row["shard"] for row in manifest if row["key"] in keys})
    found: dict[str, Shown] = {}
    for shard in shards:
        with FileSystems.open(FileSystems.join(out_dir, formats.SHARDS_DIR, shard)) as fh:
            for key, members in iter_tar_groups(io.BytesIO(fh.read())):
                if key in keys:
                    image = _first_image(members)
                    found[key] = Shown(_thumbnail_url(image) if image else None,
                                       members.get("txt", b"").decode("utf-8", "replace"))
    return found


def rejected_records(input_paths: dict[str, list[str]], wanted: set[tuple[str, str]],
                     max_bytes_scanned: int = 512 * 2**20) -> dict[tuple[str, str], Shown]:
    """Thumbnails, texts and pHashes of a few rejected (source, source_id) records, read back from webdataset tar
    inputs. Members of other records are passed over unread (headers only, no record parsing); stops when all
    are found or after `max_bytes_scanned` bytes of tar; records from other input formats get none."""
    from vlmloom.curation import readers

    found: dict[tuple[str, str], Shown] = {}
    scanned = 0
    for source, paths in sorted(input_paths.items()):
        ids = {sid for (src, sid) in wanted if src == source}
        for path in paths:
            if not ids or scanned > max_bytes_scanned:
                break
            for source_id, files in _records_named(path, ids):
                ids.discard(source_id)
                images = [v for k, v in sorted(files.items()) if k.split(".")[-1] in readers.IMAGE_EXTENSIONS]
                sample = readers.record_to_sample(readers.RawRecord(source_id, files, f"{path}#{source_id}"), source)
                text = getattr(sample, "text", None) or ""
                found[(source, source_id)] = Shown(_thumbnail_url(images[0]) if images else None, text,
                                                   images[0] if images else None)
            scanned += _size(path)
    return found


def _records_named(path: str, ids: set[str]):
    """(source id, {ext: bytes}) of the records of tar `path` whose (printable) key is in `ids`; only their
    members are read. A tar that cannot be read to its end yields the complete records before the failure."""
    if "://" not in path:
        try:
            index = _local_tar_index(path, ids)
        except (OSError, ValueError):
            index = None  # compressed, or a header this quick reader does not know: tarfile reads it below
        if index is not None:
            with open(path, "rb") as fh:
                for key, members in index.items():
                    files = {}
                    for ext, (offset, size) in members.items():
                        fh.seek(offset)
                        files[ext] = fh.read(size)
                    yield key, files
            return
    yield from _records_named_streamed(path, ids)


_BLOCK = 512


def _local_tar_index(path: str, ids: set[str]) -> dict[str, dict[str, tuple[int, int]]]:
    """{key: {ext: (data offset, size)}} of the regular members whose (printable) key is in `ids`, from the
    headers of an uncompressed local tar alone (each member's data is seeked over, never read): a report
    looks up a few records among millions. ustar, pax and GNU long names; raises ValueError on anything else
    (the caller falls back to tarfile), stops at the end-of-archive block or the file's end."""
    from vlmloom.curation.readers import printable
    from vlmloom.schemas.tars import split_member_name

    found: dict[str, dict[str, tuple[int, int]]] = {}
    long_name: bytes | None = None
    last_key, clean_end = None, False
    with open(path, "rb") as fh:
        size_of_file = os.fstat(fh.fileno()).st_size
        offset = 0
        while offset + _BLOCK <= size_of_file:
            fh.seek(offset)
            block = fh.read(_BLOCK)
            if block == b"\0" * _BLOCK:
                clean_end = True
                break
            if block[257:262] != b"ustar" and offset == 0:
                raise ValueError("not a plain ustar/pax/gnu tar")
            size = _octal(block[124:136])
            kind = block[156:157]
            data = offset + _BLOCK
            offset = data + -(-size // _BLOCK) * _BLOCK
            if kind in (b"x", b"L"):  # the next member's name: a pax record or a GNU long name
                fh.seek(data)
                payload = fh.read(size)
                long_name = _pax_path(payload) if kind == b"x" else payload.rstrip(b"\0")
                continue
            if kind == b"g" or kind == b"K":
                continue
            name = long_name
            long_name = None
            if name is None:
                name = block[0:100].split(b"\0", 1)[0]
                prefix = block[345:500].split(b"\0", 1)[0] if block[257:262] == b"ustar" else b""
                name = prefix + b"/" + name if prefix else name
            if kind not in (b"0", b"\0", b"7"):
                continue  # directories, links, devices: no record data
            key, ext = split_member_name(printable(name.decode("utf-8", "surrogateescape")))
            last_key = key = printable(key)
            if data + size > size_of_file:
                break  # cut inside this member's data
            if key in ids:
                found.setdefault(key, {})[ext] = (data, size)
    if not clean_end:  # cut or garbage at the end: the record open there is incomplete, as tarfile would say
        found.pop(last_key, None)
    return found


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for sizes over 8 GiB
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _pax_path(payload: bytes) -> bytes | None:
    """The `path` record of a pax extended header ("LEN path=VALUE\n" records)."""
    pos = 0
    while pos < len(payload):
        space = payload.index(b" ", pos)
        length = int(payload[pos:space])
        record = payload[space + 1:pos + length - 1]
        pos += length
        if record.startswith(b"path="):
            return record[5:]
    return None


def _records_named_streamed(path: str, ids: set[str]):
    import tarfile

    from vlmloom.curation.readers import printable
    from vlmloom.schemas.tars import group_members, split_member_name

    failed: list[str] = []  # the key of the record open when the stream failed

    def members():
        key = None
        try:
            with FileSystems.open(path) as fh, tarfile.open(fileobj=fh, mode="r|*") as tar:
                for info in tar:
                    key = printable(split_member_name(info.name)[0])
                    wanted = info.isfile() and key in ids
                    yield info.name, tar.extractfile(info).read() if wanted else None
        except Exception:  # noqa: BLE001 - a corrupt input tar is why some records were rejected
            failed.append(key)

    left = set(ids)
    for key, group in group_members(members()):
        key = printable(key)
        files = {ext: data for ext, data in group.items() if data is not None}
        if files and key in left and not (failed and failed[0] == key):
            left.discard(key)
            yield key, files
            if not left:
                return


def _size(path: str) -> int:
    try:
        return FileSystems.match([path])[0].metadata_list[0].size_in_bytes
    except Exception:  # noqa: BLE001
        return 0


def benchmark_items(benchmarks: list[dict], wanted: set[tuple[str, str]]) -> dict[tuple[str, str], Shown]:
    """Thumbnail and question of the benchmark items contamination hits name (benchmarks: the job's config)."""
    from vlmloom.curation.contamination import BenchmarkSource, load_benchmark

    found: dict[tuple[str, str], Shown] = {}
    for b in benchmarks:
        ids = {item for (name, item) in wanted if name == b["name"]}
        if not ids:
            continue
        try:
            for item in load_benchmark(BenchmarkSource(**b)):
                if item.item_id in ids:
                    ids.discard(item.item_id)
                    found[(b["name"], item.item_id)] = Shown(
                        _thumbnail_url(item.image_bytes) if item.image_bytes else None, item.question)
                    if not ids:
                        break
        except OSError:  # the benchmark moved since the job ran: the hit is still listed, without its item
            continue
    return found
