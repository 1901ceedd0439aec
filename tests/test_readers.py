import io
import json
import tarfile

import pytest

from vlmloom.curation import readers
from vlmloom.schemas.records import Rejection, Sample, make_key


def _tar(members: list[tuple[str, bytes]]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def _read(members):
    out = []
    for item in readers.iter_tar_records(_tar(members), "mem.tar"):
        out.append(item if isinstance(item, tuple) else readers.record_to_sample(item, "src"))
    return out


def test_tar_groups_members_by_key_and_orders_images():
    items = _read([("a.jpg", b"J0"), ("a.1.png", b"P1"), ("a.txt", "hello".encode()),
                   ("a.json", json.dumps({"kind": "interleaved", "segments": [
                       {"type": "image", "image_index": 0}, {"type": "text", "text": "x"},
                       {"type": "image", "image_index": 1}]}).encode()),
                   ("b.jpg", b"J"), ("b.txt", b"cap")])
    assert [s.source_id for s in items] == ["a", "b"]
    a = items[0]
    assert isinstance(a, Sample) and a.kind == "interleaved" and a.text == "hello"
    assert [img.bytes for img in a.images] == [b"J0", b"P1"]
    assert a.key == make_key("src", "a") and a.meta["kind"] == "interleaved"


@pytest.mark.parametrize("name", ["../evil.jpg", "/abs/evil.jpg", "x/../../evil.jpg"])
def test_unsafe_member_paths_are_rejected_not_extracted(name):
    items = _read([(name, b"data"), ("ok.jpg", b"J"), ("ok.txt", b"fine")])
    assert items[0][1] == "unsafe_member_path" and name in items[0][2]
    assert isinstance(items[1], Sample) and items[1].source_id == "ok"


def test_bad_text_and_json_are_rejected_with_reasons():
    items = _read([("a.jpg", b"J"), ("a.txt", b"caf\xe9 cr\xe8me"),
                   ("b.jpg", b"J"), ("b.json", b"{not json"),
                   ("c.jpg", b"J"), ("c.json", b'{"kind": "movie"}'),
                   ("d.jpg", b"J"), ("d.txt", "\ufeffbom ok".encode("utf-8"))])
    reasons = [(i.source_id, i.reason) for i in items if isinstance(i, Rejection)]
    assert reasons == [("a", "text_not_utf8"), ("b", "invalid_json"), ("c", "unknown_kind")]
    assert "byte 3" in items[0].detail
    assert items[3].text == "bom ok"


def test_truncated_tar_yields_records_then_a_read_error():
    data = _tar([("a.jpg", b"J" * 3000), ("a.txt", b"x"), ("b.jpg", b"K" * 3000)]).getvalue()
    items = list(readers.iter_tar_records(io.BytesIO(data[:2500]), "cut.tar"))
    assert items[-1][1] == "truncated_input" and "cut.tar" in items[-1][2]


def test_manifest_row_with_bytes_path_and_missing_file():
    def opener(path):
        if path == "img/ok.jpg":
            return b"IMG"
        raise FileNotFoundError(path)

    ok = readers.row_to_sample({"id": "1", "image_bytes": b"B", "caption": "c", "kind": "ocr"}, "m", 0, opener)
    by_path = readers.row_to_sample({"id": "2", "image_path": "img/ok.jpg", "caption": "c"}, "m", 1, opener)
    missing = readers.row_to_sample({"id": "3", "image_path": "img/gone.jpg", "caption": "c"}, "m", 2, opener)
    assert ok.kind == "ocr" and ok.images[0].bytes == b"B"
    assert by_path.images[0].bytes == b"IMG"
    assert isinstance(missing, Rejection) and missing.reason == "missing_image_file" and missing.source_id == "3"


def test_folder_grouping_pairs_images_with_sidecars():
    groups = readers.group_folder_files(["/d/a.jpg", "/d/a.txt", "/d/sub/b.png", "/d/notes.txt"], "/d")
    assert groups == {"a": {"jpg": "/d/a.jpg", "txt": "/d/a.txt"}, "sub/b": {"png": "/d/sub/b.png"}}
