"""The `curate` job end to end on a small demo corpus: accounting, planted records, determinism across
runners, readable shards, refusal of existing output, atomicity on failure."""
import copy
import dataclasses
import glob
import hashlib
import json
import os

import pyarrow.parquet as pq
import pytest

from vlmloom.demo.corpus import DemoCorpusConfig, build_demo_corpus
from vlmloom.pipelines.curate import curate, load_config
from vlmloom.schemas.config import ConfigError
from vlmloom.schemas.curated import key_bucket
from beam_runners import RUNNERS

BUCKETS = 8  # several buckets, several shards in most of them (see test_parts_read_as_one_dataset)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    expected = build_demo_corpus(str(root / "corpus"), DemoCorpusConfig(num_samples=80, samples_per_tar=40))
    return str(root / "corpus"), expected


def _config(corpus_dir, output, **extra):
    return load_config({"inputs": [{"path": os.path.join(corpus_dir, "tars", "*.tar"), "name": "wds"},
                                   {"path": os.path.join(corpus_dir, "manifest.parquet"), "name": "man"}],
                        "output": output, "dedup": {"phash_max_distance": 8},  # the demo plants variants <= 8
                        "output_format": {"buckets": BUCKETS, "samples_per_shard": 8}, **extra})


@pytest.fixture(scope="module")
def curated(corpus, tmp_path_factory):
    corpus_dir, expected = corpus
    out = str(tmp_path_factory.mktemp("curated") / "out")
    report = curate(_config(corpus_dir, out), RUNNERS["in_process"])
    return out, report, expected


def _rows(out):
    kept = pq.read_table(os.path.join(out, "manifest")).to_pylist()
    rejected = pq.read_table(os.path.join(out, "rejected")).to_pylist()
    return kept, rejected


def test_every_input_record_is_kept_or_rejected(curated):
    out, report, expected = curated
    kept, rejected = _rows(out)
    total = expected["total_records"] + expected["manifest_records"]
    assert report["accounting"]["input_records"] == total
    assert len(kept) + len(rejected) == total
    assert len({r["key"] for r in kept} | {r["key"] for r in rejected}) == total  # no record twice
    assert os.path.exists(os.path.join(out, "_SUCCESS"))
    funnel = report["funnel"]
    assert funnel[0]["in"] == total and all(a["kept"] == b["in"] for a, b in zip(funnel, funnel[1:]))


def test_every_planted_bad_record_has_its_specific_reason(curated):
    out, _, expected = curated
    _, rejected = _rows(out)
    by_id = {(r["source"], r["source_id"]): r["reason"] for r in rejected}
    for source_id, reason in expected["bad_records"].items():
        assert by_id.get(("wds", source_id)) == reason, source_id


def test_planted_duplicate_groups_keep_exactly_one_member(curated):
    out, _, expected = curated
    kept, rejected = _rows(out)
    kept_ids = {r["source_id"] for r in kept if r["source"] == "wds"}
    reasons = {r["source_id"]: r["reason"] for r in rejected if r["source"] == "wds"}
    # union the planted pairs into groups (chains of variants are one group)
    parent: dict[str, str] = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            x = parent[x]
        return x

    for group in ("exact_duplicates", "near_duplicates"):
        for pair in expected[group]:
            parent[find(pair[0])] = find(pair[1])
    groups: dict[str, list[str]] = {}
    for x in list(parent):
        groups.setdefault(find(x), []).append(x)
    assert groups
    for members in groups.values():
        assert sum(m in kept_ids for m in members) <= 1, members
        dropped = [reasons.get(m) for m in members if m not in kept_ids]
        assert all(r in ("exact_duplicate", "near_duplicate_image") or r and r.startswith("benchmark")
                   for r in dropped), (members, dropped)


def test_shards_load_with_webdataset_and_hf_datasets(curated):
    import webdataset as wds
    from datasets import Features, Image, load_dataset

    from vlmloom.schemas import formats

    out, _, _ = curated
    kept, _ = _rows(out)
    shards = sorted(glob.glob(os.path.join(out, "shards", "*.tar")))
    seen = [s["__key__"] for s in wds.WebDataset(shards, shardshuffle=False)]
    assert sorted(seen) == sorted(r["key"] for r in kept)
    by_layout: dict[str, list[str]] = {}
    for row in kept:
        by_layout.setdefault(row["layout"], []).append(row["shard"])
    assert len(by_layout) > 1  # the demo mixes jpg, png, image-less and multi-image samples
    for layout, names in by_layout.items():
        files = sorted({os.path.join(out, "shards", n) for n in names})
        features = Features.from_arrow_schema(formats.shard_arrow_schema(layout))
        for ext in layout.split(",")[2:]:
            features[ext] = Image()
        ds = load_dataset("webdataset", data_files={"train": files}, split="train", features=features)
        assert ds.num_rows == len(names), layout
        first = ds[0]
        assert first["json"]["key"] == first["__key__"] and isinstance(first["txt"], str)
        assert sorted(ds.column_names) == sorted(["__key__", "__url__"] + layout.split(",")), layout


@pytest.mark.parametrize("runner", ["multi_processing", "portable_loopback"])
def test_output_is_byte_identical_across_runners(corpus, curated, tmp_path, runner):
    corpus_dir, _ = corpus
    out_ref = curated[0]
    out = str(tmp_path / runner)
    curate(_config(corpus_dir, out), RUNNERS[runner])

    def digest(d):
        files = sorted(f for sub in ("shards", "manifest", "rejected") for f in glob.glob(os.path.join(d, sub, "*")))
        return [(os.path.relpath(f, d), hashlib.sha256(open(f, "rb").read()).hexdigest()) for f in files]

    assert digest(out) == digest(out_ref)
    # report.json's figures come from per-bucket aggregates merged in whatever order the runner combines them
    row_figures = ("accounting", "funnel", "kinds", "sources", "shards", "languages", "by_source", "histograms",
                   "sections")
    got, want = (json.load(open(os.path.join(d, "report.json"))) for d in (out, out_ref))
    assert {k: got[k] for k in row_figures} == {k: want[k] for k in row_figures}


def test_parts_read_as_one_dataset_with_pyarrow_hf_duckdb_and_pack(curated, tmp_path):
    import duckdb
    import pyarrow.dataset as pads
    from datasets import load_dataset

    from vlmloom.packing.curated import iter_curated_samples
    from vlmloom.pipelines.report import read_manifest, read_rejections

    out, report, _ = curated
    parts = [f"part-{b:05d}.parquet" for b in range(BUCKETS)]
    assert sorted(os.listdir(os.path.join(out, "manifest"))) == parts  # every bucket, empty or not
    assert sorted(os.listdir(os.path.join(out, "rejected"))) == parts
    kept, rejected = read_manifest(out), read_rejections(out)
    assert len({r["shard"][:6] for r in kept}) >= 4 and report["shards"] > BUCKETS  # several buckets, cut inside
    assert all(r["shard"].startswith(f"b{key_bucket(r['key'], BUCKETS):05d}-") for r in kept)
    keys = sorted(r["key"] for r in kept)
    assert sorted(pq.read_table(os.path.join(out, "manifest")).column("key").to_pylist()) == keys
    assert sorted(pads.dataset(os.path.join(out, "manifest")).to_table().column("key").to_pylist()) == keys
    hf = load_dataset("parquet", data_files=os.path.join(out, "manifest", "*.parquet"), split="train",
                      cache_dir=str(tmp_path / "hf"))
    assert sorted(hf["key"]) == keys
    glob_sql = os.path.join(out, "rejected", "*.parquet")
    count = duckdb.connect().execute(f"SELECT count(*) FROM read_parquet('{glob_sql}')").fetchall()[0][0]
    assert count == len(rejected) > 0
    assert sorted(s.key for s in iter_curated_samples(out)) == keys  # what `vlmloom pack` reads


def test_empty_buckets_read_as_empty_parts(tmp_path):
    import duckdb
    from datasets import load_dataset

    from vlmloom.demo.records import synthetic_samples
    from vlmloom.pipelines.report import read_manifest, read_rejections
    from vlmloom.schemas.curated import write_curated_dir

    samples = synthetic_samples(3, seed=1, image_side=(20, 30))
    out = write_curated_dir(str(tmp_path / "sparse"), samples, buckets=16)  # at least 13 empty buckets
    assert len(os.listdir(os.path.join(out, "manifest"))) == 16
    keys = sorted(s.key for s in samples)
    assert sorted(r["key"] for r in read_manifest(out)) == keys
    assert sorted(pq.read_table(os.path.join(out, "manifest")).column("key").to_pylist()) == keys
    assert sorted(load_dataset("parquet", data_files=os.path.join(out, "manifest", "*.parquet"), split="train",
                               cache_dir=str(tmp_path / "hf"))["key"]) == keys
    empty = write_curated_dir(str(tmp_path / "empty"), [], buckets=3)
    assert read_manifest(empty) == [] and read_rejections(empty) == []
    assert pq.read_table(os.path.join(empty, "manifest")).num_rows == 0
    sql = f"SELECT count(*) FROM read_parquet('{os.path.join(empty, 'rejected', '*.parquet')}')"
    assert duckdb.connect().execute(sql).fetchall()[0][0] == 0
    # HF `datasets` answers an all-empty dataset with "corresponds to no data" (its rule, not the parts')


def test_an_all_kept_output_reads_with_every_documented_reader(tmp_path):
    """rejected/ of a job that dropped nothing is parts of 0 rows: each reader formats.py documents loads it (and
    manifest/) as one table with the schema's columns."""
    import duckdb
    import pyarrow.dataset as pads
    from datasets import load_dataset

    from vlmloom.demo.records import synthetic_samples
    from vlmloom.schemas import formats
    from vlmloom.schemas.curated import write_curated_dir
    from vlmloom.schemas.records import REJECTION_SCHEMA

    samples = synthetic_samples(5, seed=2, image_side=(20, 30))
    out = write_curated_dir(str(tmp_path / "all_kept"), samples, buckets=3)
    keys = sorted(s.key for s in samples)
    for sub, schema, want in (("manifest", formats.MANIFEST_SCHEMA, keys), ("rejected", REJECTION_SCHEMA, [])):
        parts = os.path.join(out, sub, "*.parquet")
        assert len(glob.glob(parts)) == 3
        table = pq.read_table(os.path.join(out, sub))
        assert table.schema.names == schema.names and sorted(table.column("key").to_pylist()) == want
        assert sorted(pads.dataset(os.path.join(out, sub)).to_table().column("key").to_pylist()) == want
        hf = load_dataset("parquet", data_files=parts, split="train", streaming=True)
        assert list(hf.features) == schema.names and sorted(row["key"] for row in hf) == want
        if want:  # HF's non-streaming loader refuses any split of 0 rows, whatever the files (formats.py)
            hf = load_dataset("parquet", data_files=parts, split="train", cache_dir=str(tmp_path / "hf"))
            assert hf.column_names == schema.names and sorted(hf["key"]) == want
        db = duckdb.connect().execute(f"SELECT * FROM read_parquet('{parts}') ORDER BY key")
        assert [d[0] for d in db.description] == schema.names and [r[0] for r in db.fetchall()] == want


def test_existing_output_is_refused_unless_overwrite(corpus, tmp_path):
    corpus_dir, _ = corpus
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="--overwrite"):
        curate(_config(corpus_dir, str(out)))
    assert (out / "keep.txt").exists()


def test_failed_job_leaves_no_output(corpus, tmp_path):
    corpus_dir, _ = corpus
    out = tmp_path / "failed"
    # every record fails the decode stage unexpectedly (max_pixels is not an int) and no errors are tolerated
    config = _config(corpus_dir, str(out), max_error_ratio=0.0)
    broken = copy.copy(config.decode)  # a copy: the default DecodeConfig instance is shared by all configs
    object.__setattr__(broken, "max_pixels", "not-a-number")
    config = dataclasses.replace(config, decode=broken)
    # Beam's dead-letter threshold check: the quarantined decode errors exceed max_error_ratio 0.0
    with pytest.raises(ValueError, match=r"failing elements .* exceeded threshold: .* > 0\.0 \[while running 'decode/"):
        curate(config)
    assert not out.exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith("failed")]


def test_a_job_that_fails_to_build_leaves_no_beam_temp_dir(tmp_path, monkeypatch):
    """Beam makes a temp dir per Pipeline and removes it at the end of run(); a graph that fails to build never
    runs, so curate removes it itself."""
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    config = load_config({"inputs": [{"path": str(tmp_path / "nothing-*.tar")}], "output": str(tmp_path / "out")})
    with pytest.raises(ConfigError, match="nothing-"):
        curate(config)
    assert os.listdir(scratch) == []
    assert not (tmp_path / "out").exists()


def test_an_input_that_yields_no_record_fails_the_job_naming_it(tmp_path):
    import tarfile

    from vlmloom.schemas.config import ConfigError

    src = tmp_path / "empty.tar"
    with tarfile.open(src, "w"):
        pass
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"empty\.tar.*yielded no records"):
        curate(load_config({"inputs": [{"path": str(src)}], "output": str(out)}))
    assert not out.exists()


def test_html_report_shows_kept_and_rejected_thumbnails(curated):
    out, report, _ = curated
    page = open(os.path.join(out, "report.html"), encoding="utf-8").read()
    assert "Funnel" in page and "near_duplicate_image" in page
    kept_part, rejected_part = page.split("<h2>Kept samples</h2>")[1], page.split("<h2>Kept samples</h2>")[0]
    assert kept_part.count("<img") >= 5
    assert rejected_part.count("<img") >= 3  # duplicates and filtered images are decodable


def test_killed_job_leaves_no_visible_output(corpus, tmp_path):
    """SIGKILL `vlmloom curate` while it writes shards: the final directory never appears, every final-named shard
    is a complete tar, and the next run of the same output removes the killed run's staging directory."""
    import signal
    import subprocess
    import sys
    import tarfile
    import time

    corpus_dir, _ = corpus
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "vlmloom.cli.main", "curate", os.path.join(corpus_dir, "tars", "*.tar"),
               "--output", str(out), "--set", "output.samples_per_shard=1", "--set", "disable=[language]"]
    scratch = tmp_path / "tmp"  # the killed process's own temp files (Beam's pipeline temp dir) stay in here
    scratch.mkdir()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "TMPDIR": str(scratch)})

    def shard_files():  # final and temporary shard names in any staging directory
        return glob.glob(os.path.join(str(tmp_path), "killed.tmp-*", "shards", "*"))

    deadline = time.time() + 120
    while time.time() < deadline and not shard_files() and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the job finished before it could be killed while writing shards"
    assert not out.exists()
    written = shard_files()
    assert written, "killed before any shard was written"
    finals = [f for f in written if f.endswith(".tar")]
    for shard in finals:  # anything under a final shard name is a complete tar with whole members
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                assert len(tar.extractfile(member).read()) == member.size
    staging = glob.glob(os.path.join(str(tmp_path), "killed.tmp-*"))
    assert len(staging) == 1

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert not os.path.exists(staging[0]) and (out / "_SUCCESS").exists()


def test_direct_runner_jobs_run_on_the_fn_api_runner_without_trying_prism():
    """Beam's DirectRunner first tries its Prism runner, which downloads a binary at run time; curate's jobs go
    straight to the FnApiRunner the DirectRunner would fall back to. Other runners are left as named."""
    from vlmloom.pipelines.curate import _beam_options, new_pipeline

    for args in ([], ["--runner=DirectRunner"], ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]):
        assert type(new_pipeline(_beam_options(args)).runner).__name__ == "FnApiRunner", args
    for args in (["--runner=BundleBasedDirectRunner"], ["--runner=DirectRunner", "--streaming"]):
        assert type(new_pipeline(_beam_options(args)).runner).__name__ != "FnApiRunner", args


def test_a_curate_run_never_asks_for_prism(corpus, tmp_path, caplog):
    import logging

    corpus_dir, _ = corpus
    with caplog.at_level(logging.INFO, logger="apache_beam"):
        curate(_config(corpus_dir, str(tmp_path / "out")))
    assert not [r for r in caplog.records if "prism" in r.getMessage().lower()]
