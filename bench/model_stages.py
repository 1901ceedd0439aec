"""Throughput of the model-backed curation stages, per CPU core: prints a Markdown table.

Rows: CLIP scoring (tiny random and ViT-B/32-sized random transformers CLIPModel; image decode,
preprocessing, both towers), rapidocr OCR on rendered documents, and contamination lookups against
an index of 100k benchmark items (pHash XOR/popcount over all items + 13-gram text lookup).
Everything runs in one process with torch and onnxruntime pinned to one thread, so the figures are
"samples/s per core"; a Beam job scales them by its worker count (minus Beam's own overhead).

    .venv/bin/python bench/model_stages.py                 # full run (~3 min on one core)
    .venv/bin/python bench/model_stages.py --quick         # smaller counts, for a smoke test
    .venv/bin/python bench/model_stages.py --device cuda   # CLIP rows on a GPU as well
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from vlmloom.curation.clip import ClipConfig, ClipScorer  # noqa: E402
from vlmloom.demo.models import save_random_clip  # noqa: E402
from vlmloom.curation.contamination import BenchmarkItem, ContaminationConfig, ContaminationIndex  # noqa: E402
from vlmloom.curation.ocr import OCR_BACKENDS, OcrAnnotator, OcrConfig, character_accuracy, transcript  # noqa: E402
from vlmloom.schemas.records import ImageRef, Sample  # noqa: E402

WORDS = ("the a of and to in is for on with as by at from red blue green image photo dog cat car tree house "
         "street beach sky water table chair book screen text document chart sign person man woman child "
         "small large old new two three near under over next sitting standing running").split()


def jpeg(array: np.ndarray, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def caption_samples(n: int, size: int = 256, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        blocks = rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)
        image = np.asarray(Image.fromarray(blocks).resize((size, size), Image.BILINEAR))
        text = " ".join(rng.choice(WORDS, size=int(rng.integers(6, 16))))
        out.append(Sample(key=f"s{i}", source="bench", source_id=str(i), text=text,
                          images=[ImageRef(width=size, height=size, format="jpeg", bytes=jpeg(image))]))
    return out


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def bench_clip(size: str, n: int, batch: int, device: str) -> dict:
    import torch

    path = save_random_clip(tempfile.mkdtemp(prefix=f"clip-{size}-"), size, "clip")
    scorer = ClipScorer(ClipConfig(model_path=path, device=device, threads=1 if device == "cpu" else 0))
    samples = caption_samples(n)
    scorer.score_batch(samples[:batch])  # warm-up: weights paged in, kernels chosen
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = 0.0
    for i in range(0, n, batch):
        seconds += timed(scorer.score_batch, samples[i:i + batch])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    params = sum(p.numel() for p in scorer.encoder.model.parameters())
    where = "1 core" if device == "cpu" else f"{device} + 1 core"
    return {"stage": f"CLIP score, {size} random ({params / 1e6:.1f}M params), 256² JPEG, batch {batch}",
            "where": where, "n": n, "seconds": seconds}


def render_document(lines: list[str], width: int = 900, line_height: int = 46) -> bytes:
    try:
        font = ImageFont.truetype("DejaVuSans.ttf", 26)
    except OSError:
        font = ImageFont.load_default(size=26)
    image = Image.new("RGB", (width, 24 + line_height * len(lines)), "white")
    draw = ImageDraw.Draw(image)
    for i, text in enumerate(lines):
        draw.text((20, 12 + i * line_height), text, fill="black", font=font)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def bench_ocr(n: int, lines_per_doc: int, config: OcrConfig, label: str) -> dict:
    rng = np.random.default_rng(1)
    docs = []
    for i in range(n):
        lines = [" ".join(rng.choice(WORDS, size=7)).capitalize() + f" {int(rng.integers(10, 9999))}"
                 for _ in range(lines_per_doc)]
        data = render_document(lines)
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
        docs.append((Sample(key=f"d{i}", source="bench", source_id=str(i), kind="ocr",
                            images=[ImageRef(width=w, height=h, format="png", bytes=data)]), lines))
    annotator = OcrAnnotator(config, OCR_BACKENDS.get("rapidocr")(config))
    annotator.read_batch([docs[0][0]])  # warm-up
    seconds, accuracies = 0.0, []
    for sample, lines in docs:
        start = time.perf_counter()
        raw = annotator.read_batch([sample])[0]
        annotator.judge(sample, raw)
        seconds += time.perf_counter() - start
        accuracies.append(character_accuracy(transcript(sample.annotations.ocr), lines))
    return {"stage": f"OCR rapidocr PP-OCRv6, 900×{h} render, {lines_per_doc} lines, {label}",
            "where": "1 core", "n": n, "seconds": seconds,
            "note": f"char accuracy {np.mean(accuracies):.4f}"}


def bench_contamination(items: int, n: int) -> list[dict]:
    rng = np.random.default_rng(2)
    config = ContaminationConfig(check_images=True)

    def benchmark_items():
        for i in range(items):
            question = " ".join(rng.choice(WORDS, size=int(rng.integers(10, 30))))
            yield BenchmarkItem("bench100k", f"q{i}", question=question, answer=str(int(rng.integers(0, 1000))))

    start = time.perf_counter()
    index = ContaminationIndex.build(config, benchmark_items())
    build_text = time.perf_counter() - start
    # 100k benchmark pHashes as if computed from their images (computing them is ~0.65 ms each, once per worker).
    index.phashes = rng.integers(0, 2 ** 63, size=items, dtype=np.int64).astype(np.uint64)
    index.phash_items = np.arange(items, dtype=np.int64)
    samples = caption_samples(n, size=256, seed=3)
    stored = []
    for s in samples:
        copy = Sample(key=s.key, source=s.source, source_id=s.source_id, text=s.text, images=s.images,
                      signals={"phash": f"{int(rng.integers(0, 2 ** 63)):016x}"})
        stored.append(copy)
    rows = []
    seconds = timed(lambda: [index.lookup([s]) for s in stored])
    rows.append({"stage": f"contamination lookup vs {items // 1000}k items (pHash from dedup signal + 13-grams)",
                 "where": "1 core", "n": n, "seconds": seconds,
                 "note": f"index build (text side) {build_text:.1f} s, {len(index.grams) / 1e6:.2f}M grams"})
    seconds = timed(lambda: [index.lookup([s]) for s in samples])
    rows.append({"stage": f"contamination lookup vs {items // 1000}k items, pHash computed from 256² JPEG",
                 "where": "1 core", "n": n, "seconds": seconds})
    images = [s.images[0].bytes for s in samples[:500]]
    image_config = ContaminationConfig(check_text=False)
    seconds = timed(lambda: ContaminationIndex.build(
        image_config, (BenchmarkItem("b", str(i), image_bytes=data) for i, data in enumerate(images))))
    rows.append({"stage": "contamination index build, image side (pHash per 256² JPEG benchmark image)",
                 "where": "1 core", "n": len(images), "seconds": seconds,
                 "note": f"≈{items * seconds / len(images):.0f} s per worker for {items // 1000}k images; "
                         "set contamination.cache_dir to build once"})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small counts (smoke test)")
    parser.add_argument("--device", default="cpu", help="also run the CLIP rows on this torch device (e.g. cuda)")
    parser.add_argument("--items", type=int, default=100_000, help="benchmark items in the contamination index")
    parser.add_argument("--only", default="", help="comma list of clip,ocr,contamination")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    quick = args.quick
    only = set(filter(None, args.only.split(","))) or {"clip", "ocr", "contamination"}
    rows = []
    if "clip" in only:
        rows.append(bench_clip("tiny", 128 if quick else 1024, 32, "cpu"))
        rows.append(bench_clip("vit-b-32", 32 if quick else 128, 32, "cpu"))
        if args.device != "cpu":
            rows.append(bench_clip("vit-b-32", 256 if quick else 2048, 64, args.device))
    if "ocr" in only:
        n = 3 if quick else 10
        rows.append(bench_ocr(n, 3, OcrConfig(threads=1, det_max_side=0), "rapidocr defaults (short side → 736)"))
        rows.append(bench_ocr(n, 3, OcrConfig(threads=1), "ocr defaults (det_max_side=1600)"))
        rows.append(bench_ocr(n, 12, OcrConfig(threads=1), "ocr defaults (det_max_side=1600)"))
        rows.append(bench_ocr(n, 12, OcrConfig(threads=1, det_max_side=960, angle_classifier=False),
                              "det_max_side=960, angle_classifier=false"))
        rows.append(bench_ocr(n, 12, OcrConfig(threads=1, det_max_side=640, angle_classifier=False),
                              "det_max_side=640, angle_classifier=false (the demo's)"))
    if "contamination" in only:
        rows.extend(bench_contamination(10_000 if quick else args.items, 200 if quick else 2000))

    print(f"\nvlmloom model-stage throughput — torch {torch.__version__}, threads=1, "
          f"cpu={os.cpu_count()} visible; {time.strftime('%Y-%m-%d %H:%M')}\n")
    print("| stage | where | samples | seconds | samples/s | note |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for row in rows:
        rate = row["n"] / row["seconds"] if row["seconds"] else float("inf")
        print(f"| {row['stage']} | {row['where']} | {row['n']} | {row['seconds']:.2f} | {rate:,.1f} | "
              f"{row.get('note', '')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
