import collections
import io
import random
import tarfile

import pyarrow.parquet as pq
import pytest

from vlmloom.pipelines.sink import OutputConfig, write_atomic
from vlmloom.schemas.config import ConfigError
from vlmloom.schemas.curated import bucket_files, key_bucket, plan_shards, sample_members
from vlmloom.schemas.records import ImageRef, Rejection, Sample
from vlmloom.schemas.tars import tar_bytes


def test_plan_shards_closes_on_count_and_bytes_in_key_order():
    sizes = [(f"k{i:02d}", 10, "json,txt,jpg") for i in range(10)][::-1]
    plan = plan_shards(sizes, 4, 10**9)
    assert [plan[f"k{i:02d}"] for i in range(10)] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    plan = plan_shards(sizes, 100, 25)
    assert max(plan.values()) == 4  # 2 samples of 10 bytes per 25-byte shard
    assert plan_shards([], 1000, 10**9) == {}
    mixed = plan_shards([("a", 1, "json,txt,png"), ("b", 1, "json,txt,jpg"), ("c", 1, "json,txt,png")], 1000, 10**9)
    assert mixed == {"b": 0, "a": 1, "c": 1}  # one layout per shard


def test_key_bucket_depends_on_the_key_alone_and_spreads_keys():
    keys = [f"src-{i:06d}" for i in range(20000)]
    buckets = [key_bucket(k, 16) for k in keys]
    assert buckets == [key_bucket(k, 16) for k in keys]
    assert key_bucket("src-000000", 16) == int(__import__("hashlib").sha256(b"src-000000").hexdigest()[:16], 16) * 16 >> 64
    counts = collections.Counter(buckets)
    assert sorted(counts) == list(range(16))
    assert max(counts.values()) < 1.15 * len(keys) / 16 and min(counts.values()) > 0.85 * len(keys) / 16
    assert {key_bucket(k, 1) for k in keys[:100]} == {0}


def test_output_config_refuses_bad_bucket_counts():
    OutputConfig(buckets=1).validate()
    for bad in (0, 100_001):
        with pytest.raises(ConfigError, match="output.buckets"):
            OutputConfig(buckets=bad).validate()


def _sample(key: str, fmt: str = "jpeg") -> Sample:
    return Sample(key=key, source="s", source_id=key, text=f"t {key}", images=[ImageRef(format=fmt, bytes=key.encode())])


def test_bucket_files_are_independent_of_arrival_order_and_cut_inside_the_bucket():
    samples = [_sample(f"k{i:02d}", "png" if i % 3 == 0 else "jpeg") for i in range(11)]
    rejections = [Rejection(f"r{i}", "s", f"r{i}", "decode", "decode_error", "x") for i in range(3)]
    files = list(bucket_files(7, samples, rejections, samples_per_shard=3, bytes_per_shard=10**9))
    shuffled = samples[:]
    random.Random(0).shuffle(shuffled)
    assert files == list(bucket_files(7, shuffled, rejections[::-1], samples_per_shard=3, bytes_per_shard=10**9))
    names = [name for name, _ in files]
    # 7 jpg then 4 png samples, 3 a shard and one layout a shard: 3 + 3 + 1, then 3 + 1
    assert names == [f"shards/b00007-{i:05d}.tar" for i in range(5)] + [
        "manifest/part-00007.parquet", "rejected/part-00007.parquet"]
    with tarfile.open(fileobj=io.BytesIO(files[3][1])) as tar:
        assert [m.name for m in tar][::3] == ["k00.json", "k03.json", "k06.json"]
    manifest = pq.read_table(io.BytesIO(files[-2][1])).to_pylist()
    assert [r["key"] for r in manifest] == sorted(s.key for s in samples)
    assert [r["shard"] for r in manifest][:2] == ["b00007-00003.tar", "b00007-00000.tar"]
    assert [r["key"] for r in pq.read_table(io.BytesIO(files[-1][1])).to_pylist()] == ["r0", "r1", "r2"]
    with pytest.raises(ValueError, match="'k00'.*one key"):
        list(bucket_files(0, samples + samples[:1], [], samples_per_shard=3, bytes_per_shard=10**9))


def test_an_empty_bucket_still_writes_its_parts_with_the_schema():
    files = dict(bucket_files(3, [], [], samples_per_shard=10, bytes_per_shard=10**9))
    assert sorted(files) == ["manifest/part-00003.parquet", "rejected/part-00003.parquet"]
    table = pq.read_table(io.BytesIO(files["manifest/part-00003.parquet"]))
    assert table.num_rows == 0 and "shard" in table.column_names


def test_tar_is_deterministic_and_readable():
    empty = Sample(key="e", source="s", source_id="e")
    assert [n for n, _ in sample_members(empty)] == ["e.json", "e.txt"]
    sample = Sample(key="s-1", source="s", source_id="1", text="hi",
                    images=[ImageRef(format="jpeg", bytes=b"J"), ImageRef(format="png", bytes=b"P")])
    members = sample_members(sample)
    assert [n for n, _ in members] == ["s-1.json", "s-1.txt", "s-1.jpg", "s-1.1.png"]
    a, b = tar_bytes(members), tar_bytes(members)
    assert a == b
    with tarfile.open(fileobj=io.BytesIO(a)) as tar:
        infos = tar.getmembers()
        assert {i.mtime for i in infos} == {0} and {i.uname for i in infos} == {""}
        assert tar.extractfile("s-1.txt").read() == b"hi"


def test_write_atomic_replaces_and_leaves_no_temp(tmp_path):
    path = str(tmp_path / "f.bin")
    write_atomic(path, b"one")
    write_atomic(path, b"two")
    assert open(path, "rb").read() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]  # hidden temporaries included
