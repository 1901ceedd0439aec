"""The one deterministic tar writer and the one "group tar members by key" reader, for every tar vlmloom
writes or reads: curated shards (pipelines/sink.py, schemas/curated.py), packed shards (packing/shards.py),
the demo corpus (vlmloom.demo) and input webdatasets (curation/readers.py).

    [(member name, bytes), ...] → tar_bytes(...) / TarWriter(fileobj).add(...)   deterministic tar
    tar (path or file object) → iter_tar_groups(...) → (key, {extension: bytes}) per webdataset sample

Determinism: members are written in the order given (callers sort them), with mtime 0, mode 0644, uid/gid 0
and no user or group names, so the same members give byte-identical tars. PAX format: names longer than the
ustar limit get a PAX header instead of an error; short ASCII names give the same bytes as ustar.
"""
from __future__ import annotations

import io
import os
import posixpath
import tarfile
from typing import BinaryIO, Callable, Iterable, Iterator, TypeVar

V = TypeVar("V")


def split_member_name(name: str) -> tuple[str, str]:
    """webdataset convention: key = path up to the first dot of the basename, ext = the rest (lower case)."""
    dirname, base = posixpath.split(name)
    if "." not in base:
        return name, ""
    stem, ext = base.split(".", 1)
    return (posixpath.join(dirname, stem) if dirname else stem), ext.lower()


class TarWriter:
    """Appends members to an open binary file object deterministically; `close()` ends the archive (the
    caller owns the file object)."""

    def __init__(self, fileobj: BinaryIO):
        self._tar = tarfile.open(fileobj=fileobj, mode="w", format=tarfile.PAX_FORMAT)

    def add(self, members: Iterable[tuple[str, bytes]]) -> None:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        self._tar.close()


def tar_bytes(members: Iterable[tuple[str, bytes]]) -> bytes:
    """The whole tar of `members`, in memory (shards of a bounded size)."""
    buf = io.BytesIO()
    writer = TarWriter(buf)
    writer.add(members)
    writer.close()
    return buf.getvalue()


def write_tar(path: str, members: Iterable[tuple[str, bytes]]) -> None:
    """Write a local tar atomically: `path.tmp` then rename, so `path` only ever holds a complete archive."""
    with open(path + ".tmp", "wb") as fh:
        writer = TarWriter(fh)
        writer.add(members)
        writer.close()
    os.replace(path + ".tmp", path)


def group_members(members: Iterable[tuple[str, V]]) -> Iterator[tuple[str, dict[str, V]]]:
    """Consecutive (member name, value) pairs sharing a webdataset key → (key, {extension: value})."""
    current: str | None = None
    group: dict[str, V] = {}
    for name, value in members:
        key, ext = split_member_name(name)
        if key != current:
            if current is not None:
                yield current, group
            current, group = key, {}
        group[ext] = value
    if current is not None:
        yield current, group


def iter_tar_groups(source: str | BinaryIO, *, skip: int = 0,
                    read: Callable[[tarfile.TarFile, tarfile.TarInfo], V] | None = None
                    ) -> Iterator[tuple[str, dict[str, V]]]:
    """(key, {extension: value}) per sample of a streamed tar; directories are passed over.

    `skip` groups are passed over without reading their payloads (resuming a reader mid-shard). `read`
    turns a member into its value (default: its bytes; regular files only) while the stream is on it.
    """
    read = read or _read_file

    def members():
        opened = tarfile.open(source, "r|*") if isinstance(source, str) else tarfile.open(fileobj=source, mode="r|*")
        with opened as tar:
            index, current = -1, None
            for info in tar:
                if info.isdir() or (read is _read_file and not info.isfile()):
                    continue
                key = split_member_name(info.name)[0]
                if key != current:
                    index, current = index + 1, key
                yield info.name, (read(tar, info) if index >= skip else None)

    for i, group in enumerate(group_members(members())):
        if i >= skip:
            yield group


def _read_file(tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    return tar.extractfile(info).read()
