"""Declared contracts: the signals table, the packed record, the one curated-directory writer, the tar helpers."""
import io
import os
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest

from vlmloom.schemas.curated import member_layout, write_curated_dir
from vlmloom.schemas.packed import PackedRecord
from vlmloom.schemas.records import RecordError, Sample
from vlmloom.schemas.signals import check_signals
from vlmloom.schemas.tars import group_members, iter_tar_groups, tar_bytes


def test_signals_declared_typed_and_owned():
    check_signals("decode", {"width": 64, "height": np.int64(32), "phash": "00ff00ff00ff00ff"})
    check_signals("my_custom_stage", {"n": 3})  # a custom judge may add keys of its own
    with pytest.raises(RecordError, match="'decode'.*'colour'.*not declared"):
        check_signals("decode", {"colour": "red"})
    with pytest.raises(RecordError, match="'width' = '64' is not of type"):
        check_signals("decode", {"width": "64"})
    for _ in range(2):  # the answer per value type is cached: the second check must refuse as the first did
        with pytest.raises(RecordError, match="'width' = True is not of type"):
            check_signals("decode", {"width": True})
        with pytest.raises(RecordError, match="'width' = 1.5 is not of type"):
            check_signals("decode", {"width": 1.5})
        check_signals("decode", {"width": np.int32(7)})
    check_signals("near_dup_text", {"duplicate_of": "k1"})  # a signal several stages write
    with pytest.raises(RecordError, match="'duplicate_of' belongs to stage 'exact_dedup' or 'near_dup_image'"):
        check_signals("clip", {"duplicate_of": "k1"})
    with pytest.raises(RecordError, match="'clip_score' belongs to stage 'clip'"):
        check_signals("heuristics", {"clip_score": 0.3})


def test_packed_record_validate_names_key_and_field():
    ok = PackedRecord(key="p0", input_ids=np.zeros(8, np.int32), labels=None,
                      position_ids=np.zeros((4, 8), np.int32), seq_lens=np.array([5, 3], np.int32),
                      image_grid_thw=np.zeros((0, 3), np.int32))
    assert ok.validate().to_dict()["key"] == "p0"
    ok.position_ids = np.zeros((3, 8), np.int32)
    with pytest.raises(RecordError, match="'p0'.*'position_ids'"):
        ok.validate()


def test_curated_writer_matches_the_sink_layout(tmp_path):
    samples = [Sample(key="b", source="s", source_id="b", kind="qa", text=None),
               Sample(key="a", source="s", source_id="a", text="hello")]
    write_curated_dir(str(tmp_path), samples, buckets=1)
    rows = pq.read_table(tmp_path / "manifest").to_pylist()
    assert [(r["key"], r["layout"], r["shard"]) for r in rows] == [("a", "json,txt", "b00000-00000.tar"),
                                                                   ("b", "json,txt", "b00000-00000.tar")]
    with tarfile.open(tmp_path / "shards" / "b00000-00000.tar") as tar:
        assert [(m.name, m.size) for m in tar][1::2] == [("a.txt", 5), ("b.txt", 0)]  # empty .txt is written
    assert sorted(os.listdir(tmp_path / "rejected")) == ["part-00000.parquet"]
    assert member_layout(samples[0]) == "json,txt" and os.path.exists(tmp_path / "_SUCCESS")


def test_member_grouper_and_deterministic_writer():
    members = [("k1.json", b"{}"), ("k1.jpg", b"x"), ("k1.1.png", b"y"), ("k2.json", b"{}")]
    data = tar_bytes(members)
    assert data == tar_bytes(members)
    assert list(iter_tar_groups(io.BytesIO(data))) == [("k1", {"json": b"{}", "jpg": b"x", "1.png": b"y"}),
                                                       ("k2", {"json": b"{}"})]
    assert list(iter_tar_groups(io.BytesIO(data), skip=1)) == [("k2", {"json": b"{}"})]
    assert list(group_members([("d/a.TXT", 1), ("d/a.json", 2), ("b", 3)])) == [("d/a", {"txt": 1, "json": 2}),
                                                                               ("b", {"": 3})]
