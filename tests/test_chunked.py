"""`curate --chunk N` (pipelines/chunked.py): chunks of input units, cross-chunk key uniqueness and dedup on the
chunk survivors, merged into the ordinary layout. Small handmade tars, one unit each; every decision planted."""
import glob
import hashlib
import io
import json
import os
import tarfile

import imagehash
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vlmloom.pipelines.curate import curate, load_config

ARGS = ["--direct_num_workers=1"]
PHASH_K = 6


def _jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _smooth(rng, side: int) -> np.ndarray:
    """A low-frequency image (its pHash is stable under small changes)."""
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((side, side), Image.BICUBIC)).astype(int)


def _phash(data: bytes):
    return imagehash.phash(Image.open(io.BytesIO(data)).convert("RGB").convert("L"))


def _write_tar(path, records) -> None:
    """records: (member key, jpeg bytes, caption)."""
    with tarfile.open(path, "w") as tar:
        for key, image, caption in records:
            for name, data in ((f"{key}.jpg", image), (f"{key}.txt", caption.encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _caption(i: int) -> str:
    words = "red green blue small large round square photo cat dog tree car house boat bird river hill".split()
    return f"record {i} " + " ".join(words[(i * 7 + j * 3) % len(words)] for j in range(10))


def _config(inputs: str, out: str, dedup=None, **extra):
    # two component rounds converge the clusters planted here, and keep the graph (and the test) small
    return load_config({"inputs": [{"path": inputs, "name": "raw"}], "output": out, "disable": ["language"],
                        "heuristics": {"min_side": 16},
                        "dedup": {"phash_max_distance": PHASH_K, "components_max_rounds": 2, **(dedup or {})},
                        "output_format": {"buckets": 2, "samples_per_shard": 3}, **extra})


def _files(out: str) -> dict[str, str]:
    paths = sorted(f for sub in ("shards", "manifest", "rejected") for f in glob.glob(os.path.join(out, sub, "*")))
    return {os.path.relpath(p, out): hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths}


def _tables(out: str):
    kept = pq.read_table(os.path.join(out, "manifest")).to_pylist()
    rejected = pq.read_table(os.path.join(out, "rejected")).to_pylist()
    return kept, rejected


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two tars (one unit each, so `--chunk 1` makes two chunks) with duplicates inside and across them:
    x: one image+caption in tar 0, exact copies in tar 1 (x1, x2);
    p: an image in tar 0, a brightened, smaller copy (pHash near) in tar 1;
    shared: one member name in tar 0 and tar 1, byte-identical (duplicate_key across chunks);
    diff: one member name in tar 0 and tar 1 with different content (both renamed across chunks);
    w: an exact pair inside tar 1 (decided by its chunk)."""
    root = tmp_path_factory.mktemp("chunked")
    rng = np.random.default_rng(1)
    img = {name: _jpeg(_smooth(rng, 48)) for name in ("x", "p", "s", "d0", "d2", "w", "u0", "u1")}
    near_p = _jpeg(np.asarray(Image.open(io.BytesIO(img["p"])).resize((40, 40))).astype(int) + 4)
    assert _phash(img["p"]) - _phash(near_p) <= PHASH_K - 2
    _write_tar(root / "t0.tar", [("u0", img["u0"], _caption(0)), ("x0", img["x"], _caption(1)),
                                 ("p0", img["p"], _caption(2)), ("shared", img["s"], _caption(3)),
                                 ("diff", img["d0"], _caption(4))])
    _write_tar(root / "t1.tar", [("u1", img["u1"], _caption(5)), ("x1", img["x"], _caption(1)),
                                 ("p1", near_p, _caption(6)), ("shared", img["s"], _caption(3)),
                                 ("x2", img["x"], _caption(1)), ("diff", img["d2"], _caption(8)),
                                 ("w0", img["w"], _caption(9)), ("w1", img["w"], _caption(9))])
    inputs = str(root / "*.tar")
    one = str(root / "one")
    report = curate(_config(inputs, one), ARGS)
    return inputs, one, report, root


def test_chunks_of_one_unit_give_the_one_job_output_with_duplicates_across_chunks(corpus):
    inputs, one, one_report, root = corpus
    out = str(root / "chunk1")
    report = curate(_config(inputs, out, chunk=1), ARGS)
    # the corpus does exercise every cross-chunk rule
    assert report["chunked"] == {"units_per_chunk": 1, "chunks": 2, "cross_chunk_duplicate_key": 1,
                                 "cross_chunk_renamed_key": 2,
                                 "cross_chunk_dropped": {"exact_duplicate": 1, "near_duplicate_image": 1}}
    kept, rejected = _tables(out)
    by_id = {}
    for row in rejected:
        by_id.setdefault(row["source_id"], []).append((row["stage"], row["reason"]))
    assert by_id["x1"] == by_id["x2"] == [("exact_dedup", "exact_duplicate")]
    assert by_id["p1"] == [("near_dup_image", "near_duplicate_image")]
    assert by_id["shared"] == [("read", "duplicate_key")] and by_id["w1"] == [("exact_dedup", "exact_duplicate")]
    renamed = [r for r in kept if r["source_id"] == "diff"]
    assert len(renamed) == 2 and all(json.loads(r["signals"])["renamed_from"] not in {r["key"] for r in renamed}
                                     for r in renamed)
    # ... and decides as one job does: the same files, byte for byte, and the same report figures
    assert _files(out) == _files(one)
    for name in ("accounting", "funnel", "kinds", "sources", "shards", "by_source", "histograms"):
        assert report[name] == one_report[name], name
    assert report["counters"]["read/renamed_key"] == one_report["counters"]["read/renamed_key"] == 2
    assert report["counters"]["write/samples"] == len(kept)
    assert not glob.glob(os.path.join(out, ".chunks")) and os.path.exists(os.path.join(out, "_SUCCESS"))


def test_one_chunk_holding_every_unit_is_the_one_job(corpus):
    inputs, one, one_report, root = corpus
    out = str(root / "chunk9")
    report = curate(_config(inputs, out, chunk=9), ARGS)
    assert report["chunked"]["chunks"] == 1 and report["chunked"]["cross_chunk_dropped"] == {}
    assert _files(out) == _files(one)
    assert report["funnel"] == one_report["funnel"]


def test_the_chunked_output_reads_with_the_curated_readers(corpus):
    from vlmloom.pipelines.inspect_output import inspect_output
    from vlmloom.schemas import curated

    inputs, _, _, root = corpus
    out = str(root / "chunk1")
    if not os.path.exists(out):
        curate(_config(inputs, out, chunk=1), ARGS)
    kept = curated.read_manifest(out)
    samples = [s for path in curated.shard_paths(out) for s in curated.iter_shard_samples(path)]
    assert sorted(s.key for s in samples) == sorted(r["key"] for r in kept)
    assert all(s.images[0].bytes and hashlib.sha256(s.images[0].bytes).hexdigest() == s.images[0].sha256
               for s in samples)
    assert "exact_duplicate" in inspect_output(out, 2)
    assert os.path.getsize(os.path.join(out, "report.html")) > 0


def _chain(root):
    """A ~ B ~ C by pHash (each pair within PHASH_K), A and C farther apart; A has the most pixels, then B."""
    for seed in range(100):
        rng = np.random.default_rng(seed)
        base, change = _smooth(rng, 64), _smooth(rng, 64) - 128
        a = _jpeg(np.clip(base, 0, 255))
        for step in np.linspace(0.05, 1.0, 40):
            b = _jpeg(np.asarray(Image.fromarray(np.clip(base + step * change, 0, 255).astype(np.uint8)).resize((48, 48))))
            c = _jpeg(np.asarray(Image.fromarray(np.clip(base + 2 * step * change, 0, 255).astype(np.uint8)).resize((32, 32))))
            ha, hb, hc = _phash(a), _phash(b), _phash(c)
            if ha - hb <= PHASH_K - 1 and hb - hc <= PHASH_K - 1 and ha - hc >= PHASH_K + 2:
                return a, b, c
    raise AssertionError("no pHash chain found")


def test_a_chained_cluster_across_chunks_follows_the_documented_rule(tmp_path):
    """One job: A represents {A, B, C}; B (within k of A) is dropped, C (farther) is kept as a chain member.
    Chunked, B and C in one chunk, A in another: B represents its chunk and drops C; the global pass then drops B
    for A. Representatives are chosen among chunk survivors: C goes too (pipelines/chunked.py)."""
    a, b, c = _chain(tmp_path)
    _write_tar(tmp_path / "t0.tar", [("b", b, _caption(1)), ("c", c, _caption(2)), ("u", _jpeg(_smooth(
        np.random.default_rng(7), 48)), _caption(3))])
    _write_tar(tmp_path / "t1.tar", [("a", a, _caption(4))])
    inputs = str(tmp_path / "*.tar")
    image_only = {"exact": False, "minhash": False}  # only the pHash stage decides here
    curate(_config(inputs, str(tmp_path / "one"), image_only), ARGS)
    curate(_config(inputs, str(tmp_path / "chunked"), image_only, chunk=1), ARGS)
    (one_kept, one_rejected), (kept, rejected) = _tables(str(tmp_path / "one")), _tables(str(tmp_path / "chunked"))
    key = {r["source_id"]: r["key"] for r in one_kept + one_rejected}
    assert sorted(r["source_id"] for r in one_kept) == ["a", "c", "u"]
    assert sorted(r["source_id"] for r in kept) == ["a", "u"]
    assert {(r["source_id"], r["detail"]) for r in one_rejected} == {("b", f"duplicate of {key['a']}")}
    assert {(r["source_id"], r["reason"], r["detail"]) for r in rejected} == {
        ("b", "near_duplicate_image", f"duplicate of {key['a']}"),
        ("c", "near_duplicate_image", f"duplicate of {key['b']}")}


def test_a_failed_chunk_leaves_no_visible_output(corpus, tmp_path, monkeypatch):
    """A chunk's job fails while it runs: neither the output nor a staging directory is left (through the CLI, so
    `--chunk` is parsed as the config key). What a finished chunk wrote is discarded too: the killed-run test."""
    import apache_beam as beam

    from vlmloom.pipelines import chunked
    from vlmloom.pipelines.cli import curate_main

    calls = []

    def failing_chunk(pipeline, config, output_dir, read_units=None):
        calls.append((config.chunk, read_units))
        _ = pipeline | beam.Create([1]) | beam.Map(lambda _: 1 / 0)  # the chunk's job fails as it runs
        return ["read"]

    monkeypatch.setattr(chunked, "build_pipeline", failing_chunk)
    out = tmp_path / "out"
    with pytest.raises(ZeroDivisionError):
        curate_main([corpus[0], "--output", str(out), "--chunk", "1", "--direct_num_workers=1"])
    assert calls == [(1, {0: (0, 1)})]
    assert os.listdir(tmp_path) == []


def test_a_killed_chunked_run_leaves_no_visible_output(corpus, tmp_path):
    """SIGKILL `vlmloom curate --chunk 1` once its second chunk has started: the output never appears; what the
    finished first chunk wrote lies only in the staging directory, which the next run of the output removes
    (its owner process is gone: schemas/publish.py)."""
    import signal
    import subprocess
    import sys
    import time

    from vlmloom.schemas.publish import remove_stale_staging

    inputs = corpus[0]
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "vlmloom.cli.main", "curate", inputs, "--output", str(out),
                             "--chunk", "1", "--set", "disable=[language]", "--set", "heuristics.min_side=16"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = os.path.join(str(tmp_path), "killed.tmp-*", ".chunks", "c00001")
    deadline = time.time() + 120
    while time.time() < deadline and not glob.glob(second) and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before its second chunk could be killed"
    assert not out.exists()
    staging = glob.glob(os.path.join(str(tmp_path), "killed.tmp-*"))
    assert len(staging) == 1 and glob.glob(os.path.join(staging[0], ".chunks", "c00000", "shards", "*.tar"))
    remove_stale_staging(str(out))
    assert os.listdir(tmp_path) == []


def test_chunks_cut_the_inputs_units_in_order(tmp_path):
    """Units in input order then unit order, `chunk` at a time, a chunk spanning two inputs where they meet."""
    from vlmloom.pipelines.chunked import plan_chunks

    for folder, count in (("a", 3), ("b", 2)):
        (tmp_path / folder).mkdir()
        for i in range(count):
            _write_tar(tmp_path / folder / f"{i}.tar", [("k", _jpeg(np.zeros((8, 8, 3))), "x")])
    config = load_config({"inputs": [{"path": str(tmp_path / "a" / "*.tar")}, {"path": str(tmp_path / "b")}],
                          "output": str(tmp_path / "out"), "chunk": 2})
    assert plan_chunks(config) == [{0: (0, 2)}, {0: (2, 3), 1: (0, 1)}, {1: (1, 2)}]


def test_shard_samples_read_as_spans_load_their_own_bytes(tmp_path):
    from vlmloom.schemas import curated
    from vlmloom.schemas.records import ImageRef, Sample

    images = [_jpeg(np.full((8, 8, 3), value)) for value in (10, 200, 90)]
    samples = [Sample(key=f"k{i}", source="s", source_id=str(i), text=f"t{i}",
                      images=[ImageRef(sha256=hashlib.sha256(data).hexdigest(), width=8, height=8, format="jpeg",
                                       bytes=data)]) for i, data in enumerate(images)]
    curated.write_curated_dir(str(tmp_path / "out"), samples, per_shard=2, buckets=1)
    read = [s for path in curated.shard_paths(str(tmp_path / "out"))
            for s in curated.iter_shard_samples(path, spans=True)]
    assert sorted(s.key for s in read) == ["k0", "k1", "k2"]
    for sample in read:
        image = sample.images[0]
        assert image.bytes is None and image.span[0].endswith(".tar")
        assert image.load_bytes() == images[int(sample.source_id)] and image.nbytes == len(image.load_bytes())
