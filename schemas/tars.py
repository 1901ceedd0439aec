"""The one deterministic tar writer and the one "group tar members by key" reader, for every tar vlmloom
writes or reads: curated shards (pipelines/sink.py, schemas/curated.py), packed shards (packing/shards.py),
the demo corpus (vlmloom.demo) and input webdatasets (curation/readers.py).

    [(member name, bytes), ...] → tar_bytes(...) / TarWriter(fileobj).add(...)   deterministic tar
    tar (path or file object) → iter_tar_groups(...) → (key, {extension: bytes}) per webdataset sample
    tar (path or file object) → iter_tar_members(...) → (member name, bytes or what `read` makes) per member
    local uncompressed tar → scan_tar_headers(path) → (member name, data offset, size), headers only
    untrusted input tar → MemberStream(...) → (name, member or refusal), then `failure` (input webdatasets)

Determinism: members are written in the order given (callers sort them), with mtime 0, mode 0644, uid/gid 0
and no user or group names, so the same members give byte-identical tars. PAX format: names longer than the
ustar limit get a PAX header instead of an error; short ASCII names give the same bytes as ustar.
"""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import posixpath
import tarfile
from dataclasses import dataclass
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
    for i, group in enumerate(group_members(iter_tar_members(source, skip=skip, read=read))):
        if i >= skip:
            yield group


def iter_tar_members(source: str | BinaryIO, *, skip: int = 0,
                     read: Callable[[tarfile.TarFile, tarfile.TarInfo], V] | None = None
                     ) -> Iterator[tuple[str, V | None]]:
    """(member name, value) per member of a streamed tar (compressed or not), directories passed over; the value
    is `read(tar, info)` (default: the bytes of a regular file, other members passed over), None for the members
    of the first `skip` samples. A stream that fails raises tarfile's error after the members read before it."""
    read = read or _read_file
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


def _read_file(tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    return tar.extractfile(info).read()


_BLOCK = 512


class TruncatedTarError(Exception):
    """The tar ends without its end-of-archive block: cut, or garbage where a header should be. `name` is the
    member open there (its record may be incomplete), or None when no regular member was read."""

    def __init__(self, name: str | None):
        super().__init__(f"tar ends without an end-of-archive block (last member {name!r})")
        self.name = name


def scan_tar_headers(path: str) -> Iterator[tuple[str, int, int]]:
    """(member name, data offset, size) of each regular member of an uncompressed local tar, from its headers
    alone (each member's data is seeked over, never read): finding a few records among millions costs a read
    per member header. ustar, pax and GNU long names. Raises ValueError on a file that is not a plain tar at its
    start or on a header this scanner does not know (read such a tar with iter_tar_members), TruncatedTarError
    after the last complete member when the archive is cut or ends in garbage; names are decoded with
    surrogateescape, as tarfile does."""
    long_name: bytes | None = None
    last: str | None = None
    with open(path, "rb") as fh:
        size_of_file = os.fstat(fh.fileno()).st_size
        offset = 0
        while offset + _BLOCK <= size_of_file:
            fh.seek(offset)
            block = fh.read(_BLOCK)
            if block == b"\0" * _BLOCK:
                return
            if block[257:262] != b"ustar" and offset == 0:
                raise ValueError(f"{path}: not a plain ustar/pax/gnu tar")
            size = _octal(block[124:136])
            kind = block[156:157]
            data = offset + _BLOCK
            offset = data + -(-size // _BLOCK) * _BLOCK
            if kind in (b"x", b"L"):  # the next member's name: a pax record or a GNU long name
                fh.seek(data)
                payload = fh.read(size)
                long_name = _pax_path(payload) if kind == b"x" else payload.rstrip(b"\0")
                continue
            if kind in (b"g", b"K"):
                continue
            name, long_name = long_name, None
            if name is None:
                name = block[0:100].split(b"\0", 1)[0]
                prefix = block[345:500].split(b"\0", 1)[0] if block[257:262] == b"ustar" else b""
                name = prefix + b"/" + name if prefix else name
            if kind not in (b"0", b"\0", b"7"):
                continue  # directories, links, devices: no record data
            last = name.decode("utf-8", "surrogateescape")
            if data + size > size_of_file:
                break  # cut inside this member's data
            yield last, data, size
    raise TruncatedTarError(last)


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


# --- reading input tars robustly (curation/readers.py interprets the members) -----------------------------------

@dataclass(frozen=True)
class StreamMember:
    data: bytes
    span: tuple[str, int, int] | None  # (file, offset, length) when the bytes lie as-is in a local file


@dataclass(frozen=True)
class RefusedMember:
    reason: str  # unsafe_member_path | member_too_large | duplicate_member
    name: str  # the member's name in the tar


class MemberStream:
    """(name, StreamMember | RefusedMember) for each file member of a plain, gzip, bz2 or xz tar stream, in order,
    refusing unsafe (`is_unsafe(name)`, links, devices), oversized and repeated members instead of reading them.
    Never raises on the input's bytes: after iterating, `failure` holds [(reason, detail)] when the archive did
    not end cleanly (`truncated_input`, `corrupt_archive`, `not_an_archive`, `empty_input`, `read_error`) and
    `open_key` the key of the member being read when it failed.

    `local_file`: the local file `fileobj` reads byte for byte from its start; given (and the tar is not
    compressed), each member's `span` says where its bytes lie in it."""

    def __init__(self, fileobj, *, local_file: str | None = None, max_member_bytes: int,
                 is_unsafe: Callable[[str], bool], name_of: Callable[[str], str] = str):
        self._fileobj, self._local_file, self._max_member_bytes = fileobj, local_file, max_member_bytes
        self._is_unsafe, self._name_of = is_unsafe, name_of
        self.failure: list[tuple[str, str]] = []  # how the member stream ended, when it did not end cleanly
        self.open_key: list[str] = []  # the key of the member being read when the stream failed

    def __iter__(self):
        seen_key, seen_exts = None, set()
        try:
            stream = _decompressed(self._fileobj)
            # Offsets in an uncompressed local file are where a member's bytes can be read again (RawRecord.spans).
            spans_from = (os.path.abspath(self._local_file)
                          if self._local_file and isinstance(stream, _Prefixed) else None)
            tail = _Tail(stream)
            with tarfile.open(fileobj=tail, mode="r|") as tar:
                for member in tar:
                    if member.isdir():
                        continue
                    name = self._name_of(member.name)
                    key, ext = split_member_name(name)
                    if key != seen_key:
                        seen_key, seen_exts = key, set()
                    if self._is_unsafe(name) or not member.isfile():
                        yield name, RefusedMember("unsafe_member_path", name)
                    elif member.size > self._max_member_bytes:
                        yield name, RefusedMember("member_too_large", name)
                    elif ext in seen_exts:  # a second copy must not overwrite the first: give it its own slot
                        yield f"{name}~{len(seen_exts)}", RefusedMember("duplicate_member", name)
                    else:
                        data = tar.extractfile(member).read()
                        span = (spans_from, member.offset_data, len(data)) if spans_from else None
                        yield name, StreamMember(data, span)
                    seen_exts.add(ext)
                end = _archive_end(tar, tail)
                if end is not None:
                    self.failure.append(end)
        except tarfile.ReadError as exc:
            self.failure.append(_read_error_reason(exc, seen_key is None))
        except EOFError as exc:  # a compressed stream cut short
            self.failure.append(("truncated_input", f"{type(exc).__name__}: {exc}"))
        except Exception as exc:  # noqa: BLE001 - any other decoder/stream failure on input bytes is a rejection
            self.failure.append(("read_error", f"{type(exc).__name__}: {exc}"))
        if self.failure and seen_key is not None:
            self.open_key.append(seen_key)


class _Tail(io.RawIOBase):
    """A read-only stream that counts the bytes read and keeps the last ones: after tarfile stops, they tell
    a clean end-of-archive block from a cut or garbage header (tarfile's stream mode ends silently on both)."""

    KEEP = 1 << 16  # > tarfile's read-ahead (RECORDSIZE, 10 KiB)

    def __init__(self, raw):
        self._raw = raw
        self.count = 0
        self.tail = b""

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size) if size is not None and size >= 0 else self._raw.read()
        data = bytes(data or b"")
        self.count += len(data)
        self.tail = (self.tail + data)[-self.KEEP:]
        return data

    def bytes_at(self, start: int, end: int) -> bytes | None:
        first = self.count - len(self.tail)
        if start < first:
            return None
        return self.tail[start - first:end - first]


def _decompressed(fileobj):
    """Plain tar bytes from a plain, gzip, bz2 or xz stream (sniffed from the magic bytes)."""
    head = fileobj.read(6)
    stream = _Prefixed(head, fileobj)
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=stream, mode="rb")
    if head.startswith(b"BZh"):
        return bz2.BZ2File(stream)
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(stream)
    return stream


class _Prefixed(io.RawIOBase):
    def __init__(self, prefix: bytes, raw):
        self._prefix, self._raw = bytes(prefix or b""), raw

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            data, self._prefix = self._prefix + bytes(self._raw.read() or b""), b""
            return data
        if self._prefix:
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            return data
        return bytes(self._raw.read(size) or b"")

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


def _archive_end(tar: tarfile.TarFile, tail: _Tail) -> tuple[str, str] | None:
    """None for a clean end-of-archive block; else (reason, detail) for a cut or corrupt end."""
    start, stop = tar.offset, tar.fileobj.tell()
    block = tail.bytes_at(start, stop)
    if block is None:  # cannot happen with KEEP > read-ahead; stay honest if it does
        return "corrupt_archive", f"cannot verify the end of the archive at byte {start}"
    if len(block) == _BLOCK and not block.strip(b"\0"):
        return None
    if not block:
        return "truncated_input", f"archive ends at byte {start} without its end-of-archive block"
    if len(block) < _BLOCK:
        return "truncated_input", f"archive ends inside a header at byte {start} ({len(block)} of {_BLOCK} bytes)"
    return "corrupt_archive", f"invalid tar header at byte {start}"


def _read_error_reason(exc: tarfile.ReadError, nothing_read: bool) -> tuple[str, str]:
    text = str(exc)
    if "empty file" in text:
        return "empty_input", "the file is empty"
    if "unexpected end of data" in text or "truncated" in text:
        return "truncated_input", f"archive ends inside a member or header ({exc})"
    if nothing_read:
        return "not_an_archive", f"{type(exc).__name__}: {exc}"
    return "corrupt_archive", f"{type(exc).__name__}: {exc}"
