"""Video inputs end to end: a folder, a tar member and a manifest row become `video` samples; curate probes and
rejects them with their reasons, writes the clip into the shard (KEY.v0.mp4), exact dedup keys on the clip's
sha256, and pack + the trainer's collator turn the kept clips into video tokens and pixels."""
import io
import json
import os
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("av")
pytest.importorskip("apache_beam")

from test_video import make_video  # noqa: E402

from vlmloom.curation import readers  # noqa: E402
from vlmloom.packing.curated import iter_curated_samples  # noqa: E402
from vlmloom.packing.pack import PackConfig, pack  # noqa: E402
from vlmloom.packing.reader import PackedDataset  # noqa: E402
from vlmloom.pipelines.curate import curate, load_config  # noqa: E402

CAPTION = "a grey square slowly turns lighter over a few seconds of video"


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_reader_hooks_make_video_samples(tmp_path):
    clip = make_video(20, 32, 32, fps=10)
    raw = readers.RawRecord("k", {"mp4": clip, "txt": CAPTION.encode()}, "x/k")
    sample = readers.record_to_sample(raw, "src")
    assert sample.kind == "video" and sample.videos[0].bytes == clip and sample.videos[0].uri == "x/k.mp4"
    row = readers.row_to_sample({"id": "r", "video_bytes": clip, "caption": CAPTION}, "m", 0, lambda p: b"")
    assert row.kind == "video" and row.videos[0].bytes == clip
    unsafe = readers.row_to_sample({"id": "u", "video_path": "../x.mp4"}, "m", 0, lambda p: b"")
    assert unsafe.reason == "unsafe_video_path"
    assert readers.group_folder_files(["/r/a.mp4", "/r/a.txt", "/r/b.txt"], "/r") == {
        "a": {"mp4": "/r/a.mp4", "txt": "/r/a.txt"}}


def test_curate_and_pack_video_inputs(tmp_path):
    # 64 px sides: the heuristics' resolution rule (min_side 64) reads the video's width/height signals too.
    # Dedup by the kinds table: the tar's distinct clip shares the folder clip's caption and is kept (pair-aware
    # MinHash: same caption, other clip); the folder's copy.mp4 holds the folder clip's bytes: exact duplicate.
    clip, other, third = make_video(20, 64, 64, fps=10), make_video(15, 64, 64, fps=5), make_video(12, 64, 64, fps=8)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "clip.mp4").write_bytes(clip)
    (folder / "clip.txt").write_text("a grey square slowly turns lighter over two seconds")
    (folder / "copy.mp4").write_bytes(clip)
    (folder / "copy.txt").write_text("the same clip again")
    (folder / "broken.mp4").write_bytes(clip[:200])
    (folder / "broken.txt").write_text("this file was cut in the middle of its header")
    (folder / "short.webm").write_bytes(make_video(2, 64, 64, fps=10, codec="libvpx", fmt="webm"))
    (folder / "short.txt").write_text("two frames are far too short for any training use")
    _tar(tmp_path / "clips.tar", [("t1.mp4", other), ("t1.txt", b"a grey square slowly turns lighter over two seconds")])
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "v.mp4").write_bytes(third)
    (tmp_path / "m" / "rows.jsonl").write_text(json.dumps({"id": "row1", "video_path": "v.mp4",
                                                            "caption": "a manifest row that points at a file"}) + "\n")
    out = str(tmp_path / "curated")
    curate(load_config({"inputs": [{"path": str(folder), "name": "folder"},
                                   {"path": str(tmp_path / "clips.tar"), "name": "tar"},
                                   {"path": str(tmp_path / "m" / "rows.jsonl"), "name": "manifest"}],
                        "output": out}))
    report = json.load(open(f"{out}/report.json"))  # the kept clips: 2 s @ 10, 3 s @ 5, 1.5 s @ 8 fps, 64×64
    html = open(f"{out}/report.html", encoding="utf-8").read()
    assert "<h2>Kept videos</h2>" in html and html.count("alt='frames of ") == 3  # a frame strip per kept clip
    assert report["sections"]["video_duration"]["count"] == 3
    assert report["sections"]["video_duration"]["mean"] == pytest.approx((2.0 + 3.0 + 1.5) / 3, abs=1e-4)
    assert report["sections"]["video_fps"]["histogram"]["counts"] == [2, 1, 0, 0, 0, 0]
    assert report["histograms"]["width"]["counts"] == [3, 0, 0, 0, 0, 0]
    rejected = {(r["source_id"], r["reason"]) for r in pq.read_table(f"{out}/rejected").to_pylist()}
    assert rejected == {("broken", "corrupt_video"), ("short", "too_short"), ("copy", "exact_duplicate")}
    kept = {s.source_id: s for s in iter_curated_samples(out)}
    assert sorted(kept) == ["clip", "row1", "t1"]
    assert [kept[k].videos[0].bytes for k in ("clip", "t1", "row1")] == [clip, other, third]
    assert kept["t1"].videos[0].frame_count == 15 and kept["t1"].videos[0].fps == 5.0
    assert kept["t1"].signals["video_frames"] == 15 and kept["t1"].signals["video_codec"] == "h264"
    for shard in os.listdir(f"{out}/shards"):
        with tarfile.open(f"{out}/shards/{shard}") as tar:
            assert any(n.endswith(".v0.mp4") for n in tar.getnames())
    packed = str(tmp_path / "packed")
    pack(PackConfig(inputs=[out], output=packed, seq_len=512, tokenizer_vocab_size=300))
    records = list(PackedDataset(packed))
    from vlmloom.pipelines.trace import render, trace

    result = trace("t1", out, packed)  # a source id: the clip's frames and its token span in the packed output
    text = render(result)
    assert "video 0     15 frames decode (container says 15) at 5 fps, 3.00 s, 64x64 h264" in text
    # 3 s at 2 fps: ceil(i·5/2) = 0, 3, 5, 8, 10, 13; 6 × 56 × 56 ≥ 112²: 56×56, grid (3, 4, 4), 4 tokens a pair
    assert "GLM-4.1V  frames [0, 3, 5, 8, 10, 13] at 56x56, grid (3, 4, 4), 12 image tokens, timestamps [0, 1, 2] s" \
        in text
    assert len(result["samples"][0]["packed"]) == 1
    assert sorted(v for r in records for v in r["videos"]) == sorted([clip, other, third])
    assert all(len(r["video_frame_indices"]) == 2 * int(np.asarray(r["video_grid_thw"]).reshape(-1, 3)[:, 0].sum())
               for r in records)


def test_frame_strip_shows_the_clip_moving():
    from PIL import Image

    from vlmloom.curation.video import frame_strip
    from vlmloom.demo.media import moving_shape_video

    strip = Image.open(io.BytesIO(frame_strip(moving_shape_video("square", "red", "left to right", 20, 10, 64))))
    assert strip.size == (4 * 64 + 3 * 2, 72)  # 4 frames of 64 px (thumbnails never enlarge), 2 px apart
    panels = [np.asarray(strip.convert("L"))[:, i * 66:i * 66 + 64] for i in range(4)]
    # the dark square's column moves right from panel to panel
    columns = [float(np.flatnonzero((p < 150).any(axis=0)).mean()) for p in panels]
    assert columns == sorted(columns) and columns[-1] - columns[0] > 20, columns
    assert frame_strip(b"not a video") is None
