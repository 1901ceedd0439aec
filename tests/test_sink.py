import io
import tarfile

from vlmloom.pipelines.sink import OutputConfig, plan_shards, sample_members, tar_bytes, write_atomic
from vlmloom.schemas.records import ImageRef, Sample


def test_plan_shards_closes_on_count_and_bytes_in_key_order():
    sizes = [(f"k{i:02d}", 10, "json,txt,jpg") for i in range(10)][::-1]
    plan = plan_shards(sizes, OutputConfig(samples_per_shard=4, bytes_per_shard=10**9))
    assert [plan[f"k{i:02d}"] for i in range(10)] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    plan = plan_shards(sizes, OutputConfig(samples_per_shard=100, bytes_per_shard=25))
    assert max(plan.values()) == 4  # 2 samples of 10 bytes per 25-byte shard
    assert plan_shards([], OutputConfig()) == {}
    mixed = plan_shards([("a", 1, "json,txt,png"), ("b", 1, "json,txt,jpg"), ("c", 1, "json,txt,png")], OutputConfig())
    assert mixed == {"b": 0, "a": 1, "c": 1}  # one layout per shard


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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]
