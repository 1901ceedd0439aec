"""Thumbnails (and texts) for the HTML report, read back from what the job wrote and from its inputs.

    kept_thumbnails(out_dir)                       → [(key, data URL)] of image 0 of the first kept samples
    kept_video_strips(out_dir)                     → [(key, data URL)] frame strips of the first kept videos
    kept_records(out_dir, manifest, keys)          → {key: Shown} for chosen kept samples (e.g. dedup representatives)
    rejected_records(input_paths, wanted)          → {(source, source_id): Shown} for a few rejected records,
                                                     re-read from the webdataset tar inputs
    benchmark_items(benchmarks, wanted)            → {(benchmark, item_id): Shown} for contamination hits
"""
from __future__ import annotations

import base64
import functools
import io
from dataclasses import dataclass, field

from apache_beam.io.filesystems import FileSystems

from vlmloom.pipelines.files import BEAM_FILES
from vlmloom.schemas import curated
from vlmloom.schemas.config import ConfigError
from vlmloom.schemas.tars import TruncatedTarError, group_members, iter_tar_members, scan_tar_headers, \
    split_member_name


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


def _shown_sample(sample) -> Shown:
    """A kept sample's thumbnail (image 0) and training text, as its shard holds them (its pHash is in its
    manifest signals: no image kept)."""
    image = sample.images[0].bytes if sample.images else None
    return Shown(_thumbnail_url(image) if image else None, sample.training_text() or "")


def kept_thumbnails(out_dir: str, limit: int = 12) -> list[tuple[str, str]]:
    """(key, data URL) of the first images in the first shard."""
    shards = curated.shard_paths(out_dir, BEAM_FILES)
    if not shards:
        return []
    out = []
    with FileSystems.open(shards[0]) as fh:
        for sample in curated.iter_shard_samples(io.BytesIO(fh.read())):
            url = _shown_sample(sample).url
            if url:
                out.append((sample.key, url))
                if len(out) >= limit:
                    break
    return out


def kept_video_strips(out_dir: str, limit: int = 6) -> list[tuple[str, str]]:
    """(key, data URL of a frame strip) of the first kept video records: the manifest's parts are read (key and kind
    only) until `limit` are found, then only their shards."""
    from vlmloom.curation.video import frame_strip

    keys: set[str] = set()
    for rows in curated.iter_parts(out_dir, "manifest", ["key", "kind"], BEAM_FILES):
        keys.update(row["key"] for row in rows if row["kind"] == "video")
        if len(keys) >= limit:
            break
    keys = set(sorted(keys)[:limit])
    if not keys:
        return []
    found = []
    for row in curated.rows_for_keys(out_dir, "manifest", keys, ["key", "shard"], BEAM_FILES):
        with FileSystems.open(curated.shard_path(out_dir, row["shard"], BEAM_FILES)) as fh:
            for sample in curated.iter_shard_samples(io.BytesIO(fh.read())):
                if sample.key == row["key"] and sample.videos and sample.videos[0].bytes:
                    strip = frame_strip(sample.videos[0].bytes)
                    if strip:
                        found.append((sample.key, "data:image/jpeg;base64," + base64.b64encode(strip).decode()))
    return sorted(found)


def kept_records(out_dir: str, manifest: list[dict], keys: set[str]) -> dict[str, Shown]:
    """Thumbnail and text of the kept samples `keys`, read from the shards the manifest names."""
    shards = sorted({row["shard"] for row in manifest if row["key"] in keys})
    found: dict[str, Shown] = {}
    for shard in shards:
        with FileSystems.open(curated.shard_path(out_dir, shard, BEAM_FILES)) as fh:
            for sample in curated.iter_shard_samples(io.BytesIO(fh.read())):
                if sample.key in keys:
                    found[sample.key] = _shown_sample(sample)
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
            index = None  # compressed, or a header the scanner does not know: streamed below
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


def _local_tar_index(path: str, ids: set[str]) -> dict[str, dict[str, tuple[int, int]]]:
    """{key: {ext: (data offset, size)}} of the regular members whose (printable) key is in `ids`, from the
    headers of an uncompressed local tar alone (schemas/tars.scan_tar_headers): a report looks up a few records
    among millions. Raises ValueError where the scanner cannot read the tar (the caller streams it instead)."""
    from vlmloom.curation.readers import printable

    found: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        for name, offset, size in scan_tar_headers(path):
            key, ext = split_member_name(printable(name))
            key = printable(key)
            if key in ids:
                found.setdefault(key, {})[ext] = (offset, size)
    except TruncatedTarError as cut:  # the record open at the cut is incomplete, as tarfile would say
        if cut.name is not None:
            found.pop(printable(split_member_name(printable(cut.name))[0]), None)
    return found


def _records_named_streamed(path: str, ids: set[str]):
    from vlmloom.curation.readers import printable

    failed: list[str] = []  # the key of the record open when the stream failed

    def wanted(tar, info):
        return tar.extractfile(info).read() if info.isfile() and printable(split_member_name(info.name)[0]) in ids \
            else None

    def members():
        key = None
        try:
            with FileSystems.open(path) as fh:
                for name, data in iter_tar_members(fh, read=wanted):
                    key = printable(split_member_name(name)[0])
                    yield name, data
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
        except (OSError, ConfigError):  # the benchmark moved since the job ran: the hit is listed without its item
            continue
    return found
