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
    # forkserver, not fork: by now the test process runs threads (Beam's pools from earlier tests, tqdm's monitor), and
    # a worker forked while one of them held a lock hung at start in a CI run (py-spy: both children at fork)
    ds = PackedDataset(packed, shuffle_buffer=4, seed=3, epochs=2, **kw)
    return StatefulDataLoader(ds, batch_size=2, num_workers=2, collate_fn=as_list, multiprocessing_context="forkserver")


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


# ---- fewer shards than readers: split by sequence, never spin on an empty share ----------------------------------

class _AsWorker(PackedDataset):
    """A reader that believes it is DataLoader worker `worker` of `num_workers` (no processes needed)."""

    def __init__(self, *args, worker: int, num_workers: int, **kw):
        super().__init__(*args, **kw)
        self._as = (worker, num_workers)

    def _worker(self):
        return self._as


@pytest.fixture(scope="module")
def one_shard(tmp_path_factory):
    root = tmp_path_factory.mktemp("one_shard")
    write_curated_dir(str(root / "cur"), synthetic_samples(40, seed=11, max_words=30, image_side=(20, 60)))
    pack(PackConfig(inputs=[str(root / "cur")], output=str(root / "packed"), seq_len=256, sequences_per_shard=1000,
                    tokenizer_vocab_size=300))
    import glob
    assert len(glob.glob(str(root / "packed" / "shards" / "*.tar"))) == 1
    return str(root / "packed")


@pytest.mark.timeout(120)
def test_one_shard_two_workers_forever_trains(one_shard):
    """The demo's case: one shard, num_workers=2, epochs=None (repeat until the step budget). Before the fix
    worker 1 had no shard and looped over empty epochs at 100% CPU; the loader waited on it forever."""
    total = len(list(PackedDataset(one_shard)))
    assert total >= 4
    ds = PackedDataset(one_shard, shuffle_buffer=3, seed=5, epochs=None)
    loader = StatefulDataLoader(ds, batch_size=1, num_workers=2, collate_fn=as_list, multiprocessing_context="forkserver")
    it = iter(loader)
    first_epoch = [next(it)[0]["key"] for _ in range(total)]
    assert sorted(first_epoch) == sorted(x["key"] for x in PackedDataset(one_shard))  # each sequence once
    assert next(it)  # and the second epoch goes on


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n_first", [1, 4])
def test_one_shard_two_workers_resume_is_exact(one_shard, n_first):
    def loader():
        ds = PackedDataset(one_shard, shuffle_buffer=3, seed=2, epochs=2)
        return StatefulDataLoader(ds, batch_size=2, num_workers=2, collate_fn=as_list, multiprocessing_context="forkserver")

    full = keys(list(loader()))
    assert len(full) > n_first + 2
    first_loader = loader()
    it = iter(first_loader)
    first = [next(it) for _ in range(n_first)]
    state = first_loader.state_dict()
    del it, first_loader
    resumed = loader()
    resumed.load_state_dict(state)
    assert keys(first) == full[:n_first]
    assert keys(list(resumed)) == full[n_first:]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("shuffle_buffer", [0, 4])
def test_eight_ranks_two_workers_on_eight_shards(packed, shuffle_buffer):
    """8 ranks × 2 workers on 8 shards, as 16 readers in one process: every reader has work, each epoch reads
    every sequence exactly once over all of them, and no reader of an endless run spins without yielding."""
    import glob
    shards = sorted(glob.glob(f"{packed}/shards/*.tar"))[:8]
    assert len(shards) == 8
    everything = sorted(x["key"] for x in PackedDataset(shards))
    shares = {(r, j): [x["key"] for x in _AsWorker(shards, rank=r, world_size=8, worker=j, num_workers=2,
                                                    shuffle_buffer=shuffle_buffer, seed=1)]
              for r in range(8) for j in range(2)}
    assert all(shares.values()), {k: len(v) for k, v in shares.items()}
    assert sorted(k for share in shares.values() for k in share) == everything
    for r in range(8):
        for j in range(2):
            endless = _AsWorker(shards, rank=r, world_size=8, worker=j, num_workers=2, epochs=None,
                                shuffle_buffer=shuffle_buffer, seed=1)
            it = iter(endless)
            two_epochs = [next(it)["key"] for _ in range(2 * len(shares[(r, j)]))]
            assert sorted(two_epochs) == sorted(shares[(r, j)] * 2)


@pytest.mark.timeout(120)
def test_more_ranks_than_shards_resume_in_process(packed):
    """Ranks beyond the shard count share sequences too; resume mid-stream (across shard boundaries) is exact."""
    import glob
    shards = sorted(glob.glob(f"{packed}/shards/*.tar"))[:2]
    everything = sorted(x["key"] for x in PackedDataset(shards))
    parts = [[x["key"] for x in PackedDataset(shards, rank=r, world_size=3)] for r in range(3)]
    assert all(parts) and sorted(k for p in parts for k in p) == everything
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    full = [x["key"] for x in PackedDataset(shards, rank=1, world_size=3, shuffle_buffer=2, seed=4, epochs=2)]
    for n in range(len(full)):
        ds = PackedDataset(shards, rank=1, world_size=3, shuffle_buffer=2, seed=4, epochs=2)
        it = iter(ds)
        head = [next(it)["key"] for _ in range(n)]
        again = PackedDataset(shards, rank=1, world_size=3, shuffle_buffer=2, seed=4, epochs=2)
        again.load_state_dict(ds.state_dict())
        assert head + [x["key"] for x in again] == full, n


@pytest.mark.timeout(120)
def test_reader_with_nothing_to_read_ends(one_shard):
    """More readers than sequences: an empty share ends (the DataLoader drops that worker) instead of spinning."""
    total = len(list(PackedDataset(one_shard)))
    empty = _AsWorker(one_shard, rank=0, world_size=1, worker=total, num_workers=total + 1, epochs=None)
    assert list(empty) == []
