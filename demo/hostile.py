"""A small corpus of hostile and odd inputs, for the acceptance test that `curate` survives anything.

`build_hostile_corpus(root)` writes tars, a gzipped tar, JSONL, Parquet and an image folder holding one or
more records of each class in `CLASSES` (image modes, EXIF, bombs, archive tricks, encodings, duplicate keys,
path tricks, truncations) and returns::

    {"inputs": [inputs[] entries for the curate config],
     "records": [[source, source_id, copies], ...],   # every raw record the readers must account for
     "reasons": {"source|source_id": reason},          # the fate of the records whose reason is certain
     "classes": [...]}

Every byte is a function of the code (seeded noise, mtime 0 tars), so runs are comparable byte for byte.
"""
from __future__ import annotations

import io
import json
import os
import struct
import tarfile
import zlib
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

CLASSES = (
    "rgb_jpeg", "cmyk_jpeg", "palette_png_transparency", "la_png", "one_bit_png", "gray16_png", "rgb16_png",
    "exif_rotated", "exif_garbage", "decompression_bomb", "aspect_200_to_1", "truncated_jpeg", "zero_byte_image",
    "not_an_image", "utf16_bom_caption", "latin1_caption", "nul_bytes_caption", "caption_number", "caption_list",
    "json_nested_100k", "json_top_level_list", "invalid_json", "unknown_kind", "dotdot_member", "absolute_member",
    "symlink_member", "hardlink_member", "directory_member", "duplicate_member", "pax_headers", "empty_tar",
    "non_tar_file", "tar_cut_in_member", "tar_cut_in_header", "same_key_two_tars", "identical_copy_two_tars",
    "non_utf8_member_name", "gzip_tar", "jsonl_not_object", "jsonl_meta_list", "jsonl_meta_string",
    "jsonl_repeated_id", "jsonl_index_equals_id", "manifest_dotdot_path", "manifest_absolute_path",
    "manifest_symlink_out", "manifest_missing_file", "jsonl_not_utf8", "jsonl_deep", "jsonl_huge_int",
    "jsonl_lone_surrogate", "parquet_16bit_bytes", "parquet_meta_invalid", "parquet_repeated_id",
    "parquet_corrupt_file", "parquet_rows_without_id", "folder_dotted_names", "folder_symlink_out",
    "folder_zero_byte", "folder_no_sidecar",
)


def _noise(seed: int, size=(96, 80), mode="RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = (rng.random((size[1] // 8, size[0] // 8, 3)) * 255).astype("uint8")
    return Image.fromarray(arr).resize(size, Image.NEAREST).convert(mode)


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def _jpeg(seed: int, **kw) -> bytes:
    return _encode(_noise(seed), "JPEG", quality=90, **kw)


def _gray16(seed: int) -> bytes:
    """A 16-bit grayscale PNG using the whole 0..65535 range (clipping to 8 bits would make it white)."""
    rng = np.random.default_rng(seed)
    small = (rng.random((10, 12)) * 65535).astype(np.uint16)
    arr = np.kron(small, np.ones((8, 8), dtype=np.uint16))
    return _encode(Image.fromarray(arr), "PNG")


def _rgb16_png(seed: int) -> bytes:
    """A 48-bit RGB PNG written by hand (Pillow cannot write 16-bit RGB)."""
    rng = np.random.default_rng(seed)
    arr = np.kron((rng.random((10, 12, 3)) * 65535).astype(">u2"), np.ones((8, 8, 1), dtype=">u2"))
    height, width = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[y].tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _bomb_png() -> bytes:
    """A valid small PNG whose header declares 100000 x 100000 pixels."""
    data = bytearray(_encode(_noise(7), "PNG"))
    ihdr = struct.pack(">II", 100_000, 100_000) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


def _exif_jpeg(seed: int, orientation: int | None, garbage: bool = False) -> bytes:
    image = _noise(seed, size=(120, 72))
    if garbage:
        return _encode(image, "JPEG", quality=90, exif=b"Exif\x00\x00" + b"\xff\x00garbage" * 8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(image, "JPEG", quality=90, exif=exif.tobytes())


class _Tar:
    """Deterministic tar writer that can also add links, directories and odd names."""

    def __init__(self, fmt=tarfile.GNU_FORMAT):
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape")

    def add(self, name: str, data: bytes = b"", kind=tarfile.REGTYPE, link: str = "", pax: dict | None = None):
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.mtime, info.mode = kind, link, 0, 0o755 if kind == tarfile.DIRTYPE else 0o644
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        if pax:
            info.pax_headers = pax
        self.tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
        return self

    def bytes(self) -> bytes:
        self.tar.close()
        return self.buf.getvalue()


def _caption(i: int) -> bytes:
    words = ["red", "green", "blue", "striped", "dotted", "grey", "tiles", "wall", "noise", "pattern", "square"]
    rng = np.random.default_rng(1000 + i)
    return ("a " + " ".join(rng.choice(words, 8)) + f" number {i}").encode()


def build_hostile_corpus(root: str) -> dict:
    os.makedirs(root, exist_ok=True)
    records: Counter = Counter()
    reasons: dict[str, str] = {}

    def expect(source: str, source_id: str, reason: str | None = None, copies: int = 1):
        records[(source, source_id)] += copies
        if reason:
            reasons[f"{source}|{source_id}"] = reason

    # ---- tars (one input: the glob tars/*.tar) ---------------------------------------------------------
    tars = os.path.join(root, "tars")
    os.makedirs(tars)
    t = _Tar()
    members = [
        ("rgb_jpeg", "jpg", _jpeg(1), None),
        ("cmyk_jpeg", "jpg", _encode(_noise(2, mode="CMYK"), "JPEG", quality=90), None),
        ("palette_png", "png", _encode(_noise(3).quantize(16), "PNG", transparency=0), None),
        ("la_png", "png", _encode(_noise(4, mode="LA"), "PNG"), None),
        ("one_bit_png", "png", _encode(_noise(5, mode="1"), "PNG"), None),
        ("gray16_a", "png", _gray16(6), None),
        ("gray16_b", "png", _gray16(60), None),
        ("rgb16", "png", _rgb16_png(8), None),
        ("exif_rotated", "jpg", _exif_jpeg(9, 6), None),
        ("exif_garbage", "jpg", _exif_jpeg(10, None, garbage=True), None),
        ("bomb", "png", _bomb_png(), "decompression_bomb"),
        ("aspect_200", "png", _encode(_noise(11, size=(2000, 10)), "PNG"), "aspect_ratio_too_large"),
        ("truncated_jpeg", "jpg", _jpeg(12)[:300], "truncated_image"),
        ("zero_byte", "jpg", b"", "empty_bytes"),
        ("not_image", "jpg", b"this is not an image at all" * 4, "unidentified_image"),
    ]
    for i, (key, ext, data, reason) in enumerate(members):
        t.add(f"{key}.{ext}", data).add(f"{key}.txt", _caption(i))
        expect("tars", key, reason)
    sidecars = [
        ("utf16_caption", "txt", "a caption written by a windows tool, long enough".encode("utf-16"), None),
        ("latin1_caption", "txt", "caf\xe9 cr\xe8me br\xfbl\xe9e on a plate".encode("latin-1"), "text_not_utf8"),
        ("nul_caption", "txt", b"a caption with a \x00 NUL byte inside it", None),
        ("caption_number", "json", b'{"caption": 42}', "caption_not_text"),
        ("caption_list", "json", b'{"caption": ["a", "b"]}', "caption_not_text"),
        ("json_deep", "json", b"[" * 100_000 + b"]" * 100_000, "json_too_deep"),
        ("json_list", "json", b'["img.jpg", "cap"]', "meta_not_object"),
        ("json_invalid", "json", b"{not json", "invalid_json"),
        ("kind_unknown", "json", b'{"kind": "movie", "caption": "x"}', "unknown_kind"),
    ]
    for i, (key, ext, data, reason) in enumerate(sidecars):
        t.add(f"{key}.jpg", _jpeg(20 + i)).add(f"{key}.{ext}", data)
        expect("tars", key, reason)
    t.add("../escape.jpg", _jpeg(40)).add("../escape.txt", b"x")
    expect("tars", "../escape", "unsafe_member_path")
    t.add("/abs/escape.jpg", _jpeg(41))
    expect("tars", "/abs/escape", "unsafe_member_path")
    t.add("symlinked.jpg", kind=tarfile.SYMTYPE, link="/etc/passwd").add("symlinked.txt", b"a link")
    expect("tars", "symlinked", "unsafe_member_path")
    t.add("hardlinked.jpg", kind=tarfile.LNKTYPE, link="rgb_jpeg.jpg")
    expect("tars", "hardlinked", "unsafe_member_path")
    t.add("dir", kind=tarfile.DIRTYPE).add("dir/inside.jpg", _jpeg(42)).add("dir/inside.txt", _caption(42))
    expect("tars", "dir/inside")
    t.add("twice.jpg", _jpeg(43)).add("twice.jpg", _jpeg(44)).add("twice.txt", _caption(43))
    expect("tars", "twice", "duplicate_member")
    t.add("caf\udce9.jpg", _jpeg(45)).add("caf\udce9.txt", _caption(45))
    expect("tars", "caf\\xe9")
    t.add("shared_key.jpg", _jpeg(46)).add("shared_key.txt", _caption(46))
    t.add("same_copy.jpg", _jpeg(47)).add("same_copy.txt", _caption(47))
    with open(os.path.join(tars, "a.tar"), "wb") as fh:
        fh.write(t.bytes())
    # same key, different content (and an identical copy) in a second tar of the glob; pax headers
    t = _Tar(fmt=tarfile.PAX_FORMAT)
    t.add("shared_key.jpg", _jpeg(48)).add("shared_key.txt", _caption(48))
    t.add("same_copy.jpg", _jpeg(47)).add("same_copy.txt", _caption(47))
    expect("tars", "shared_key", copies=2)
    expect("tars", "same_copy", copies=2)
    long_name = "pax_" + "ü" * 120
    t.add(f"{long_name}.jpg", _jpeg(49), pax={"comment": "pax header"}).add(f"{long_name}.txt", _caption(49))
    expect("tars", long_name)
    with open(os.path.join(tars, "b.tar"), "wb") as fh:
        fh.write(t.bytes())
    with open(os.path.join(tars, "c_empty.tar"), "wb") as fh:
        fh.write(_Tar().bytes())
    with open(os.path.join(tars, "d_not_tar.tar"), "wb") as fh:
        fh.write(b"PK\x03\x04 this is a zip, not a tar" * 30)
    expect("tars", "d_not_tar.tar:<tar>", "not_an_archive")
    cut = _Tar().add("kept_before_cut.jpg", _jpeg(50)).add("kept_before_cut.txt", _caption(50))
    cut = cut.add("cut_member.jpg", _jpeg(51) * 4).add("cut_member.txt", b"x").bytes()
    with open(os.path.join(tars, "e_cut_member.tar"), "wb") as fh:
        fh.write(cut[:len(cut) // 2 + 700])
    expect("tars", "kept_before_cut")
    expect("tars", "cut_member", "truncated_input")
    cut = _Tar().add("header_cut.jpg", _jpeg(52)).add("header_cut.txt", _caption(52)).bytes()
    header_at = 512 + -(-len(_jpeg(52)) // 512) * 512
    with open(os.path.join(tars, "f_cut_header.tar"), "wb") as fh:
        fh.write(cut[:header_at + 100])
    expect("tars", "header_cut", "truncated_input")
    # gzipped tar: its own input (the glob above matches *.tar only)
    gz_dir = os.path.join(root, "tgz")
    os.makedirs(gz_dir)
    import gzip

    with open(os.path.join(gz_dir, "g.tar.gz"), "wb") as fh:
        fh.write(gzip.compress(_Tar().add("gz.jpg", _jpeg(53)).add("gz.txt", _caption(53)).bytes(), mtime=0))
    expect("tgz", "gz")

    # ---- JSONL with image paths -------------------------------------------------------------------------
    man = os.path.join(root, "manifest")
    os.makedirs(os.path.join(man, "imgs"))
    outside = os.path.join(root, "outside")
    os.makedirs(outside)
    with open(os.path.join(outside, "x.jpg"), "wb") as fh:
        fh.write(_jpeg(60))
    with open(os.path.join(man, "imgs", "ok.jpg"), "wb") as fh:
        fh.write(_jpeg(61))
    os.symlink(os.path.join(outside, "x.jpg"), os.path.join(man, "imgs", "link_out.jpg"))
    lines: list[bytes] = []

    def line(obj_or_bytes, source_id: str | None, reason: str | None = None):
        data = obj_or_bytes if isinstance(obj_or_bytes, bytes) else json.dumps(obj_or_bytes).encode()
        lines.append(data)
        expect("rows", source_id or f"rows.jsonl:{len(lines)}", reason)

    line({"id": "ok", "image_path": "imgs/ok.jpg", "caption": _caption(61).decode()}, "ok")
    line(["img.jpg", "cap"], None, "record_not_object")
    line("text", None, "record_not_object")
    line(42, None, "record_not_object")
    line({"id": "meta_list", "image_path": "imgs/ok.jpg", "meta": [1, 2]}, "meta_list", "meta_not_object")
    line({"id": "meta_str", "image_path": "imgs/ok.jpg", "meta": "just a string"}, "meta_str", "invalid_json")
    # text-only questions, answered: a qa record without an answer is rejected by curate's renderable stage
    line({"id": "dup", "caption": "the first text only question here", "kind": "qa", "meta": {"answer": "yes"}}, "dup")
    line({"id": "dup", "caption": "the second text only question here", "kind": "qa", "meta": {"answer": "yes"}}, "dup")
    line({"caption": "a row without an id, named by its line", "kind": "qa", "meta": {"answer": "yes"}},
         None)  # rows.jsonl:9
    line({"id": "rows.jsonl:9", "caption": "a row whose id equals the line name of another", "kind": "qa",
          "meta": {"answer": "yes"}}, "rows.jsonl:9")
    line({"id": "dotdot", "image_path": "../outside/x.jpg", "caption": "c"}, "dotdot", "unsafe_image_path")
    line({"id": "absolute", "image_path": os.path.join(outside, "x.jpg"), "caption": "c"}, "absolute",
         "unsafe_image_path")
    line({"id": "link_out", "image_path": "imgs/link_out.jpg", "caption": "c"}, "link_out", "unsafe_image_path")
    line({"id": "missing", "image_path": "imgs/missing.jpg", "caption": "c"}, "missing", "missing_image_file")
    line(b'{"id": "latin", "caption": "caf\xe9"}', None, "text_not_utf8")
    line(b"[" * 5000 + b"]" * 5000, None, "json_too_deep")
    line(b'{"id": "huge", "n": ' + b"9" * 5000 + b"}", None, "invalid_json")
    line(b'{"id": "surrogate", "caption": "bad \\ud800 text"}', None, "text_not_utf8")
    line({"id": "caption_num", "caption": 3.5, "image_path": "imgs/ok.jpg"}, "caption_num", "caption_not_text")
    with open(os.path.join(man, "rows.jsonl"), "wb") as fh:
        fh.write(b"\n".join(lines) + b"\n")

    # ---- Parquet with image bytes -------------------------------------------------------------------------
    table_dir = os.path.join(root, "table")
    os.makedirs(table_dir)
    rows = [
        {"id": "p16", "image_bytes": _gray16(70), "caption": _caption(70).decode(), "meta": None},
        {"id": "p16b", "image_bytes": _gray16(71), "caption": _caption(71).decode(), "meta": None},
        {"id": "meta_bad", "image_bytes": _jpeg(72), "caption": "c", "meta": "{broken"},
        {"id": "prep", "image_bytes": _jpeg(73), "caption": _caption(73).decode(), "meta": None},
        {"id": "prep", "image_bytes": _jpeg(74), "caption": _caption(74).decode(), "meta": None},
        {"id": None, "image_bytes": None, "caption": "no image and no id", "meta": None},
    ]
    for row in rows[:3]:
        expect("table", row["id"], "invalid_json" if row["id"] == "meta_bad" else None)
    expect("table", "prep", copies=2)
    expect("table", "t1.parquet:row5", "no_image")
    pq.write_table(pa.Table.from_pylist(rows), os.path.join(table_dir, "t1.parquet"))
    pq.write_table(pa.Table.from_pylist([{"id": None, "image_bytes": _jpeg(75), "caption": _caption(75).decode(),
                                          "meta": None}]), os.path.join(table_dir, "t2.parquet"))
    expect("table", "t2.parquet:row0")
    with open(os.path.join(table_dir, "t3_corrupt.parquet"), "wb") as fh:
        fh.write(b"PAR1 not really parquet PAR1")
    expect("table", "t3_corrupt.parquet:<parquet>", "corrupt_parquet")

    # ---- image folder -------------------------------------------------------------------------------------
    folder = os.path.join(root, "folder")
    os.makedirs(folder)
    for i, stem in enumerate(["holiday.2020.01", "holiday.2020.02"]):
        with open(os.path.join(folder, f"{stem}.jpg"), "wb") as fh:
            fh.write(_jpeg(80 + i))
        with open(os.path.join(folder, f"{stem}.txt"), "wb") as fh:
            fh.write(_caption(80 + i))
        expect("folder", stem)
    os.symlink(os.path.join(outside, "x.jpg"), os.path.join(folder, "escape.jpg"))
    expect("folder", "escape", "unsafe_member_path")
    with open(os.path.join(folder, "empty.jpg"), "wb") as fh:
        fh.write(b"")
    expect("folder", "empty", "empty_bytes")
    with open(os.path.join(folder, "lonely.png"), "wb") as fh:
        fh.write(_encode(_noise(83), "PNG"))
    expect("folder", "lonely")

    inputs = [
        {"path": os.path.join(tars, "*.tar"), "name": "tars"},
        {"path": os.path.join(gz_dir, "*.tar.gz"), "name": "tgz"},
        {"path": os.path.join(man, "rows.jsonl"), "name": "rows"},
        {"path": os.path.join(table_dir, "*.parquet"), "name": "table"},
        {"path": folder, "name": "folder", "format": "folder"},
    ]
    return {"inputs": inputs, "records": sorted([s, i, n] for (s, i), n in records.items()),
            "reasons": reasons, "classes": list(CLASSES)}
