"""The demo corpus generator: determinism, expectations that match the files, and planted problems that are real."""
from __future__ import annotations

import io
import itertools
import json
import os
import tarfile
from collections import defaultdict
from pathlib import Path

import imagehash
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image, UnidentifiedImageError

from vlmloom.demo.corpus import (
    BAD_RECORD_REASONS,
    BENCHMARK_COLUMNS,
    MANIFEST_COLUMNS,
    UNSAFE_SOURCE_ID,
    DemoCorpusConfig,
    build_demo_corpus,
)

CONFIG = DemoCorpusConfig(num_samples=150, seed=3, samples_per_tar=50)
IMAGE_EXTS = ("jpg", "png")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo") / "corpus"
    expected = build_demo_corpus(str(out), CONFIG)
    return out, expected


def _split(name: str) -> tuple[str, str]:
    """webdataset's rule: the key is everything up to the first dot of the last path component."""
    directory, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext


def _records(out: Path) -> dict[str, dict[str, bytes]]:
    records: dict[str, dict[str, bytes]] = defaultdict(dict)
    for tar_path in sorted((out / "tars").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                key, ext = _split(member.name)
                records[key][ext] = tar.extractfile(member).read()
    return dict(records)


def _image(record: dict[str, bytes]) -> bytes:
    return next(record[ext] for ext in IMAGE_EXTS if ext in record)


def _phash(data: bytes) -> imagehash.ImageHash:
    with Image.open(io.BytesIO(data)) as image:
        return imagehash.phash(image.convert("RGB"))


def test_same_config_gives_byte_identical_output(corpus, tmp_path):
    out, expected = corpus
    again = build_demo_corpus(str(tmp_path / "again"), CONFIG)
    assert again == expected
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*") if p.is_file())
    for rel in files:
        assert (out / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes(), rel
    assert json.loads((out / "expected.json").read_text(encoding="utf-8")) == expected


def test_refuses_bad_config_and_non_empty_output(tmp_path):
    with pytest.raises(ValueError, match="num_samples"):
        DemoCorpusConfig(num_samples=10)
    with pytest.raises(ValueError, match="samples_per_tar"):
        DemoCorpusConfig(samples_per_tar=0)
    (tmp_path / "x").write_text("keep me")
    with pytest.raises(FileExistsError):
        build_demo_corpus(str(tmp_path), CONFIG)


def test_expected_counts_match_the_tars(corpus):
    out, expected = corpus
    records = _records(out)
    assert len(records) == expected["total_records"]
    planted = (len(expected["exact_duplicates"]) + len(expected["near_duplicates"]) + 2 * len(expected["near_duplicate_texts"])
               + len(expected["benchmark_plants"]) + len(expected["bad_records"]))
    assert expected["total_records"] == CONFIG.num_samples + planted
    assert len(expected["clean_ids"]) == CONFIG.num_samples
    kinds: dict[str, int] = defaultdict(int)
    for record in records.values():
        kinds[json.loads(record["json"])["kind"]] += 1
    assert dict(kinds) == expected["kinds"]
    assert set(expected["kinds"]) == {"caption", "ocr", "gui", "qa", "interleaved"}
    assert sum(expected["kinds"].values()) == expected["total_records"]
    languages = set(expected["languages"].values())
    assert languages == {"en", "de", "fr", "es", "zh", "ja", "ru"}
    assert sum(lang == "en" for lang in expected["languages"].values()) > len(expected["languages"]) / 2

    tars = sorted((out / "tars").glob("*.tar"))
    assert [t.name for t in tars] == [f"{i:05d}.tar" for i in range(expected["num_shards"])]
    assert expected["num_shards"] == -(-expected["total_records"] // CONFIG.samples_per_tar)
    for tar_path in tars:
        with tarfile.open(tar_path) as tar:
            members = tar.getmembers()
        names = [m.name for m in members]
        assert names == sorted(names)
        assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.isfile() for m in members)
        keys = [_split(n)[0] for n in names]
        groups = [k for k, _ in itertools.groupby(keys)]
        assert len(groups) == len(set(groups)) <= CONFIG.samples_per_tar  # each key's members are contiguous
        for key in groups:
            assert {_split(n)[1] for n in names if _split(n)[0] == key} >= {"txt", "json"}


def test_every_bad_record_is_present_with_its_defect(corpus):
    out, expected = corpus
    records = _records(out)
    bad = expected["bad_records"]
    assert sorted(bad.values()) == sorted(BAD_RECORD_REASONS)
    by_reason = {reason: records[key] for key, reason in bad.items()}
    assert bad[UNSAFE_SOURCE_ID] == "unsafe_member_path"

    assert _image(by_reason["empty_bytes"]) == b""
    with pytest.raises(OSError, match="truncated"):
        with Image.open(io.BytesIO(_image(by_reason["truncated_image"]))) as image:
            image.load()
    with pytest.raises(UnidentifiedImageError):
        Image.open(io.BytesIO(_image(by_reason["unidentified_image"])))
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(_image(by_reason["decompression_bomb"])))
    assert len(_image(by_reason["decompression_bomb"])) < 1000
    with Image.open(io.BytesIO(_image(by_reason["aspect_ratio_too_large"]))) as image:
        assert image.size == (300, 1)
    with pytest.raises(UnicodeDecodeError):
        by_reason["text_not_utf8"]["txt"].decode("utf-8")
    assert by_reason["caption_empty"]["txt"] == b""
    with Image.open(io.BytesIO(_image(by_reason["near_solid_image"]))) as image:
        extrema = image.convert("RGB").getextrema()
        assert all(hi - lo <= 2 for lo, hi in extrema) and min(image.size) >= 128
    with Image.open(io.BytesIO(_image(by_reason["image_too_small"]))) as image:
        assert image.size == (20, 20)
    # every other defect leaves the caption readable, so each record fails for exactly one reason
    for reason, record in by_reason.items():
        if reason not in ("text_not_utf8", "caption_empty"):
            assert len(record["txt"].decode("utf-8").split()) >= 8, reason

    with tarfile.open(out / "tars" / "00000.tar") as tar:
        unsafe = [m.name for m in tar.getmembers() if m.name.startswith("../")]
    assert sorted(unsafe) == ["../evil.jpg", "../evil.json", "../evil.txt"]


def test_good_records_read_with_webdataset(corpus):
    out, expected = corpus
    bad = set(expected["bad_records"])
    urls = [str(p) for p in sorted((out / "tars").glob("*.tar"))]
    seen = set()
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        key = sample["__key__"]
        seen.add(key)
        if key in bad:
            continue
        meta = json.loads(sample["json"])
        caption = sample["txt"].decode("utf-8")
        assert meta["key"] == key and meta["caption"] == caption
        ext = "jpg" if "jpg" in sample else "png"
        with Image.open(io.BytesIO(sample[ext])) as image:
            image.load()
            width, height = image.size
        assert (meta["width"], meta["height"]) == (width, height)
        assert 1 / 3 <= width / height <= 3 and min(width, height) >= 160
        assert 1 / 2.2 <= width / height <= 2.2 or meta["kind"] in ("ocr", "gui")
        kind = meta["kind"]
        if kind == "ocr":
            assert caption == "\n".join(line["text"] for line in meta["lines"])
            for line in meta["lines"]:
                x1, y1, x2, y2 = line["box"]
                assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height and y2 - y1 >= 18
        elif kind == "gui":
            assert len(meta["elements"]) >= 2 and {e["type"] for e in meta["elements"]} >= {"button", "text_field"}
            for element in meta["elements"]:
                x1, y1, x2, y2 = element["box"]
                assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height and element["label"]
        elif kind == "qa":
            user, assistant = meta["messages"]
            assert user == {"role": "user", "content": f"<image>{meta['question']}"}
            assert assistant["role"] == "assistant" and assistant["content"].startswith("<think>")
            assert f"<|begin_of_box|>{meta['answer']}<|end_of_box|></answer>" in assistant["content"]
            assert meta["domain"] in ("math", "chart") and caption == meta["question"]
        elif kind == "interleaved":
            assert "1.jpg" in sample
            assert [s["image_index"] for s in meta["segments"] if s["type"] == "image"] == [0, 1]
        else:
            assert kind == "caption"
            if "chart" in meta:
                assert all(f"{label} {value}" in caption for label, value in zip(meta["chart"]["labels"], meta["chart"]["values"]))
    assert len(seen) == expected["total_records"]


def test_scene_captions_name_what_was_drawn(corpus):
    out, expected = corpus
    records = _records(out)
    english = [k for k, lang in expected["languages"].items() if lang == "en"]
    assert english
    for key in english:
        caption = records[key]["txt"].decode("utf-8")
        meta = json.loads(records[key]["json"])
        assert 8 <= len(caption.split()) <= 25, caption
        named = [noun for noun in meta["objects"] if noun in caption]
        assert named, caption
    for key, lang in expected["languages"].items():
        caption = records[key]["txt"].decode("utf-8")
        assert caption and (lang in ("zh", "ja") or 8 <= len(caption.split()) <= 25), (lang, caption)


def test_manifest_rows_copy_tar_records(corpus):
    out, expected = corpus
    table = pq.read_table(out / "manifest.parquet")
    assert table.schema.equals(MANIFEST_COLUMNS)
    rows = table.to_pylist()
    assert len(rows) == expected["manifest_records"] == CONFIG.num_samples // 10
    assert [r["id"] for r in rows] == expected["manifest_ids"]
    assert set(expected["manifest_ids"]) <= set(expected["clean_ids"])
    records = _records(out)
    with_path = [r for r in rows if r["image_path"]]
    assert len(with_path) == len(rows) // 2
    for row in rows:
        assert (row["image_bytes"] is None) == (row["image_path"] is not None)
        data = row["image_bytes"] if row["image_bytes"] is not None else (out / row["image_path"]).read_bytes()
        if row["image_path"]:
            assert row["image_path"].startswith("images/") and not os.path.isabs(row["image_path"])
        record = records[row["id"]]
        assert data == _image(record)
        assert row["caption"] == record["txt"].decode("utf-8")
        assert row["kind"] == json.loads(record["json"])["kind"] == json.loads(row["meta"])["kind"]


def test_duplicates_are_exact_and_near_duplicates_are_close(corpus):
    out, expected = corpus
    records = _records(out)
    assert len(expected["exact_duplicates"]) >= 3
    for orig, dup in expected["exact_duplicates"]:
        assert orig != dup and _image(records[orig]) == _image(records[dup])

    hows = [how for _, _, how in expected["near_duplicates"]]
    assert set(hows) == {"resize", "reencode", "crop", "brightness"}
    variants = {variant for _, variant, _ in expected["near_duplicates"]}
    chains = [(p, v) for p, v, _ in expected["near_duplicates"] if p in variants]
    assert len(chains) == 2
    for parent, variant, how in expected["near_duplicates"]:
        assert _image(records[parent]) != _image(records[variant])
        assert _phash(_image(records[parent])) - _phash(_image(records[variant])) <= 10, (parent, variant, how)
    for parent, variant in chains:  # transitivity: the chain's end is still near its root
        root = next(p for p, v, _ in expected["near_duplicates"] if v == parent)
        assert _phash(_image(records[root])) - _phash(_image(records[variant])) <= 16

    # distinct clean images are far apart, so a pHash threshold of 10 finds only the planted pairs
    hashes = {k: _phash(_image(records[k])) for k in expected["clean_ids"]
              if json.loads(records[k]["json"])["kind"] != "interleaved"}
    for a, b in itertools.combinations(sorted(hashes), 2):
        assert hashes[a] - hashes[b] > 10, (a, b)


def _shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    words = text.lower().split()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def test_near_duplicate_texts_differ_by_one_word_and_no_others_are_close(corpus):
    out, expected = corpus
    records = _records(out)
    pairs = expected["near_duplicate_texts"]
    assert len(pairs) >= 2
    for a, b in pairs:
        wa, wb = (records[k]["txt"].decode("utf-8").split() for k in (a, b))
        assert len(wa) == len(wb) >= 60 and sum(x != y for x, y in zip(wa, wb)) == 1
        sa, sb = _shingles(" ".join(wa)), _shingles(" ".join(wb))
        assert len(sa & sb) / len(sa | sb) >= 0.8
        assert _image(records[a]) != _image(records[b])
    planted = {frozenset(p) for p in pairs}
    for orig, dup in expected["exact_duplicates"]:
        planted.add(frozenset((orig, dup)))
    for parent, variant, _ in expected["near_duplicates"]:
        planted.add(frozenset((parent, variant)))
    texts = {k: _shingles(r["txt"].decode("utf-8")) for k, r in records.items()
             if k not in expected["bad_records"] and len(r["txt"].decode("utf-8").split()) >= 10}
    close = []
    for a, b in itertools.combinations(sorted(texts), 2):
        if texts[a] and texts[b] and frozenset((a, b)) not in planted:
            jaccard = len(texts[a] & texts[b]) / len(texts[a] | texts[b])
            if jaccard >= 0.7:
                close.append((a, b, jaccard))
    assert close == []


def test_benchmark_items_and_plants(corpus):
    out, expected = corpus
    table = pq.read_table(out / "benchmark" / "items.parquet")
    assert table.schema.equals(BENCHMARK_COLUMNS)
    items = {r["item_id"]: r for r in table.to_pylist()}
    assert len(items) == expected["benchmark_items"] == 30
    assert all(len(r["question"].split()) >= 13 and r["answer"] for r in items.values())
    records = _records(out)
    plants = expected["benchmark_plants"]
    assert sorted(p["how"] for p in plants) == ["image", "near_image", "text", "text", "text"]
    assert len({p["item_id"] for p in plants}) == 5
    for plant in plants:
        item, record = items[plant["item_id"]], records[plant["source_id"]]
        if plant["how"] == "image":
            assert _image(record) == item["image_bytes"]
        elif plant["how"] == "near_image":
            assert _image(record) != item["image_bytes"]
            assert _phash(_image(record)) - _phash(item["image_bytes"]) <= 10
        else:
            assert item["question"] in record["txt"].decode("utf-8")

    def grams(text: str) -> set[tuple[str, ...]]:
        words = text.lower().split()
        return {tuple(words[i:i + 13]) for i in range(len(words) - 12)}

    question_grams = {item_id: grams(item["question"]) for item_id, item in items.items()}
    text_plants = {p["source_id"]: p["item_id"] for p in plants if p["how"] == "text"}
    for key, record in records.items():
        if key in expected["bad_records"]:
            continue
        caption_grams = grams(record["txt"].decode("utf-8"))
        hits = {item_id for item_id, g in question_grams.items() if g & caption_grams}
        assert hits == ({text_plants[key]} if key in text_plants else set()), key
    # benchmark images are far from every corpus image except the two planted copies
    image_plants = {p["source_id"] for p in plants if p["how"] != "text"}
    bench_hashes = [_phash(item["image_bytes"]) for item in items.values()]
    for key in expected["clean_ids"]:
        if key not in image_plants:
            h = _phash(_image(records[key]))
            assert min(h - b for b in bench_hashes) > 10, key
