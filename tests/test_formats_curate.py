"""`curate` over a mix of published input shapes (webdataset shards, an HF dataset saved to disk, LLaVA JSON with
three questions per image id, COCO, MMC4, a folder of JSONL manifests, an image folder with stray files): every
format sniffed by `auto`, nothing dropped without a reason or a count, the funnel balanced, and the same bytes on
every runner."""
import gzip
import hashlib
import io
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from beam_runners import RUNNERS
from vlmloom.demo.media import moving_shape_video
from vlmloom.demo.pdfs import pdf_bytes
from vlmloom.pipelines.curate import curate, load_config
from vlmloom.pipelines.sources import InputConfig, check_every_input_read
from vlmloom.schemas.config import ConfigError

# This test is about reading: the text judges are off (short made-up captions). Dedup stays on and keeps the three
# LLaVA questions about one image: a qa record's exact-dedup content is its image and its turns, and the pHash
# stage compares only kinds whose record is their image (schemas.kinds `image_is_content`).
DISABLED = ["heuristics", "language"]


def jpeg(seed: int, size=(64, 48)) -> bytes:
    rng = np.random.default_rng(seed)
    arr = (rng.random((size[1] // 8, size[0] // 8, 3)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(arr).resize(size, Image.NEAREST).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def build_mix(root) -> list[dict]:
    import datasets
    import webdataset as wds

    os.makedirs(root / "wds")
    with wds.TarWriter(str(root / "wds" / "shard-000000.tar"), encoder=False) as sink:
        sink.write({"__key__": "w0", "jpg": jpeg(1), "txt.gz": gzip.compress(b"a noisy red pattern"), "cls": b"4",
                    "npy": b"\x93NUMPY"})
        sink.write({"__key__": "w1", "cls": b"5"})  # a label alone: empty_record
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string"),
                                  "label": datasets.Value("int64")})
    datasets.Dataset.from_dict({"image": [{"bytes": jpeg(2), "path": None}, {"bytes": jpeg(3), "path": None}],
                                "text": ["first hf picture", "second hf picture"], "label": [0, 1]},
                               features=features).save_to_disk(str(root / "hf"))
    os.makedirs(root / "llava" / "images")
    (root / "llava" / "images" / "000000033471.jpg").write_bytes(jpeg(4))
    (root / "llava" / "llava.json").write_text(json.dumps([
        {"id": "000000033471", "image": "images/000000033471.jpg",
         "conversations": [{"from": "human", "value": f"<image>\nQuestion {n}?"}, {"from": "gpt", "value": f"A{n}."}]}
        for n in range(3)]))
    os.makedirs(root / "coco" / "annotations")
    os.makedirs(root / "coco" / "val2017")
    (root / "coco" / "val2017" / "1.jpg").write_bytes(jpeg(5, (100, 50)))
    (root / "coco" / "annotations" / "captions_val2017.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "1.jpg", "width": 100, "height": 50}],
        "annotations": [{"id": 2, "image_id": 1, "caption": "a small photo"}]}))
    (root / "coco" / "annotations" / "instances_val2017.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "1.jpg", "width": 100, "height": 50}],
        "categories": [{"id": 3, "name": "kite"}],
        "annotations": [{"id": 4, "image_id": 1, "bbox": [10, 5, 50, 25], "category_id": 3}]}))
    os.makedirs(root / "mmc4" / "images")
    (root / "mmc4" / "images" / "abc.jpg").write_bytes(jpeg(6))
    (root / "mmc4" / "docs_shard_0_v2.jsonl").write_text(json.dumps({
        "text_list": ["An opening sentence.", "A matched sentence."],
        "image_info": [{"image_name": "abc.jpg", "raw_url": "https://x/abc.jpg", "matched_text_index": 1,
                        "matched_sim": 0.3}], "url": "https://doc"}) + "\n")
    os.makedirs(root / "rows")
    for n in range(2):
        (root / "rows" / f"part-{n}.jsonl").write_text(
            json.dumps({"id": f"r{n}", "caption": f"text only question {n}?", "answer": str(n), "kind": "qa"}) + "\n")
    os.makedirs(root / "pics")
    (root / "pics" / "p.jpg").write_bytes(jpeg(7))
    (root / "pics" / "p.txt").write_text("a picture with a sidecar")
    # a clip and a PDF beside the picture: the folder reader makes a video record and an ocr record per page
    (root / "pics" / "clip.mp4").write_bytes(moving_shape_video("disc", "red", "left to right", 12, 8, 64))
    (root / "pics" / "clip.txt").write_text("a red disc moves from left to right")
    (root / "pics" / "scan.pdf").write_bytes(pdf_bytes([["A scanned page", "with two lines"]]))
    (root / "pics" / "README.md").write_text("not a record")
    (root / "pics" / "notes.bin").write_bytes(b"\0\1")
    return [{"path": str(root / "wds")}, {"path": str(root / "hf")},
            {"path": str(root / "llava" / "llava.json"), "image_root": str(root / "llava")},
            {"path": str(root / "coco" / "annotations"), "image_root": str(root / "coco" / "val2017")},
            {"path": str(root / "mmc4"), "image_root": str(root / "mmc4" / "images")},
            {"path": str(root / "rows")}, {"path": str(root / "pics")}]


@pytest.fixture(scope="module")
def mix(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    inputs = build_mix(root)
    out = root / "out"
    report = curate(load_config({"inputs": inputs, "output": str(out), "disable": DISABLED}), RUNNERS["in_process"])
    return root, inputs, out, report


def test_every_format_is_read_and_nothing_is_silent(mix):
    _, _, out, report = mix
    kept = pq.read_table(out / "manifest").to_pylist()
    rejected = pq.read_table(out / "rejected").to_pylist()
    assert report["accounting"]["balanced"] and report["accounting"]["input_records"] == 14
    assert sorted((r["source"], r["source_id"], r["kind"]) for r in kept) == [
        ("annotations", "1", "caption"), ("hf", "hf/data-00000-of-00001.arrow:row0", "caption"),
        ("hf", "hf/data-00000-of-00001.arrow:row1", "caption"),
        ("llava", "000000033471", "qa"), ("llava", "000000033471", "qa"), ("llava", "000000033471", "qa"),
        ("mmc4", "docs_shard_0_v2.jsonl:1", "interleaved"), ("pics", "clip", "video"), ("pics", "p", "caption"),
        ("pics", "scan.pdf#page=1", "ocr"),
        ("rows", "r0", "qa"), ("rows", "r1", "qa"), ("wds", "w0", "caption")]
    assert [(r["source"], r["source_id"], r["reason"]) for r in rejected] == [("wds", "w1", "empty_record")]
    assert len({r["key"] for r in kept}) == len(kept)  # three LLaVA questions: three keys
    read = {name: entry["read"] for name, entry in report["by_source"].items()}
    assert read["wds"] == {"ignored_member:npy": 1, "read_file:tar": 1, "records": 2}
    assert read["pics"] == {"ignored_file:bin": 1, "ignored_file:md": 1, "records": 3}
    assert read["llava"] == {"read_file:json": 1, "records": 3, "renamed_key": 3}
    assert read["rows"] == {"read_file:jsonl": 2, "records": 2}
    assert read["hf"] == {"read_file:arrow": 1, "records": 2}
    assert read["annotations"] == {"read_file:json": 2, "records": 1}
    html = (out / "report.html").read_text(encoding="utf-8")  # the same counts, per source, on the page
    assert "ignored_member:npy=1, read_file:tar=1, records=2" in html
    assert "ignored_file:bin=1, ignored_file:md=1, records=3" in html


def test_curated_records_keep_what_their_format_said(mix):
    import tarfile

    _, _, out, _ = mix
    kept = {(r["source"], r["source_id"]): r for r in pq.read_table(out / "manifest").to_pylist()}

    def record(source, source_id):
        row = kept[(source, source_id)]
        with tarfile.open(out / "shards" / row["shard"]) as tar:
            return json.loads(tar.extractfile(row["key"] + ".json").read())

    wds = record("wds", "w0")
    assert (wds["text"], json.loads(wds["meta"])) == ("a noisy red pattern", {"cls": "4"})
    coco = record("annotations", "1")
    assert coco["annotations"]["grounding"] == [{"phrase": "kite", "box": [100, 100, 600, 600], "source": "input"}]
    mmc4 = record("mmc4", "docs_shard_0_v2.jsonl:1")
    assert [s["type"] for s in mmc4["segments"]] == ["text", "image", "text"]
    assert json.loads(record("hf", "hf/data-00000-of-00001.arrow:row1")["meta"]) == {"label": 1}


def test_an_input_with_nothing_to_read_fails_naming_it(tmp_path):
    """Before the job (a listing with nothing the format reads) and after it (no record came out of an input,
    from its counters; the whole job path is tests/test_curate.py's empty tar)."""
    (tmp_path / "stray").mkdir()
    (tmp_path / "stray" / "x.jpg").write_bytes(jpeg(1))
    with pytest.raises(ConfigError, match=r"stray.*nothing to read"):
        curate(load_config({"inputs": [{"path": str(tmp_path / "stray"), "format": "webdataset"}],
                            "output": str(tmp_path / "out")}))
    inputs = [InputConfig(path=str(tmp_path / "a")), InputConfig(path=str(tmp_path / "empty"))]
    check_every_input_read(inputs[:1], {"inputs/a/records": 3, "inputs/empty/read_file:jsonl": 2})
    with pytest.raises(ConfigError, match=r"empty.*yielded no records \({'read_file:jsonl': 2, 'records': 0}\)"):
        check_every_input_read(inputs, {"inputs/a/records": 3, "inputs/empty/read_file:jsonl": 2,
                                        "inputs/empty/records": 0})
    check_every_input_read(inputs, {})  # a runner without counters: nothing to check against


def _digests(out) -> dict[str, str]:
    found = {}
    for sub in ("shards", "manifest", "rejected"):
        for name in sorted(os.listdir(out / sub)):
            found[f"{sub}/{name}"] = hashlib.sha256((out / sub / name).read_bytes()).hexdigest()
    return found


@pytest.mark.slow
def test_the_mix_is_byte_identical_on_every_runner(mix):
    root, inputs, out, _ = mix
    want = _digests(out)
    for name in ("multi_processing", "portable_loopback"):
        other = root / f"out_{name}"
        curate(load_config({"inputs": inputs, "output": str(other), "disable": DISABLED}), RUNNERS[name])
        assert _digests(other) == want, name
