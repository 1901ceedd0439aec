"""Which reader reads an input, and the units it reads: format resolution and unit planning, without Beam.

    resolve_path(path, format, match)  → (format, sorted files)   `auto` picks the format from the listing
    plan_units(format, files, root)     → (units, files no unit reads)
    read_unit(format, unit, context)    → Sample | Rejection, ...  (the registered reader, or a row file's own)

`match` lists the files a path names (`dir/**`, a glob, a file): pipelines/sources.py passes Beam's
FileSystems (gs://, s3://), the contamination stage's benchmarks `local_match`. Curate inputs and contamination
benchmarks resolve and read through these same functions, so every format one reads the other reads too.
"""
from __future__ import annotations

import glob
import os
import posixpath
import re
from typing import Any, Callable, Iterator

from vlmloom.curation import formats, readers, video
from vlmloom.curation.formats import ReadContext, folder
from vlmloom.curation.formats.pdf import pdf_unit
from vlmloom.schemas.config import ConfigError
from vlmloom.schemas.records import Rejection, Sample

ROWS = "auto"  # a resolved format: row files whose format each file's first row decides
TAR_EXTENSIONS = ("tar", "tar.gz", "tgz")
HF_METADATA = ("state.json", "dataset_info.json", "dataset_dict.json")  # what save_to_disk writes beside its data


def has_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def is_local_dir(path: str) -> bool:
    return "://" not in path and os.path.isdir(path)


def is_coco(path: str) -> bool:
    return posixpath.basename(path).startswith(("captions_", "instances_")) and path.endswith(".json")


def format_of_files(files: list[str], path: str, setting: str = "inputs[].format") -> str:
    """`auto`: what a listing holds, most specific first. `setting` is the config key an error tells to set."""
    exts = {formats.extension(f) for f in files}
    if any(posixpath.basename(f) == "state.json" for f in files):
        return "hf"
    if exts & set(TAR_EXTENSIONS):
        return "webdataset"
    if any(is_coco(f) for f in files):
        return "coco"
    media = readers.IMAGE_EXTENSIONS + video.VIDEO_EXTENSIONS
    stems = {readers.split_file_name(f)[0] for f in files if formats.extension(f) in media}
    if any(formats.extension(f) in formats.ROW_EXTENSIONS and not (
            formats.extension(f) == "json" and readers.split_file_name(f)[0] in stems) for f in files):
        return ROWS  # row files (a .json beside an image of its stem is that image's sidecar)
    if exts & set(readers.IMAGE_EXTENSIONS + video.VIDEO_EXTENSIONS + ("pdf",)):
        return "folder"  # images, videos, PDFs (each page an ocr record) and their sidecars
    raise ConfigError(f"input {path!r}: cannot tell its format from {sorted(exts)}; set {setting} to one "
                      f"of {formats.format_names()[1:]}")


def resolve_path(path: str, fmt: str, match: Callable[[str], list[str]],
                 setting: str = "inputs[].format") -> tuple[str, list[str]]:
    """(format, sorted files) of one path, file, glob or folder (every file under it); `fmt` a registered name
    (aliases resolved) or `auto`. Raises ConfigError when nothing matches or the format cannot be told."""
    fmt = formats.ALIASES.get(fmt, fmt)
    is_dir = not has_glob(path) and (path.endswith("/") or is_local_dir(path))
    files = match(posixpath.join(path, "**")) if is_dir else match(path)
    if not files:
        raise ConfigError(f"input {path!r} matches no files")
    if fmt == "auto":
        fmt = format_of_files(files, path, setting)
    return fmt, files


def local_match(pattern: str) -> list[str]:
    """Local files only, as Beam's FileSystems.match lists them: `dir/**` every file under dir, a glob the files
    it names (`**` across folders), a plain path itself; sorted."""
    if pattern.endswith("/**") and not has_glob(pattern[:-3]):
        root = pattern[:-3]
        found = [os.path.join(folder_path, name) for folder_path, _, names in os.walk(root) for name in names]
    elif has_glob(pattern):
        found = glob.glob(pattern, recursive=True)
    else:
        found = [pattern]
    return sorted(f for f in found if os.path.isfile(f))


def plan_units(fmt: str, files: list[str], root: str) -> tuple[list, list[str]]:
    """(the units workers read, the files no unit reads) of one resolved input. Files an image folder does not
    pair with an image, and files beside a webdataset's tars or a dataset's data, are counted, not read."""
    if fmt == "folder":
        return folder.folder_units(files, root), []
    if fmt == "pdf":
        units, rest = split(files, lambda f: formats.extension(f) == "pdf")
        return [pdf_unit(f, root) for f in units], rest
    if fmt == "webdataset":
        return split(files, lambda f: formats.extension(f) in TAR_EXTENSIONS, keep_images=False)
    if fmt == "coco":
        units, rest = split(files, lambda f: formats.extension(f) == "json")
        return ([units] if units else []), rest
    if fmt == "hf":
        data = [f for f in files if formats.extension(f) in ("arrow", "parquet")]
        if data:
            rest = [f for f in files if f not in data and posixpath.basename(f) not in HF_METADATA]
            return data, [f for f in rest if formats.extension(f) not in readers.IMAGE_EXTENSIONS]
    return split(files, lambda f: formats.extension(f) in formats.ROW_EXTENSIONS)


def split(files: list[str], read: Callable[[str], bool], keep_images: bool = True) -> tuple[list, list[str]]:
    """(files `read` takes, the others; images are left out of those when records may name them)."""
    units = [f for f in files if read(f)]
    media = readers.IMAGE_EXTENSIONS + video.VIDEO_EXTENSIONS
    rest = [f for f in files if not read(f) and not (keep_images and formats.extension(f) in media)]
    return units, rest


def folder_root(path: str) -> str:
    """The folder a folder input's files are named relative to: the path itself, or a glob's fixed prefix."""
    if not has_glob(path):
        return path.rstrip("/")
    fixed = path[:min(path.index(c) for c in "*?[" if c in path)]
    return fixed.rstrip("/") if fixed.endswith("/") else posixpath.dirname(fixed)


def is_row_format(fmt: str) -> bool:
    """Does `fmt` (resolved) read rows of row files, whose columns `fields` renames?"""
    return fmt == ROWS or isinstance(formats.get_format(fmt), formats.RowFormat)


def read_unit(fmt: str, unit: Any, ctx: ReadContext) -> Iterator[Sample | Rejection]:
    """One unit of a resolved input through its reader (`ROWS`: each row file's format sniffed from its first row)."""
    if fmt == ROWS:
        return formats.read_row_file(None, unit, ctx)
    return formats.get_format(fmt).read(unit, ctx)


_FILE_ID = re.compile(r":<[^<>]*>$")  # readers name a whole file they cannot read `<file>:<ext>` (iter_rows, tars)


def is_file_rejection(rejection: Rejection) -> bool:
    """Is this the rejection of a whole file (unreadable, corrupt, not an archive), not of one record in it?"""
    return bool(_FILE_ID.search(rejection.source_id))
