"""Folder and JSONL inputs through the whole `curate` job (tars and Parquet are covered by test_curate)."""
import io
import json

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from vlmloom.pipelines.curate import curate, load_config


def _jpeg(seed: int, size=(96, 80)) -> bytes:
    rng = np.random.default_rng(seed)
    arr = (rng.random((size[1] // 8, size[0] // 8, 3)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(arr).resize(size, Image.NEAREST).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_folder_and_jsonl_inputs(tmp_path):
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.jpg").write_bytes(_jpeg(1))
    (folder / "a.txt").write_text("a red square pattern on a grey wall")
    (folder / "sub" / "b.jpg").write_bytes(_jpeg(2))
    (folder / "sub" / "b.json").write_text(json.dumps({"kind": "caption", "caption": "blue tiles in a row"}))
    (folder / "c.jpg").write_bytes(b"")  # zero bytes
    (folder / "README.md").write_text("not a sample")

    images = tmp_path / "imgs"
    images.mkdir()
    (images / "x.jpg").write_bytes(_jpeg(3))
    lines = [json.dumps({"id": "x", "image_path": "imgs/x.jpg", "caption": "green dots on paper"}),
             json.dumps({"id": "y", "image_path": "imgs/missing.jpg", "caption": "gone"}),
             "{broken json",
             json.dumps({"id": "z", "caption": "text only question?", "answer": "yes", "kind": "qa"})]
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")

    out = tmp_path / "out"
    report = curate(load_config({"inputs": [{"path": str(folder), "name": "fold"},
                                            {"path": str(tmp_path / "rows.jsonl"), "name": "rows"}],
                                 "output": str(out), "disable": ["language"]}))
    kept = {(r["source"], r["source_id"]) for r in pq.read_table(out / "manifest").to_pylist()}
    rejected = {(r["source"], r["source_id"]): r["reason"]
                for r in pq.read_table(out / "rejected").to_pylist()}
    assert kept == {("fold", "a"), ("fold", "sub/b"), ("rows", "x"), ("rows", "z")}
    assert rejected == {("fold", "c"): "empty_bytes", ("rows", "y"): "missing_image_file",
                        ("rows", "rows.jsonl:3"): "invalid_json"}
    assert report["accounting"]["input_records"] == 7
