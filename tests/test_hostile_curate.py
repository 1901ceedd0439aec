"""Acceptance: `curate` on the hostile fixture (demo/hostile.py) exits cleanly, accounts for every raw record once
with a specific reason, writes shards that webdataset and HF datasets load, and is byte-identical across runners.
Also: shell-expanded globs on the command line, and staging directories of killed runs."""
import collections
import glob
import hashlib
import json
import os
import socket
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from vlmloom.demo.hostile import CLASSES, build_hostile_corpus
from vlmloom.pipelines.curate import curate, load_config
from beam_runners import RUNNERS



@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    expected = build_hostile_corpus(str(root / "corpus"))
    out = str(root / "out")
    report = curate(load_config({"inputs": expected["inputs"], "output": out}), RUNNERS["in_process"])
    return expected, out, report


def _rows(out):
    kept = pq.read_table(os.path.join(out, "manifest")).to_pylist()
    rejected = pq.read_table(os.path.join(out, "rejected")).to_pylist()
    return kept, rejected


def test_fixture_has_at_least_40_classes():
    assert len(set(CLASSES)) >= 40


def test_every_raw_record_is_accounted_for_once_with_a_specific_reason(hostile):
    expected, out, report = hostile
    kept, rejected = _rows(out)
    got = collections.Counter((r["source"], r["source_id"]) for r in kept + rejected)
    want = collections.Counter({(s, i): n for s, i, n in expected["records"]})
    assert got == want
    assert report["accounting"]["balanced"] and report["accounting"]["input_records"] == sum(want.values())
    assert not [r for r in rejected if r["reason"] == "quarantined_error"]
    reasons = {f'{r["source"]}|{r["source_id"]}': r["reason"] for r in rejected}
    assert {k: reasons.get(k) for k in expected["reasons"]} == expected["reasons"]
    assert len({r["key"] for r in kept}) == len(kept)  # one key, one sample


def test_duplicate_key_rejections_name_the_kept_copy(hostile):
    _, out, _ = hostile
    kept, rejected = _rows(out)
    origin = {r["key"]: json.loads(r["signals"])["origin"] for r in kept}
    duplicates = [r for r in rejected if r["reason"] == "duplicate_key"]
    # only byte-identical raw records are duplicates; records sharing a key with different content are all kept
    assert {(r["source"], r["source_id"]) for r in duplicates} == {("tars", "same_copy")}
    for r in duplicates:
        assert origin[r["key"]] in r["detail"] and "an identical copy of it (the same raw record" in r["detail"]
    renamed = collections.Counter((r["source"], r["source_id"]) for r in kept
                                  if "renamed_from" in json.loads(r["signals"]))
    assert renamed == {("tars", "shared_key"): 2, ("rows", "dup"): 2, ("rows", "rows.jsonl:9"): 2, ("table", "prep"): 2}


def test_folder_records_keep_dotted_stems_and_plain_uris(hostile):
    _, out, _ = hostile
    import tarfile

    kept, _ = _rows(out)
    folder = {r["source_id"]: r for r in kept if r["source"] == "folder"}
    assert {"holiday.2020.01", "holiday.2020.02"} <= set(folder)
    shard = os.path.join(out, "shards", folder["holiday.2020.01"]["shard"])
    with tarfile.open(shard) as tar:
        record = json.loads(tar.extractfile(folder["holiday.2020.01"]["key"] + ".json").read())
    assert record["images"][0]["uri"].endswith("/holiday.2020.01.jpg")


def test_shards_load_in_webdataset_and_hf_datasets(hostile):
    import webdataset as wds
    from datasets import Features, Image, load_dataset

    from vlmloom.schemas import formats

    _, out, _ = hostile
    kept, _ = _rows(out)
    shards = sorted(glob.glob(os.path.join(out, "shards", "*.tar")))
    assert sorted(s["__key__"] for s in wds.WebDataset(shards, shardshuffle=False)) == sorted(r["key"] for r in kept)
    by_layout = collections.defaultdict(list)
    for row in kept:
        by_layout[row["layout"]].append(row["shard"])
    for layout, names in by_layout.items():
        features = Features.from_arrow_schema(formats.shard_arrow_schema(layout))
        for ext in layout.split(",")[2:]:
            features[ext] = Image()
        files = sorted({os.path.join(out, "shards", n) for n in names})
        ds = load_dataset("webdataset", data_files={"train": files}, split="train", features=features)
        assert ds.num_rows == len(names)
        for row in ds:
            for ext in layout.split(",")[2:]:
                row[ext].convert("RGB")


def _digest(out):
    files = sorted(f for sub in ("shards", "manifest", "rejected") for f in glob.glob(os.path.join(out, sub, "*")))
    return [(os.path.relpath(f, out), hashlib.sha256(open(f, "rb").read()).hexdigest()) for f in files]


@pytest.mark.parametrize("runner", ["multi_processing", "portable_loopback"])
def test_hostile_output_is_byte_identical_across_runners(hostile, tmp_path, runner):
    expected, out_ref, _ = hostile
    out = str(tmp_path / runner)
    curate(load_config({"inputs": expected["inputs"], "output": out}), RUNNERS[runner])
    assert _digest(out) == _digest(out_ref)


def _tars(folder, count):
    import io
    import tarfile

    from vlmloom.demo.hostile import _caption, _jpeg

    os.makedirs(folder)
    for t in range(count):
        with tarfile.open(os.path.join(folder, f"{t}.tar"), "w") as tar:
            for name, data in ((f"s{t}.jpg", _jpeg(t)), (f"s{t}.txt", _caption(t))):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_shell_expanded_glob_gives_the_keys_of_the_quoted_glob(tmp_path):
    raw = str(tmp_path / "raw")
    _tars(raw, 3)
    keys = []
    for args, out in ((sorted(glob.glob(os.path.join(raw, "*.tar"))), "expanded"),
                      ([os.path.join(raw, "*.tar")], "quoted")):
        proc = subprocess.run([sys.executable, "-m", "vlmloom.cli.main", "curate", *args,
                               "--output", str(tmp_path / out), "--set", "disable=[language]"],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        keys.append(sorted(r["key"] for r in pq.read_table(tmp_path / out / "manifest").to_pylist()))
    assert keys[0] == keys[1] and len(keys[0]) == 3


def test_stale_staging_directories_of_killed_runs_are_removed(tmp_path):
    raw = str(tmp_path / "raw")
    _tars(raw, 1)
    out = tmp_path / "out"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale, live = tmp_path / "out.tmp-deadbeef", tmp_path / "out.tmp-11111111"
    for path, pid in ((stale, dead.pid), (live, os.getpid())):
        (path / "shards").mkdir(parents=True)
        (path / "_STAGING_OWNER").write_text(f"{socket.gethostname()} {pid}")
    other = tmp_path / "other.tmp-deadbeef"
    other.mkdir()
    curate(load_config({"inputs": [{"path": os.path.join(raw, "*.tar")}], "output": str(out),
                        "disable": ["language"]}))
    assert not stale.exists()  # its owner is gone
    assert live.exists() and other.exists()  # a live job's, and another output's, are left alone
    assert not (out / "_STAGING_OWNER").exists() and (out / "_SUCCESS").exists()
