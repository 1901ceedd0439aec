"""Input formats (curation/formats), each built here byte for byte in its publisher's shape — webdataset's own
TarWriter, HF `datasets` (`to_parquet`, `save_to_disk`), LAION/img2dataset URL tables, LLaVA/ShareGPT JSON, COCO
annotation files, MMC4 JSONL, OBELICS Parquet — read without Beam into Samples with exact kinds, texts, images,
messages, segments, annotations, meta and per-source counts."""
import collections
import gzip
import io
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vlmloom.curation import formats
from vlmloom.curation.formats import ReadContext, get_format, read_row_file
from vlmloom.schemas.records import Rejection, Sample


def png(color, size=(8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def read(fmt, unit, image_root="", fields=None, kind="caption"):
    """(samples, rejections, per-source counts) of one unit read by format `fmt` (None: sniffed rows)."""
    counts = collections.Counter()
    ctx = ReadContext(source="src", kind=kind, fields=fields or {}, image_root=image_root, open=lambda p: open(p, "rb"),
                      local_file=os.path.realpath, count=lambda code: counts.update([code]))
    items = list(read_row_file(None, unit, ctx) if fmt is None else get_format(fmt).read(unit, ctx))
    samples = [i for i in items if isinstance(i, Sample)]
    rejections = [i for i in items if isinstance(i, Rejection)]
    assert len(samples) + len(rejections) == len(items)
    return samples, rejections, counts


# --- webdataset ---------------------------------------------------------------------------------------------------

def test_webdataset_with_any_members(tmp_path):
    import webdataset as wds

    path = str(tmp_path / "shard-000000.tar")
    with wds.TarWriter(path, encoder=False) as sink:
        sink.write({"__key__": "s0", "jpg": png("red"), "txt.gz": gzip.compress("a red card".encode()),
                    "cls": b"7", "json": json.dumps({"source": "web"}).encode(), "meta.json": b'{"w": 8}',
                    "npy": b"\x93NUMPY...", "seg.png": png("blue")})
        sink.write({"__key__": "s1", "txt.gz": gzip.compress("a document of text only".encode()),
                    "json": b'{"kind": "interleaved"}'})
        sink.write({"__key__": "s2", "cls": b"3", "npy": b"\x93NUMPY"})  # nothing a stage reads: empty_record
        sink.write({"__key__": "s3", "jpg": png("green"), "txt.gz": b"not gzip"})
    samples, rejections, counts = read("webdataset", path)
    by_id = {s.source_id: s for s in samples}
    s0 = by_id["s0"]
    assert (s0.kind, s0.text, len(s0.images)) == ("caption", "a red card", 1)
    assert s0.images[0].bytes == png("red") and s0.images[0].uri.endswith("shard-000000.tar#s0.jpg")
    assert s0.meta == {"source": "web", "cls": "7", "meta.json": {"w": 8}}
    assert (by_id["s1"].kind, by_id["s1"].text, by_id["s1"].images) == ("interleaved", "a document of text only", [])
    assert {(r.source_id, r.reason) for r in rejections} == {("s2", "empty_record"), ("s3", "corrupt_member")}
    assert counts == {"ignored_member:npy": 2, "ignored_member:seg.png": 1}
    assert len({s.signals["raw_sha256"] for s in samples}) == 2


def test_webdataset_fields_name_the_members(tmp_path):
    import webdataset as wds

    path = str(tmp_path / "x.tgz")
    with wds.TarWriter(path, encoder=False, compress=True) as sink:
        sink.write({"__key__": "k", "png": png("red"), "jpg": png("blue"), "caption.txt": b"the caption",
                    "txt": b"alt text"})
    (sample,), _, counts = read("webdataset", path, fields={"text": "caption.txt", "image": "png"})
    assert (sample.text, [i.bytes for i in sample.images]) == ("the caption", [png("red")])
    assert sample.meta == {"txt": "alt text"} and counts == {"ignored_member:jpg": 1}


# --- Hugging Face datasets ------------------------------------------------------------------------------------------

def _hf_dataset():
    import datasets

    features = datasets.Features({"image": datasets.Image(), "extra": datasets.Sequence(datasets.Image()),
                                  "text": datasets.Value("string"), "label": datasets.Value("int32")})
    return datasets.Dataset.from_dict(
        {"image": [{"bytes": png("red"), "path": "r.png"}, {"bytes": png("blue"), "path": None}],
         "extra": [[{"bytes": png("green"), "path": None}], []],
         "text": ["a red square", "a blue square"], "label": [1, 2]}, features=features)


def test_hf_parquet_and_save_to_disk(tmp_path):
    ds = _hf_dataset()
    ds.to_parquet(str(tmp_path / "train-00000-of-00001.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    assert b"huggingface" in pq.read_schema(tmp_path / "train-00000-of-00001.parquet").metadata
    for unit in (str(tmp_path / "train-00000-of-00001.parquet"), str(tmp_path / "saved/data-00000-of-00001.arrow")):
        samples, rejections, counts = read(None, unit)  # sniffed: the image structs say hf
        assert not rejections
        assert [(s.kind, s.text, [i.bytes for i in s.images], s.meta) for s in samples] == [
            ("caption", "a red square", [png("red")], {"label": 1}),
            ("caption", "a blue square", [png("blue")], {"label": 2})]
        assert counts == {"ignored_field:extra": 2}  # an image column beside `image` is counted, not read
    samples, _, _ = read("hf", str(tmp_path / "train-00000-of-00001.parquet"), fields={"images": "extra"})
    assert [[i.bytes for i in s.images] for s in samples] == [[png("red"), png("green")], [png("blue")]]


def test_hf_conversation_rows_with_an_image_sequence(tmp_path):
    import datasets

    features = datasets.Features({"images": datasets.Sequence(datasets.Image()),
                                  "messages": [{"role": datasets.Value("string"),
                                                "content": datasets.Value("string")}]})
    datasets.Dataset.from_dict({"images": [[{"bytes": png("red"), "path": None}, {"bytes": png("blue"), "path": None}]],
                                "messages": [[{"role": "user", "content": "<image><image>Which is red?"},
                                              {"role": "assistant", "content": "The first."}]]},
                               features=features).to_parquet(str(tmp_path / "chat.parquet"))
    (sample,), _, _ = read(None, str(tmp_path / "chat.parquet"))
    assert sample.kind == "qa" and [i.bytes for i in sample.images] == [png("red"), png("blue")]
    assert [(m.role, m.content) for m in sample.messages] == [("user", "<image><image>Which is red?"),
                                                             ("assistant", "The first.")]


# --- URL lists ------------------------------------------------------------------------------------------------------

def test_laion_parquet_and_img2dataset_csv(tmp_path):
    pq.write_table(pa.table({"URL": ["https://example.com/a.jpg", "ftp://x/b.jpg", None],
                             "TEXT": ["a cat", "a dog", "no url"], "WIDTH": [640, 480, 1], "HEIGHT": [480, 360, 1],
                             "similarity": [0.31, 0.29, 0.1], "punsafe": [0.01, 0.2, 0.0]}),
                   tmp_path / "part-00000.parquet")
    samples, rejections, _ = read(None, str(tmp_path / "part-00000.parquet"))
    (s,) = samples
    assert (s.kind, s.text, s.source_id) == ("caption", "a cat", "part-00000.parquet:row0")
    assert (s.images[0].uri, s.images[0].bytes, s.images[0].span) == ("https://example.com/a.jpg", None, None)
    assert s.meta == {"WIDTH": 640, "HEIGHT": 480, "similarity": 0.31, "punsafe": 0.01}
    assert [r.reason for r in rejections] == ["invalid_url", "missing_url"]
    (tmp_path / "list.tsv").write_text("url\tcaption\tkey\nhttp://h/1.png\tone\tk1\nhttp://h/2.png\ttwo\tk2\n")
    samples, _, _ = read("urls", str(tmp_path / "list.tsv"))
    assert [(s.source_id, s.text, s.images[0].uri) for s in samples] == [("k1", "one", "http://h/1.png"),
                                                                         ("k2", "two", "http://h/2.png")]


# --- conversations --------------------------------------------------------------------------------------------------

def test_llava_json_list_with_three_questions_per_image(tmp_path):
    images = tmp_path / "coco" / "train2017"
    images.mkdir(parents=True)
    (images / "000000033471.jpg").write_bytes(png("red"))
    rows = [{"id": "000000033471", "image": "coco/train2017/000000033471.jpg",
             "conversations": [{"from": "human", "value": f"<image>\nQuestion {n}?"},
                               {"from": "gpt", "value": f"Answer {n}."}]} for n in range(3)]
    rows.append({"id": "text-only", "conversations": [{"from": "system", "value": "Be brief."},
                                                      {"from": "human", "value": "Hi"},
                                                      {"from": "gpt", "value": "Hello"}],
                 "model": "v1"})
    rows.append({"id": "bad", "conversations": [{"from": "robot", "value": "?"}]})
    rows.append({"id": "escape", "image": "../outside.jpg", "conversations": [{"from": "human", "value": "x"}]})
    (tmp_path / "llava_instruct.json").write_text(json.dumps(rows))
    samples, rejections, _ = read(None, str(tmp_path / "llava_instruct.json"), image_root=str(tmp_path))
    assert [s.source_id for s in samples] == ["000000033471"] * 3 + ["text-only"]
    assert all(s.kind == "qa" for s in samples)
    assert [(m.role, m.content) for m in samples[1].messages] == [("user", "<image>\nQuestion 1?"),
                                                                 ("assistant", "Answer 1.")]
    assert samples[0].images[0].bytes == png("red") and samples[0].images[0].span[0].endswith("000000033471.jpg")
    assert len({s.signals["raw_sha256"] for s in samples[:3]}) == 3  # same id, different raw records
    assert [m.role for m in samples[3].messages] == ["system", "user", "assistant"]
    assert samples[3].meta == {"model": "v1"}
    assert {(r.source_id, r.reason) for r in rejections} == {("bad", "unknown_role"), ("escape", "unsafe_image_path")}


def test_sharegpt_jsonl_openai_messages_and_alpaca_rows(tmp_path):
    (tmp_path / "a.png").write_bytes(png("blue"))
    lines = [{"id": 1, "images": ["a.png"], "messages": [
                 {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]},
                 {"role": "assistant", "content": "Blue."}]},
             {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
             {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey"}], "id": "g1",
              "image": "https://img.example/g1.png"}]
    (tmp_path / "chat.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    samples, rejections, _ = read("sharegpt", str(tmp_path / "chat.jsonl"))
    assert not rejections
    assert [(s.source_id, [(m.role, m.content) for m in s.messages], len(s.images)) for s in samples] == [
        ("1", [("user", "<image>\nColour?"), ("assistant", "Blue.")], 1),
        ("chat.jsonl:2", [("user", "Add the numbers.\n\n2 and 3"), ("assistant", "5")], 0),
        ("g1", [("user", "Hi"), ("assistant", "Hey")], 1)]
    assert (samples[2].images[0].uri, samples[2].images[0].bytes) == ("https://img.example/g1.png", None)


# --- COCO -----------------------------------------------------------------------------------------------------------

def test_coco_captions_and_instances(tmp_path):
    (tmp_path / "val2017").mkdir()
    (tmp_path / "annotations").mkdir()
    (tmp_path / "val2017" / "000000000139.jpg").write_bytes(png("red", (640, 426)))
    (tmp_path / "val2017" / "000000000285.jpg").write_bytes(png("blue", (640, 480)))
    images = [{"license": 2, "file_name": "000000000139.jpg", "coco_url": "http://images.cocodataset.org/x.jpg",
               "height": 426, "width": 640, "date_captured": "2013-11-21 01:34:01", "id": 139},
              {"license": 4, "file_name": "000000000285.jpg", "height": 480, "width": 640, "id": 285}]
    info = {"description": "COCO 2017 Dataset", "version": "1.0"}
    captions = {"info": info, "licenses": [], "images": images, "annotations": [
        {"image_id": 139, "id": 720, "caption": "A room with chairs."},
        {"image_id": 139, "id": 37, "caption": "A living room."}]}
    instances = {"info": info, "licenses": [], "images": images, "categories": [
        {"supercategory": "furniture", "id": 62, "name": "chair"},
        {"supercategory": "animal", "id": 23, "name": "bear"}],
        "annotations": [
            {"segmentation": [[1, 2, 3]], "area": 531.8, "iscrowd": 0, "image_id": 139, "bbox": [64, 42.6, 320, 213],
             "category_id": 62, "id": 10},
            {"segmentation": [[1]], "area": 1.0, "iscrowd": 0, "image_id": 285, "bbox": [0, 0, 640, 480],
             "category_id": 23, "id": 11},
            {"segmentation": [[1]], "area": 1.0, "iscrowd": 0, "image_id": 999, "bbox": [0, 0, 1, 1],
             "category_id": 23, "id": 12}]}
    for name, data in (("captions_val2017.json", captions), ("instances_val2017.json", instances)):
        (tmp_path / "annotations" / name).write_text(json.dumps(data))
    unit = [str(tmp_path / "annotations" / n) for n in ("captions_val2017.json", "instances_val2017.json")]
    samples, rejections, counts = read("coco", unit, image_root=str(tmp_path / "val2017"))
    assert not rejections
    a, b = samples
    assert (a.source_id, a.kind, a.text, a.meta["captions"]) == ("139", "caption", "A living room.",
                                                                 ["A living room.", "A room with chairs."])
    assert [(g.phrase, g.box, g.source) for g in a.annotations.grounding] == [("chair", [100, 100, 600, 600], "input")]
    assert a.images[0].bytes == png("red", (640, 426)) and a.meta["coco_url"].startswith("http://images")
    assert (b.kind, b.text, [(g.phrase, g.box) for g in b.annotations.grounding]) == (
        "grounding", None, [("bear", [0, 0, 1000, 1000])])
    assert counts == {"ignored_field:info": 2, "ignored_field:licenses": 2, "ignored_field:segmentation": 3,
                      "ignored_field:area": 3, "ignored_field:iscrowd": 3, "orphan_annotation": 1}


# --- interleaved documents ------------------------------------------------------------------------------------------

def test_mmc4_documents_with_local_images_and_urls(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "b9040a0dbb22.jpg").write_bytes(png("red"))
    doc = {"url": "https://blog.example/post", "text_list": ["Intro.", "A red photo.", "A far one."],
           "image_info": [{"image_name": "b9040a0dbb22.jpg", "raw_url": "https://x/1.jpg", "matched_text_index": 1,
                           "matched_sim": 0.27, "face_detections": None},
                          {"image_name": "missing.jpg", "raw_url": "https://x/2.jpg", "matched_text_index": 2,
                           "matched_sim": 0.21, "face_detections": None}],
           "similarity_matrix": [[0.1, 0.27, 0.0], [0.0, 0.1, 0.21]], "could_have_url_duplicate": 0}
    (tmp_path / "docs_shard_0_v2.jsonl").write_text(json.dumps(doc) + "\n")
    (sample,), _, counts = read(None, str(tmp_path / "docs_shard_0_v2.jsonl"), image_root=str(tmp_path / "imgs"))
    assert sample.kind == "interleaved" and sample.text is None
    assert [(s.type, s.text, s.image_index) for s in sample.segments] == [
        ("text", "Intro.", None), ("image", None, 0), ("text", "A red photo.", None), ("image", None, 1),
        ("text", "A far one.", None)]
    assert sample.images[0].bytes == png("red") and (sample.images[1].uri, sample.images[1].bytes) == (
        "https://x/2.jpg", None)
    assert sample.meta == {"url": "https://blog.example/post",
                           "similarity_matrix": [[0.1, 0.27, 0.0], [0.0, 0.1, 0.21]], "could_have_url_duplicate": 0,
                           "image_info": [{"matched_sim": 0.27, "face_detections": None},
                                          {"matched_sim": 0.21, "face_detections": None}]}
    assert counts == {"image_url_fallback": 1}


def test_obelics_parquet(tmp_path):
    pq.write_table(pa.table({
        "images": [[None, "https://img.example/1.jpg", None, None]],
        "metadata": [json.dumps([None, {"document_url": "https://d", "alt_text": "a chart"}, None, None])],
        "general_metadata": [json.dumps({"url": "https://d", "warc_filename": "w.warc.gz"})],
        "texts": [["First paragraph.", None, "Second paragraph.", None]]}), tmp_path / "obelics-00000.parquet")
    (sample,), _, counts = read(None, str(tmp_path / "obelics-00000.parquet"))
    assert sample.kind == "interleaved"
    assert [(s.type, s.text, s.image_index) for s in sample.segments] == [
        ("text", "First paragraph.", None), ("image", None, 0), ("text", "Second paragraph.", None)]
    assert sample.images[0].uri == "https://img.example/1.jpg" and sample.images[0].bytes is None
    assert sample.meta["general_metadata"] == {"url": "https://d", "warc_filename": "w.warc.gz"}
    assert counts == {"empty_position": 1}


# --- shared rules ---------------------------------------------------------------------------------------------------

def test_manifest_columns_it_does_not_name_go_to_meta_and_empty_rows_are_rejected(tmp_path):
    lines = [{"id": "a", "caption": "x", "score": 3, "meta": {"score": 4}}, {"id": "b", "note": "nothing else"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    samples, rejections, _ = read("manifest", str(tmp_path / "m.jsonl"))
    assert [s.meta for s in samples] == [{"score": 4}]  # the meta column's own keys win
    assert [(r.source_id, r.reason) for r in rejections] == [("b", "empty_record")]


def test_unknown_format_lists_the_known_ones():
    with pytest.raises(KeyError, match="webdataset"):
        get_format("tfrecord")
    assert {"webdataset", "hf", "urls", "llava", "coco", "mmc4", "obelics", "folder", "manifest"} <= set(
        formats.format_names())


def test_records_sharing_a_key_identical_copies_rejected_different_ones_renamed():
    from vlmloom.curation.readers import resolve_shared_key
    from vlmloom.schemas.records import make_key

    def copy(text, origin, digest):
        s = Sample(key=make_key("s", "7"), source="s", source_id="7", kind="qa", text=text)
        s.signals.update(origin=origin, raw_sha256=digest)
        return s

    outcomes = set()
    for order in ([0, 1, 2], [2, 1, 0], [1, 2, 0]):
        copies = [copy("q1", "f.json:item0", "aa"), copy("q2", "f.json:item1", "bb"), copy("q1", "g.json:item0", "aa")]
        kept, rejected = resolve_shared_key([copies[i] for i in order])
        assert [r.reason for r in rejected] == ["duplicate_key"] and rejected[0].key == make_key("s", "7")
        assert "g.json:item0 is an identical copy" in rejected[0].detail
        assert all(s.signals["renamed_from"] == make_key("s", "7") and s.source_id == "7" for s in kept)
        outcomes.add(tuple((s.key, s.text, s.signals["origin"]) for s in kept))
    (outcome,) = outcomes  # the same whatever the order
    assert len({key for key, _, _ in outcome}) == 2 and [t for _, t, _ in outcome] == ["q1", "q2"]
    (alone,), none = resolve_shared_key([copy("q1", "a", "aa"), copy("q1", "b", "aa")])
    assert alone.key == make_key("s", "7") and "renamed_from" not in alone.signals and len(none) == 1
