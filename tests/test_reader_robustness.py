"""Readers never raise, whatever the bytes (hypothesis), and each hostile case gets its own reason code."""
import io
import json
import tarfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vlmloom.curation import readers
from vlmloom.curation.decode import DecodeConfig, decode_sample
from vlmloom.schemas.records import ImageRef, Rejection, Sample, make_key, samples_to_table

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _tar(members, fmt=tarfile.GNU_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8", errors="surrogateescape") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _all_records(data: bytes, name="x.tar"):
    out = []
    for item in readers.iter_tar_records(io.BytesIO(data), name):
        out.append(item if isinstance(item, tuple) else readers.record_to_sample(item, "src"))
    return out


def _usable(item) -> None:
    """What the pipeline does next with a reader's output must not fail either."""
    if isinstance(item, tuple):
        source_id, reason, detail = item
        (source_id + reason + detail).encode("utf-8")
        return
    assert isinstance(item, (Sample, Rejection))
    if isinstance(item, Sample):
        item.to_json().encode("utf-8")
        samples_to_table([item])
    else:
        (item.source_id + item.reason + item.detail).encode("utf-8")
        assert item.reason != "quarantined_error"


member_names = st.text(min_size=1, max_size=30).filter(lambda s: "\x00" not in s)


@FAST
@given(name=member_names, data=st.binary(max_size=300), sidecar=st.binary(max_size=300),
       ext=st.sampled_from(["txt", "json", "caption", "1.png", "jpg"]))
def test_any_member_bytes_become_a_sample_or_a_rejection(name, data, sidecar, ext):
    for item in _all_records(_tar([(f"{name}.jpg", data), (f"{name}.{ext}", sidecar)])):
        _usable(item)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                       max_size=4), max_leaves=20)


@FAST
@given(meta=st.dictionaries(st.sampled_from(["kind", "caption", "text", "messages", "segments", "answer", "domain",
                                             "other"]), json_values, max_size=6))
def test_any_json_sidecar_becomes_a_sample_or_a_rejection(meta):
    data = json.dumps(meta).encode()
    for item in _all_records(_tar([("k.jpg", b"J"), ("k.json", data)])):
        _usable(item)


@FAST
@given(data=st.binary(max_size=2000), cut=st.integers(min_value=0, max_value=4000))
def test_any_archive_bytes_or_cut_never_raise(data, cut):
    valid = _tar([("a.jpg", b"J" * 700), ("a.txt", b"cap"), ("b.jpg", b"K" * 600)])
    for blob in (data, valid[:cut], valid[:cut] + data):
        for item in _all_records(blob):
            _usable(item)


@FAST
@given(line=st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_any_jsonl_line_becomes_a_row_or_a_rejection(line):
    try:
        row = readers.parse_jsonl_line(line, "f.jsonl:1")
    except readers.InvalidRecord as exc:
        assert exc.reason in ("text_not_utf8", "invalid_json", "json_too_deep", "record_not_object")
        return
    _usable(readers.row_to_sample(row, "m", 0, lambda p: b"IMG", fallback_id="f.jsonl:1"))


cells = json_values | st.binary(max_size=20) | st.text(max_size=20)


@FAST
@given(row=st.dictionaries(st.sampled_from(["id", "key", "image_bytes", "image_path", "caption", "text", "kind",
                                            "meta"]), cells, max_size=8))
def test_any_manifest_cells_become_a_sample_or_a_rejection(row):
    def opener(path):
        raise FileNotFoundError(path)

    _usable(readers.row_to_sample(row, "m", 3, opener, fallback_id="t.parquet:row3"))


# --- section 1: the named cases ---------------------------------------------------------------------------------

def _reason(members) -> str:
    (item,) = _all_records(_tar(members))
    return item[1] if isinstance(item, tuple) else item.reason


@pytest.mark.parametrize("sidecar, reason", [
    (("json", b"[" * 100_000 + b"]" * 100_000), "json_too_deep"),
    (("json", b'{"caption": 42}'), "caption_not_text"),
    (("json", b'{"caption": ["a", "b"]}'), "caption_not_text"),
    (("json", b'["img.jpg", "cap"]'), "meta_not_object"),
    (("json", b'{"messages": "hi"}'), "invalid_field"),
    (("txt", "caf\xe9".encode("latin-1")), "text_not_utf8"),
])
def test_bad_sidecars_get_specific_reasons(sidecar, reason):
    assert _reason([("k.jpg", b"J"), (f"k.{sidecar[0]}", sidecar[1])]) == reason


def test_utf16_caption_with_bom_is_read():
    (item,) = _all_records(_tar([("k.jpg", b"J"), ("k.txt", "grüße".encode("utf-16"))]))
    assert item.text == "grüße"


@pytest.mark.parametrize("line, reason", [
    (b'["img.jpg", "cap"]', "record_not_object"), (b'"text"', "record_not_object"), (b"42", "record_not_object"),
    (b"[" * 100_000, "json_too_deep"), (b'{"id": "x", "caption": "\\ud800"}', "text_not_utf8"),
])
def test_jsonl_lines_that_are_not_records(line, reason):
    with pytest.raises(readers.InvalidRecord) as info:
        readers.parse_jsonl_line(line, "f.jsonl:1")
    assert info.value.reason == reason


@pytest.mark.parametrize("row, reason", [
    ({"id": "a", "caption": "c", "meta": [1, 2]}, "meta_not_object"),
    ({"id": "a", "caption": "c", "meta": '"a json string"'}, "meta_not_object"),
    ({"id": "a", "caption": "c", "meta": "not json"}, "invalid_json"),
    ({"id": "a", "caption": 7}, "caption_not_text"),
    ({"id": "a", "caption": ["x"]}, "caption_not_text"),
    ({"id": ["a"], "caption": "c"}, "invalid_field"),
    ({"id": "a", "image_bytes": "not bytes"}, "invalid_field"),
])
def test_manifest_rows_with_wrong_types(row, reason):
    result = readers.row_to_sample(row, "m", 0, lambda p: b"IMG")
    assert isinstance(result, Rejection) and result.reason == reason, result


def test_rows_without_an_id_are_named_by_file_and_position():
    result = readers.row_to_sample({"caption": "c", "kind": "qa"}, "m", 4, lambda p: b"", fallback_id="a.jsonl:5")
    assert result.source_id == "a.jsonl:5" and result.key == make_key("m", "a.jsonl:5")


# --- section 2: paths, folders, truncation, 16-bit images ----------------------------------------------------------

@pytest.mark.parametrize("path, root, allowed", [
    ("imgs/x.jpg", "", True), ("../outside/x.jpg", "", False), ("imgs/../../x.jpg", "", False),
    ("/data/x.jpg", "", False), ("gs://bucket/x.jpg", "", False), ("/data/x.jpg", "/data", True),
    ("/data/../etc/passwd", "/data", False), ("/other/x.jpg", "/data", False),
])
def test_manifest_paths_may_not_leave_their_folder(path, root, allowed):
    assert (readers.check_relative_path(path, root) is None) == allowed
    opened = []
    result = readers.row_to_sample({"id": "a", "image_path": path, "caption": "c"}, "m", 0,
                                   lambda p: opened.append(p) or b"IMG", image_root=root)
    assert opened == ([path] if allowed else [])
    if not allowed:
        assert result.reason == "unsafe_image_path" and path in result.detail


def test_folders_group_by_the_full_stem():
    groups = readers.group_folder_files(["/d/holiday.2020.01.jpg", "/d/holiday.2020.01.txt",
                                         "/d/holiday.2020.02.jpg", "/d/holiday.2020.02.txt", "/d/x.jpg"], "/d")
    assert sorted(groups) == ["holiday.2020.01", "holiday.2020.02", "x"]
    assert groups["holiday.2020.02"] == {"jpg": "/d/holiday.2020.02.jpg", "txt": "/d/holiday.2020.02.txt"}


def test_folder_image_uri_is_the_file_path():
    raw = readers.RawRecord("x", {"jpg": b"J", "txt": b"cap"}, "/d/x", member_uris={"jpg": "/d/x.jpg"})
    assert readers.record_to_sample(raw, "f").images[0].uri == "/d/x.jpg"


def test_tar_cut_inside_a_member_or_a_header_is_truncated_input():
    valid = _tar([("a.jpg", b"J" * 1000), ("a.txt", b"cap a"), ("b.jpg", b"K" * 1000), ("b.txt", b"cap b")])
    b_header = 512 + 1024 + 512 + 512  # a.jpg header+data, a.txt header+data
    in_member = _all_records(valid[:b_header + 512 + 300], "cut.tar")
    in_b_txt_header = _all_records(valid[:b_header + 512 + 1024 + 200], "cut.tar")
    for items in (in_member, in_b_txt_header):
        assert isinstance(items[0], Sample) and items[0].source_id == "a" and items[0].text == "cap a"
        assert items[1][:2] == ("b", "truncated_input") and "cut.tar" in items[1][2]
        assert len(items) == 2
    # Cut inside the header after a's last member: the lost member may have been a's, so a is not kept whole.
    (in_header,) = _all_records(valid[:b_header + 100], "cut.tar")
    assert in_header[:2] == ("a", "truncated_input") and "inside a header" in in_header[2]


def test_whole_tar_without_end_marker_is_truncated_but_complete_tar_is_not():
    valid = _tar([("a.jpg", b"J"), ("a.txt", b"cap")])
    assert isinstance(_all_records(valid)[0], Sample)
    assert _all_records(valid[:1024 + 512])[0][1] == "truncated_input"  # all members, no end-of-archive block


def _png16(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint16)).save(buf, "PNG")
    return buf.getvalue()


def test_distinct_16bit_images_stay_distinct():
    rng = np.random.default_rng(0)
    a = np.kron(rng.integers(0, 65535, (8, 8)), np.ones((16, 16))).astype(np.uint16)
    b = np.kron(rng.integers(0, 65535, (8, 8)), np.ones((16, 16))).astype(np.uint16)
    signals = []
    for arr in (a, b):
        sample = Sample(key="k", source="s", source_id="k", images=[ImageRef(bytes=_png16(arr))], text="t")
        verdict = decode_sample(sample, DecodeConfig())
        assert verdict.keep, verdict.detail
        signals.append(verdict.signals)
    assert all(s["pixel_std"] > 30 for s in signals)  # clipped to white, the std was 0
    distance = bin(int(signals[0]["phash"], 16) ^ int(signals[1]["phash"], 16)).count("1")
    assert distance > 10


def test_16bit_scaling_keeps_the_order_of_values():
    from vlmloom.curation.decode import to_rgb8

    ramp = np.linspace(0, 65535, 256).astype(np.uint16).reshape(16, 16)
    out = np.asarray(to_rgb8(Image.fromarray(ramp)).convert("L")).ravel()
    assert out[0] == 0 and out[-1] == 255 and np.all(np.diff(out.astype(int)) >= 0)


# --- one key, one sample ---------------------------------------------------------------------------------------

def _sample(source_id, text, origin, image=b"J"):
    s = Sample(key=make_key("s", source_id), source="s", source_id=source_id, text=text,
               images=[ImageRef(bytes=image)])
    s.signals[readers.ORIGIN_SIGNAL] = origin
    return s


def test_key_winner_does_not_depend_on_order_and_identical_copies_are_rejected():
    copies = [_sample("x", "one", "a.tar#x"), _sample("x", "two", "b.tar#x"), _sample("x", "one", "c.tar#x")]
    winners = set()
    for order in ([0, 1, 2], [2, 1, 0], [1, 0, 2]):
        winner, rejections = readers.choose_key_winner([copies[i] for i in order])
        winners.add((winner.text, winner.signals["origin"]))
        assert len(rejections) == 2 and {r.reason for r in rejections} == {"duplicate_key"}
        assert all(winner.signals["origin"] in r.detail for r in rejections)
        assert sorted(r.detail for r in rejections) == sorted(
            r.detail for r in readers.choose_key_winner(copies)[1])
    assert len(winners) == 1
