"""`vlmloom trace` on a small curated + packed demo corpus: a packed sequence back to its tar members, a
near-duplicate to its kept representative, a sample the pack step dropped as too long, a source-id lookup,
`--json`, and the error for a WHAT that names nothing."""
import json
import os
import tarfile

import pyarrow.parquet as pq
import pytest

from vlmloom.cli.main import main as vlmloom_main
from vlmloom.demo.corpus import DemoCorpusConfig, build_demo_corpus
from vlmloom.demo.run import next_steps
from vlmloom.packing.builder import BuilderConfig
from vlmloom.packing.pack import PackConfig, pack
from vlmloom.pipelines.curate import curate, load_config
from vlmloom.pipelines.report import read_manifest, read_rejections
from vlmloom.pipelines.trace import render, representative_key, trace
from vlmloom.schemas.packed import document_key

SEQ_LEN = 1024  # the demo's long qa/interleaved samples exceed it: the pack step drops some as too_long


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("trace")
    expected = build_demo_corpus(str(root / "corpus"), DemoCorpusConfig(num_samples=50, samples_per_tar=40))
    curated = str(root / "curated")
    curate(load_config({"inputs": [{"path": str(root / "corpus" / "tars" / "*.tar"), "name": "wds"},
                                   {"path": str(root / "corpus" / "manifest.parquet"), "name": "man"}],
                        "output": curated, "dedup": {"phash_max_distance": 8}}), ["--direct_num_workers=1"])
    packed = str(root / "packed")
    pack(PackConfig(inputs=[curated], output=packed, seq_len=SEQ_LEN, sequences_per_shard=4,
                    tokenizer_vocab_size=300))
    return curated, packed, expected


def _packed_manifest(packed):
    return sorted(pq.read_table(os.path.join(packed, "manifest.parquet")).to_pylist(), key=lambda r: r["key"])


def test_packed_sequence_traces_back_to_its_tar_members(dirs):
    curated, packed, _ = dirs
    manifest = _packed_manifest(packed)
    row = next(r for r in manifest if r["num_samples"] > 1 and any(k.startswith("wds-") for k in r["sample_keys"]))
    index = [r["key"] for r in manifest if r["shard"] == row["shard"]].index(row["key"])
    result = trace(f"{row['shard']}:{index}", curated, packed)

    sequence = result["sequence"]
    assert result["matched"] == "packed_sequence" and sequence["sequence_key"] == row["key"]
    spans = sequence["samples"]
    assert [s["key"] for s in spans] == row["sample_keys"]
    assert spans[0]["token_start"] == 0 and all(a["token_end"] == b["token_start"] for a, b in zip(spans, spans[1:]))
    assert spans[-1]["token_end"] == row["num_tokens"]
    assert sum(s["labelled_tokens"] for s in spans) == row["num_label_tokens"]

    wds_checked = False
    stages = [f["stage"] for f in json.load(open(os.path.join(curated, "report.json")))["funnel"]]
    for history in result["samples"]:
        assert history["curation"]["kept"]
        lineage = [s for s in history["curation"]["stages"] if s["stage"] != "read"]
        assert [s["stage"] for s in lineage] == stages[1:]  # the reader adds no lineage entry
        assert all(len(s["config_hash"]) >= 8 for s in lineage)
        assert [(p["shard"], p["index"]) for p in history["packed"]] == [(row["shard"], index)]
        if history["source"] != "wds":
            continue
        tar_path, member = history["raw"]["origin"].rsplit("#", 1)
        assert member == history["source_id"]
        with tarfile.open(tar_path) as tar:  # the raw tar really holds it, with the caption that was curated
            caption = tar.extractfile(f"{member}.txt").read().decode("utf-8")
        assert caption.startswith(history["curation"]["text"][:50])
        wds_checked = True
    assert wds_checked


def _groups(pairs):
    parent = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            x = parent[x]
        return x
    for a, b, *_ in pairs:
        parent[find(a)] = find(b)
    return find


def test_near_duplicate_traces_to_its_kept_representative(dirs):
    curated, packed, expected = dirs
    dropped = next(r for r in read_rejections(curated) if r["reason"] == "near_duplicate_image")
    result = trace(dropped["key"], curated, packed)
    history = result["samples"][0]
    assert result["matched"] == "key" and history["curation"]["dropped"]["reason"] == "near_duplicate_image"
    assert "decode" in history["curation"]["passed"] and history["packed"] == []
    rep = history["duplicates"]["representative"]
    kept = {r["key"]: r for r in read_manifest(curated)}
    assert rep["key"] in kept and rep["fate"].startswith("kept")
    find = _groups(expected["near_duplicates"])  # the pair the corpus planted
    assert find(rep["source_id"]) == find(dropped["source_id"])
    assert rep["origin"].endswith(f"#{rep['source_id']}")

    back = trace(rep["key"], curated, packed)["samples"][0]  # and from the representative's side
    assert dropped["key"] in [d["key"] for d in back["duplicates"]["duplicated_by"]]


def test_sample_dropped_by_pack_traces_to_too_long(dirs):
    curated, packed, _ = dirs
    packed_keys = {document_key(k) for r in _packed_manifest(packed) for k in r["sample_keys"]}
    kept = read_manifest(curated)
    key = next(r["key"] for r in kept if r["key"] not in packed_keys)
    history = trace(key, curated, packed)["samples"][0]
    assert history["curation"]["kept"] and history["packed"] == []
    assert history["pack_rejected"][0]["reason"] == "too_long"
    assert f"> seq_len {SEQ_LEN}" in history["pack_rejected"][0]["detail"]


def test_split_document_traces_to_each_of_its_parts(dirs, tmp_path):
    """A document longer than seq_len is packed as parts KEY#p0, KEY#p1, …: its history lists every part's
    placement, and a sequence holding a part traces back to the document."""
    curated, _, _ = dirs
    packed = str(tmp_path / "short")  # short sequences: the demo's interleaved documents are split
    pack(PackConfig(inputs=[curated], output=packed, seq_len=400, tokenizer_vocab_size=300,
                    builder=BuilderConfig(kinds=["interleaved"])))
    rows = _packed_manifest(packed)
    parts = sorted({k for r in rows for k in r["sample_keys"] if document_key(k) != k})
    assert parts
    doc = document_key(parts[0])
    mine = [k for k in parts if document_key(k) == doc]
    assert len(mine) >= 2
    history = trace(doc, curated, packed)["samples"][0]
    assert history["curation"]["kept"] and sorted(p["part_key"] for p in history["packed"]) == mine
    assert f"as part {mine[0]}" in render(trace(doc, curated, packed))
    row = next(r for r in rows if mine[0] in r["sample_keys"])
    shard_rows = [r for r in rows if r["shard"] == row["shard"]]
    result = trace(f"{row['shard']}:{shard_rows.index(row)}", curated, packed)
    assert doc in [s["key"] for s in result["samples"]]


def test_source_id_lookup_finds_every_record_read_under_it(dirs):
    curated, packed, _ = dirs
    rows = read_manifest(curated) + read_rejections(curated)
    by_id = {}
    for r in rows:
        by_id.setdefault(r["source_id"], set()).add(r["key"])
    source_id = next(s for s, keys in sorted(by_id.items()) if len(keys) > 1)  # read from both sources
    result = trace(source_id, curated, packed)
    assert result["matched"] == "source_id"
    assert {h["key"] for h in result["samples"]} == by_id[source_id]
    assert all(h["source_id"] == source_id for h in result["samples"])


def test_cli_json_output_parses(dirs, capsys):
    curated, packed, _ = dirs
    key = read_manifest(curated)[0]["key"]
    assert vlmloom_main(["trace", key, "--curated", curated, "--packed", packed, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(trace(key, curated, packed)))
    assert vlmloom_main(["trace", key, "--curated", curated, "--packed", packed]) == 0
    assert capsys.readouterr().out.startswith(key)


@pytest.mark.parametrize("what", ["no-such-key", "00000.tar:9999"])
def test_unknown_what_exits_2_with_a_clear_error(dirs, capsys, what):
    curated, packed, _ = dirs
    assert vlmloom_main(["trace", what, "--curated", curated, "--packed", packed]) == 2
    err = capsys.readouterr().err
    assert what in err and "vlmloom trace:" in err


def test_demo_ends_with_reports_a_working_trace_command_and_tensorboard(dirs, capsys):
    curated, packed, _ = dirs  # the fixture lays out OUT/curated and OUT/packed as `vlmloom demo` does
    out = os.path.dirname(curated)
    os.makedirs(os.path.join(out, "train_pretrain", "tensorboard"), exist_ok=True)
    text = next_steps(out)
    assert os.path.join(curated, "report.html") in text
    assert f"--logdir {out}" in text and "train_pretrain" in text
    command = next(line.split() for line in text.splitlines() if " trace " in line and "--curated" in line)
    argv = command[command.index("trace"):]
    assert vlmloom_main(argv) == 0  # the printed command works, and what the demo showed is its output
    shown = [line[6:] for line in text.splitlines() if line.startswith("      ") and not line.startswith("      ...")]
    printed = [line for line in capsys.readouterr().out.splitlines() if line]
    assert printed[:len(shown)] == shown


def test_representative_key_reads_fields_then_detail():
    assert representative_key({"reason": "near_duplicate_image", "detail": "duplicate of wds-abc",
                               "fields": ""}) == "wds-abc"
    assert representative_key({"reason": "near_duplicate_text", "detail": "x",
                               "fields": json.dumps({"representative": "man-1"})}) == "man-1"
    assert representative_key({"reason": "image_too_small", "detail": "duplicate of x", "fields": ""}) is None


def test_object_store_paths_go_through_beam_filesystems(dirs):
    """A Beam FileSystem registered for a scheme of its own (here: a prefix over the local disk, as gs:// would
    be over GCS) serves every read; a plain open() anywhere would fail on the scheme."""
    from apache_beam.io.localfilesystem import LocalFileSystem

    prefix = "tracetest://"

    class PrefixedLocalFileSystem(LocalFileSystem):
        @classmethod
        def scheme(cls):
            return "tracetest"

        def join(self, base_path, *paths):
            return prefix + os.path.join(base_path[len(prefix):], *paths)

        def open(self, path, *args, **kwargs):
            return super().open(path[len(prefix):], *args, **kwargs)

        def exists(self, path):
            return super().exists(path[len(prefix):])

        def match(self, patterns, limits=None):  # the curated parts are listed, then read
            from apache_beam.io.filesystem import FileMetadata, MatchResult

            plain = LocalFileSystem(None)  # its match joins paths with its own join, not the prefixing one
            results = plain.match([p[len(prefix):] for p in patterns], limits)
            return [MatchResult(prefix + r.pattern, [FileMetadata(prefix + m.path, m.size_in_bytes)
                                                     for m in r.metadata_list]) for r in results]

    curated, packed, _ = dirs
    row = _packed_manifest(packed)[0]
    local = trace(f"{row['shard']}:0", curated, packed)
    assert trace(f"{row['shard']}:0", prefix + curated, prefix + packed) == local
