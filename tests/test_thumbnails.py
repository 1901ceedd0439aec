"""Report thumbnails of rejected records are read back from the input tars: only the wanted records' members
are read, records are found by their (printable) key, and an unreadable tar gives what came before it."""
from __future__ import annotations

import gzip
import io
import tarfile

import numpy as np
from PIL import Image

from vlmloom.pipelines import thumbnails


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def _tar(path, records: list[tuple[str, bytes, str]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, image, text in records:
            for name, data in ((f"{key}.png", image), (f"{key}.txt", text.encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_rejected_records_reads_only_the_wanted_ones(tmp_path, monkeypatch):
    first, second = tmp_path / "a.tar", tmp_path / "b.tar"
    _tar(first, [(f"r{i:03d}", _png(i), f"text {i}") for i in range(40)])
    _tar(second, [("z1", _png(99), "last one")])
    wanted = {("src", "r017"), ("src", "z1"), ("src", "missing"), ("other", "r001")}
    found = thumbnails.rejected_records({"src": [str(first), str(second)]}, wanted)
    assert set(found) == {("src", "r017"), ("src", "z1")}
    assert found[("src", "r017")].text == "text 17" and found[("src", "z1")].text == "last one"
    assert found[("src", "r017")].url.startswith("data:image/jpeg;base64,") and found[("src", "z1")].phash
    # Local plain tars: headers only, and the index names exactly the wanted members where tarfile finds them.
    index = thumbnails._local_tar_index(str(first), {"r017", "r039", "nope"})
    with tarfile.open(first) as tar:
        expected = {key: {ext: (tar.getmember(f"{key}.{ext}").offset_data, tar.getmember(f"{key}.{ext}").size)
                          for ext in ("png", "txt")} for key in ("r017", "r039")}
    assert index == expected
    # Compressed (or remote) tars stream through tarfile, still reading only the wanted records' members.
    zipped = tmp_path / "a.tar.gz"
    with open(first, "rb") as src, gzip.open(zipped, "wb") as dst:
        dst.write(src.read())
    read: list[str] = []
    original = tarfile.TarFile.extractfile

    def spy(self, member):
        read.append(member.name)
        return original(self, member)

    monkeypatch.setattr(tarfile.TarFile, "extractfile", spy)
    found = thumbnails.rejected_records({"src": [str(zipped)]}, {("src", "r017")})
    assert found[("src", "r017")].text == "text 17" and sorted(read) == ["r017.png", "r017.txt"]


def test_long_names_and_cut_tars_in_the_header_index(tmp_path):
    long_key = "x" * 150
    pax, gnu = tmp_path / "pax.tar", tmp_path / "gnu.tar"
    for path, fmt in ((pax, tarfile.PAX_FORMAT), (gnu, tarfile.GNU_FORMAT)):
        with tarfile.open(path, "w", format=fmt) as tar:
            for name, data in ((f"dir/{long_key}.txt", b"long"), ("b.txt", b"short")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        found = dict(thumbnails._records_named(str(path), {f"dir/{long_key}", "b"}))
        assert found == {f"dir/{long_key}": {"txt": b"long"}, "b": {"txt": b"short"}}, fmt
    whole = pax.read_bytes()
    with tarfile.open(pax) as tar:
        b_data = tar.getmember("b.txt").offset_data
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole[:b_data + 2])  # inside b's data: b is incomplete, the long one is whole
    assert dict(thumbnails._records_named(str(cut), {f"dir/{long_key}", "b"})) == {f"dir/{long_key}": {"txt": b"long"}}


def test_a_corrupt_tar_gives_what_came_before_and_the_budget_stops_the_scan(tmp_path):
    good = tmp_path / "good.tar"
    _tar(good, [("a", _png(1), "alpha"), ("b", _png(2), "beta")])
    with tarfile.open(good) as tar:
        b_png = tar.getmember("b.png")
    cut = tmp_path / "cut.tar"
    cut.write_bytes(good.read_bytes()[:b_png.offset_data + 100])  # ends inside record b's image
    assert thumbnails.rejected_records({"s": [str(cut)]}, {("s", "a"), ("s", "b")}).keys() == {("s", "a")}
    found = thumbnails.rejected_records({"s": [str(cut), str(good)]}, {("s", "a"), ("s", "b")})
    assert found[("s", "a")].text == "alpha" and found[("s", "b")].text == "beta"  # b from the second tar
    spent = thumbnails.rejected_records({"s": [str(cut), str(good)]}, {("s", "b")}, max_bytes_scanned=100)
    assert spent == {}  # the first tar used the budget up
