"""PackedDataset: rank/worker split, seeded shuffle, exact resume under torchdata's StatefulDataLoader."""
import numpy as np
import pytest

from vlmloom.demo.records import synthetic_samples
from vlmloom.schemas.curated import write_curated_dir
from vlmloom.packing.pack import PackConfig, pack
from vlmloom.packing.reader import PackedDataset

StatefulDataLoader = pytest.importorskip("torchdata.stateful_dataloader").StatefulDataLoader


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = tmp_path_factory.mktemp("reader")
    write_curated_dir(str(root / "cur"), synthetic_samples(120, seed=7, max_words=40, image_side=(20, 80)))
    pack(PackConfig(inputs=[str(root / "cur")], output=str(root / "packed"), seq_len=384, sequences_per_shard=3,
                    tokenizer_vocab_size=300))
    return str(root / "packed")


def as_list(batch):
    return batch


def keys(batches):
    return [[(s["key"], int(s["input_ids"].astype(np.int64).sum()), len(s["images"])) for s in b] for b in batches]


def test_reads_every_sequence_once(packed):
    import pyarrow.parquet as pq
    manifest = pq.read_table(f"{packed}/manifest.parquet").to_pylist()
    items = list(PackedDataset(packed))
    assert [x["key"] for x in items] == [r["key"] for r in manifest]
    for x, r in zip(items, manifest):
        L = x["input_ids"].shape[0]
        assert x["input_ids"].dtype == np.int32 and x["labels"].shape == (L,) and x["position_ids"].shape == (4, L)
        assert x["seq_lens"].sum() == r["num_tokens"] and x["seq_lens"].size == r["num_samples"]
        assert x["image_grid_thw"].shape == (r["num_images"], 3) and len(x["images"]) == r["num_images"]
        starts = np.r_[0, np.cumsum(x["seq_lens"])[:-1]]
        assert (x["position_ids"][0, starts] == 0).all()


def test_rank_split_is_a_partition(packed):
    full = sorted(x["key"] for x in PackedDataset(packed))
    parts = [[x["key"] for x in PackedDataset(packed, rank=r, world_size=3, shuffle_buffer=4)] for r in range(3)]
    assert sorted(k for p in parts for k in p) == full
    assert all(p for p in parts)


def test_shuffle_is_seeded(packed):
    a = [x["key"] for x in PackedDataset(packed, shuffle_buffer=5, seed=1)]
    b = [x["key"] for x in PackedDataset(packed, shuffle_buffer=5, seed=1)]
    c = [x["key"] for x in PackedDataset(packed, shuffle_buffer=5, seed=2)]
    assert a == b and a != c and sorted(a) == sorted(c)
    two = [x["key"] for x in PackedDataset(packed, shuffle_buffer=5, seed=1, epochs=2)]
    assert len(two) == 2 * len(a) and two[:len(a)] == a and two[len(a):] != a


def _loader(packed, **kw):
    ds = PackedDataset(packed, shuffle_buffer=4, seed=3, epochs=2, **kw)
    return StatefulDataLoader(ds, batch_size=2, num_workers=2, collate_fn=as_list, multiprocessing_context="fork")


@pytest.mark.parametrize("n_first", [3, 8])
def test_resume_with_two_workers_is_exact(packed, n_first):
    full = keys(list(_loader(packed)))
    assert len(full) > n_first + 4
    loader = _loader(packed)
    it = iter(loader)
    first = [next(it) for _ in range(n_first)]
    state = loader.state_dict()
    del it, loader
    resumed = _loader(packed)
    resumed.load_state_dict(state)
    rest = keys(list(resumed))
    assert keys(first) == full[:n_first]
    assert rest == full[n_first:]


def test_resume_in_process(packed):
    ds = PackedDataset(packed, shuffle_buffer=6, seed=0, epochs=3)
    full = [x["key"] for x in ds]
    ds = PackedDataset(packed, shuffle_buffer=6, seed=0, epochs=3)
    it = iter(ds)
    head = [next(it)["key"] for _ in range(len(full) // 3 + 5)]  # into the second epoch
    state = ds.state_dict()
    again = PackedDataset(packed, shuffle_buffer=6, seed=0, epochs=3)
    again.load_state_dict(state)
    assert head + [x["key"] for x in again] == full
    with pytest.raises(ValueError, match="seed"):
        other = PackedDataset(packed, shuffle_buffer=6, seed=9, epochs=3)
        other.load_state_dict(state)
        next(iter(other))


def test_refuses_unfinished_dir(tmp_path):
    (tmp_path / "shards").mkdir()
    with pytest.raises(ValueError, match="_SUCCESS"):
        PackedDataset(str(tmp_path))
