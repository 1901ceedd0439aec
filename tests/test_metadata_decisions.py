"""Key uniqueness decided on metadata rows (pipelines/keys.py), and a per-record stage after dedup judged before the
dedup decisions meet the samples (pipelines/curate.py build_pipeline): the same decisions as the grouping of whole
samples made, each record counted once."""
import copy
import glob
import io
import json
import tarfile

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from vlmloom.curation import readers
from vlmloom.demo.records import make_image
from vlmloom.pipelines.keys import UniqueKeys, _decide
from vlmloom.schemas.records import Sample, make_key
from vlmloom.schemas.signals import ORIGIN_SIGNAL, RAW_DIGEST_SIGNAL


def test_shared_key_decisions_by_raw_content_then_origin():
    rows = [("d2", "b.jsonl:2", "K2"), ("d1", "b.jsonl:1", "K1"), ("d1", "a.jsonl:5", "K1")]
    assert readers.shared_key_decisions(rows) == [
        (2, (readers.RENAMED_KEY, "K1", "", "")),  # d1's copy with the smallest origin, renamed: d2 differs
        (1, (readers.DUPLICATE_KEY, "K1", "a.jsonl:5", "d1")),  # its identical copy, naming the kept key
        (0, (readers.RENAMED_KEY, "K2", "", ""))]
    assert readers.shared_key_decisions([("d", "o2", "K"), ("d", "o1", "K")]) == [
        (1, None), (0, (readers.DUPLICATE_KEY, "", "o1", "d"))]  # identical copies only: no rename
    assert readers.shared_key_decisions([("d", "o", "K")]) == [(0, None)]


def test_two_records_of_one_key_and_origin_are_refused():
    with pytest.raises(ValueError, match="same origin"):
        _decide("k", [("d1", "a.tar#x", "K1"), ("d2", "a.tar#x", "K2")])
    assert _decide("k", [("d1", "a.tar#x", "K1")]) == []  # a key alone needs no decision


def _sample(source_id: str, text: str, origin: str) -> Sample:
    sample = Sample(make_key("s", source_id), "s", source_id, text=text)
    sample.signals[ORIGIN_SIGNAL] = origin
    sample.signals[RAW_DIGEST_SIGNAL] = readers.content_digest(sample)
    return sample


def test_unique_keys_on_rows_decides_as_the_grouping_of_samples():
    samples = [_sample("7", "a cat", "b.jsonl:3"), _sample("7", "a dog", "a.jsonl:9"),
               _sample("7", "a cat", "a.jsonl:1"), _sample("8", "a cat", "c.jsonl:1"),
               _sample("9", "a bird", "c.jsonl:2"), _sample("9", "a bird", "c.jsonl:3")]
    by_key: dict[str, list[Sample]] = {}
    for sample in copy.deepcopy(samples):
        by_key.setdefault(sample.key, []).append(sample)
    oracle = [readers.resolve_shared_key(group) for group in by_key.values()]  # the rule on whole samples
    want_kept = sorted((s.key, s.source_id, s.text, s.signals.get("renamed_from", "")) for kept, _ in oracle for s in kept)
    want_rejected = sorted((r.key, r.reason, r.detail) for _, rejected in oracle for r in rejected)
    assert len(want_kept) == 4 and len(want_rejected) == 2
    assert {k for k, _, _, renamed in want_kept if renamed} == {readers.renamed_key(samples[0], samples[0].signals[
        RAW_DIGEST_SIGNAL]), readers.renamed_key(samples[1], samples[1].signals[RAW_DIGEST_SIGNAL])}
    assert "also read from a.jsonl:1, kept as s-" in next(d for k, _, d in want_rejected if k == make_key("s", "7"))

    with TestPipeline() as p:
        out = p | beam.Create(samples) | UniqueKeys()
        assert_that(out["kept"] | "K" >> beam.Map(
            lambda s: (s.key, s.source_id, s.text, s.signals.get("renamed_from", ""))), equal_to(want_kept),
            label="kept")
        assert_that(out["rejected"] | "R" >> beam.Map(lambda r: (r.key, r.reason, r.detail)),
                    equal_to(want_rejected), label="rejected")


def _tar(path, records: dict[str, tuple[dict, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for source_id, (meta, png) in records.items():
            for ext, data in (("json", json.dumps(meta).encode()), ("png", png)):
                info = tarfile.TarInfo(f"{source_id}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_a_duplicate_that_is_not_renderable_is_counted_once_and_lineage_keeps_stage_order(tmp_path):
    """Two OCR records of one image (exact duplicates: an OCR record's dedup content is its image), the one without
    text not renderable: `renderable` judges it before the dedup decisions meet the samples, so it is rejected
    once, by `renderable`; the kept copy's lineage still lists dedup before renderable."""
    from vlmloom.pipelines.curate import curate, load_config

    png = make_image(96, 80, 11).bytes
    _tar(tmp_path / "raw.tar", {"ocr-text": ({"kind": "ocr", "text": "EXIT"}, png),
                                "ocr-image-only": ({"kind": "ocr"}, png),
                                "other": ({"kind": "ocr", "text": "STOP"}, make_image(96, 80, 12).bytes)})
    out = str(tmp_path / "curated")
    config = {"inputs": [{"path": str(tmp_path / "raw.tar")}], "output": out,
              "disable": ["heuristics", "language", "near_dup_image", "near_dup_text"]}
    report = curate(load_config(config), progress=False)
    rejected = [(r["source_id"], r["stage"], r["reason"]) for r in pq.read_table(f"{out}/rejected").to_pylist()]
    assert rejected == [("ocr-image-only", "renderable", "empty_text")]
    funnel = {row["stage"]: (row["in"], row["kept"], row["dropped"]) for row in report["funnel"]}
    assert funnel["exact_dedup"] == (3, 3, {}) and funnel["renderable"] == (3, 2, {"empty_text": 1})
    assert report["accounting"]["balanced"]
    kept = {}
    for shard in sorted(glob.glob(f"{out}/shards/*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    row = json.loads(tar.extractfile(member).read())
                    kept[row["source_id"]] = [e["stage"] for e in row["lineage"]]
    assert sorted(kept) == ["ocr-text", "other"]
    for stages in kept.values():
        assert stages[-2:] == ["exact_dedup", "renderable"], stages
