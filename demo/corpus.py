"""Deterministic, offline demo corpus with planted problems, for demos and end-to-end tests of curation.

`build_demo_corpus(out_dir, DemoCorpusConfig(...))` writes::

    out_dir/tars/00000.tar ...     img2dataset-style webdataset: KEY.jpg|KEY.png (+ KEY.1.jpg), KEY.txt, KEY.json
    out_dir/manifest.parquet       byte-identical copies of ~10% of the clean tar samples, as a Parquet manifest
    out_dir/images/ID.jpg|png      image files for the manifest rows that carry `image_path` instead of bytes
    out_dir/benchmark/items.parquet  ~30 benchmark items (item_id, question, answer, image_bytes)
    out_dir/expected.json          what every curation stage should find (see `build_demo_corpus`)

Content is rendered with Pillow from seeded generators: landscape scenes and charts with captions in seven
languages that name what was drawn, OCR documents and receipts with line boxes, GUI screens with element boxes,
math/chart QA with verifiable answers and GLM-4.1V-style reasoning messages, and interleaved documents. On top
of the clean samples it plants exact duplicates, near-duplicate images (resize, re-encode, crop, brightness,
and chains of them), near-duplicate captions, benchmark contamination and one bad record per reason code.

Every output byte is a function of the config, the Pillow/pyarrow versions and the TrueType font found
(DejaVu Sans when installed): tars have sorted members (schemas/tars.py writer), JPEGs a fixed quality.
The generators live beside this module, one per kind of content: common.py (randomness, encoding,
distinctness), scenes.py, documents.py (charts, OCR pages), qa.py, gui.py, plants.py (duplicates and bad
records), benchmark.py.

    vlmloom demo-corpus OUT_DIR [--num-samples N] [--seed S]   # or python -m vlmloom.demo.corpus
"""
from __future__ import annotations

import argparse
import functools
import io
import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from vlmloom.demo.benchmark import benchmark_item, ngrams
from vlmloom.demo.common import DemoRecord, Distinct, decode_image, encode_image, image_meta, seeded_rng
from vlmloom.demo.documents import chart_record, ocr_record
from vlmloom.demo.gui import gui_record
from vlmloom.demo.plants import (BAD_RECORD_REASONS, UNSAFE_MEMBER_PATH, UNSAFE_SOURCE_ID, VARIANT_KINDS, close_variant,
                                 one_word_changed, paragraph, planted_bad_records)
from vlmloom.demo.qa import qa_record
from vlmloom.demo.scenes import (EN_EXTRA, I18N_TEMPLATES, interleaved_record, random_scene, render_scene, scene_caption,
                                 scene_record)
from vlmloom.schemas.tars import write_tar

TAR_DIR = "tars"
IMAGES_DIR = "images"
BENCHMARK_DIR = "benchmark"
MANIFEST_FILE = "manifest.parquet"
EXPECTED_FILE = "expected.json"
BENCHMARK_FILE = "items.parquet"

MANIFEST_COLUMNS = pa.schema([
    ("id", pa.string()), ("image_bytes", pa.binary()), ("image_path", pa.string()),
    ("caption", pa.string()), ("kind", pa.string()), ("meta", pa.string()),
])
BENCHMARK_COLUMNS = pa.schema([
    ("item_id", pa.string()), ("question", pa.string()), ("answer", pa.string()), ("image_bytes", pa.binary()),
])


@dataclass(frozen=True, kw_only=True)
class DemoCorpusConfig:
    num_samples: int = 2000  # clean base samples, before planted duplicates, contamination and bad records; >= 50
    seed: int = 0  # any int; same config -> byte-identical output
    samples_per_tar: int = 500  # records (KEY groups) per tar shard; >= 1

    def __post_init__(self) -> None:
        if self.num_samples < 50:
            raise ValueError(f"demo_corpus.num_samples ({self.num_samples}) < 50: the planted duplicates, "
                             "contamination and bad records need at least 50 clean samples; raise num_samples")
        if self.samples_per_tar < 1:
            raise ValueError(f"demo_corpus.samples_per_tar ({self.samples_per_tar}) must be >= 1")




def _kind_pattern(seed: int) -> list[str]:
    """Kinds (and scene caption languages) of clean samples cycle through a shuffled block of 100, so every
    mix of 100 or more samples holds every kind and language in fixed shares."""
    scenes = ["scene:en"] * 32 + [f"scene:{lang}" for lang in I18N_TEMPLATES for _ in range(3)]
    pattern = scenes + ["chart"] * 10 + ["ocr"] * 15 + ["gui"] * 10 + ["qa"] * 12 + ["interleaved"] * 3
    seeded_rng(seed, "kinds").shuffle(pattern)
    return pattern


_MAKERS = {"scene": scene_record, "chart": chart_record, "ocr": ocr_record, "gui": gui_record, "qa": qa_record}


def _make_distinct(seed: int, purpose: str, index: int, maker: Any, distinct: Distinct) -> tuple[DemoRecord, Any]:
    for attempt in range(200):
        record, images = maker(seeded_rng(seed, purpose, index, attempt))
        text_ok, sketch = distinct.text_is_new(record.caption)
        if text_ok and distinct.admit_images(*(images if isinstance(images, list) else [images])):
            distinct.add_text(sketch)
            # rendering is cheap, encoding is not: makers hand over PIL images, encoded only once admitted
            record.images = [(ext, encode_image(im, ext) if isinstance(im, Image.Image) else im) for ext, im in record.images]
            return record, images
    raise RuntimeError(f"demo corpus: could not render a distinct image and caption for {purpose} #{index} in 200 attempts")


def build_demo_corpus(out_dir: str, config: DemoCorpusConfig = DemoCorpusConfig()) -> dict[str, Any]:
    """Write the demo corpus under `out_dir` (must not exist or be empty) and return its expectations.

    The expectations (also written to `expected.json`) hold: `total_records` (KEY groups in the tars, bad
    ones included), `manifest_records` and `manifest_ids` (each manifest row is a byte-identical copy of the
    tar record with the same source id), `bad_records` {source_id: reason code}, `exact_duplicates`
    [[orig_id, dup_id]], `near_duplicates` [[parent_id, variant_id, variant_kind]] (a chain's parent is
    itself a variant), `near_duplicate_texts` [[orig_id, variant_id]], `benchmark_plants`
    [{source_id, item_id, how}], `kinds` {kind: records in tars}, `languages` {source_id: lang} for the
    scene captions, `clean_ids`, `num_shards` and the config.
    """
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise FileExistsError(f"demo corpus: {out_dir} exists and is not empty; pick a new directory or remove it")
    seed = config.seed
    distinct = Distinct()
    records: list[DemoRecord] = []

    # Benchmark first: its images must stay distinct from everything the corpus holds unless planted.
    bench_items, bench_grams = [], set()
    index = 0
    while len(bench_items) < 30:
        for attempt in range(50):
            item, image = benchmark_item(seeded_rng(seed, "bench", index, attempt), index)
            grams = ngrams(item["question"])
            if not grams & bench_grams and distinct.admit_images(image):
                break
        else:
            raise RuntimeError(f"demo corpus: benchmark item {index} not distinct after 50 attempts")
        bench_grams |= grams
        item["image_bytes"] = encode_image(image, "jpg")
        bench_items.append(item)
        index += 1

    # Clean samples.
    pattern = _kind_pattern(seed)
    clean: list[DemoRecord] = []
    for i in range(config.num_samples):
        kind, _, lang = pattern[i % len(pattern)].partition(":")
        maker = interleaved_record if kind == "interleaved" else _MAKERS[kind]
        if lang:
            maker = functools.partial(scene_record, lang=lang)
        record, _ = _make_distinct(seed, "clean", i, maker, distinct)
        clean.append(record)
    records += clean

    plan_rng = seeded_rng(seed, "plan")
    single = [i for i, r in enumerate(clean) if r.kind != "interleaved"]
    scenes = [i for i, r in enumerate(clean) if r.kind == "caption" and "chart" not in r.meta]
    n_plant = max(3, round(0.03 * config.num_samples))

    # Exact duplicates: same image bytes, new id; half keep the caption, half (scenes) get a sentence appended.
    exact: list[tuple[DemoRecord, DemoRecord]] = []
    dup_sources = plan_rng.sample(single, n_plant)
    for j, i in enumerate(dup_sources):
        orig = clean[i]
        caption = orig.caption
        if j % 2 and orig.kind == "caption" and "chart" not in orig.meta:
            caption = (orig.caption.decode("utf-8") + " " + plan_rng.choice(EN_EXTRA[1:3])).encode("utf-8")
        dup = DemoRecord(orig.kind, caption, dict(orig.meta), list(orig.images), lang=orig.lang)
        exact.append((orig, dup))
        records.append(dup)

    # Near-duplicate images of scene originals, plus two chains (variant of a variant).
    near: list[tuple[DemoRecord, DemoRecord, str]] = []
    # originals of at least 320 px a side, so that even a 0.5x resize passes a 160 px minimum-size filter
    big_scenes = [i for i in scenes if i not in set(dup_sources) and min(Image.open(io.BytesIO(clean[i].images[0][1])).size) >= 320]
    near_sources = plan_rng.sample(big_scenes, n_plant)
    variants: list[tuple[DemoRecord, Image.Image]] = []
    for j, i in enumerate(near_sources):
        how = VARIANT_KINDS[j % len(VARIANT_KINDS)]
        orig = clean[i]
        data, decoded = close_variant(decode_image(orig.images[0][1]), how, seeded_rng(seed, "near", j))
        rec = DemoRecord(orig.kind, _scene_caption_again(orig, seed, j), dict(orig.meta), [("jpg", data)], lang=orig.lang)
        near.append((orig, rec, how))
        variants.append((rec, decoded))
        records.append(rec)
    for j, (parent, parent_image) in enumerate(variants[:2]):
        how = VARIANT_KINDS[(j + 2) % len(VARIANT_KINDS)]
        data, _ = close_variant(parent_image, how, seeded_rng(seed, "chain", j))
        rec = DemoRecord(parent.kind, parent.caption, dict(parent.meta), [("jpg", data)], lang=parent.lang)
        near.append((parent, rec, how))
        records.append(rec)

    # Near-duplicate captions: two distinct images, one long caption with one word changed.
    near_texts: list[tuple[DemoRecord, DemoRecord]] = []
    for j in range(max(2, config.num_samples // 100)):
        rng = seeded_rng(seed, "near_text", j)
        pair = []
        for k in range(2):
            for attempt in range(50):
                scene = random_scene(seeded_rng(seed, "near_text", j, k, attempt))
                image = render_scene(scene, seeded_rng(seed, "near_text_render", j, k, attempt))
                if distinct.admit_images(image):
                    break
            else:
                raise RuntimeError(f"demo corpus: near-duplicate text image {j}/{k} not distinct after 50 attempts")
            pair.append((scene, image))
        text = f"{scene_caption(pair[0][0], 'en', rng)} {paragraph(rng)}"
        variant_text = one_word_changed(text, rng)
        a = DemoRecord("caption", text.encode("utf-8"), {"objects": sorted(pair[0][0].counts())}, [("jpg", encode_image(pair[0][1], "jpg"))], lang="en")
        b = DemoRecord("caption", variant_text.encode("utf-8"), {"objects": sorted(pair[1][0].counts())}, [("jpg", encode_image(pair[1][1], "jpg"))], lang="en")
        near_texts.append((a, b))
        records += [a, b]

    # Benchmark contamination: an exact image copy, a re-encoded near copy, three captions quoting a question.
    plants: list[tuple[DemoRecord, str, str]] = []
    planted_items = seeded_rng(seed, "bench_plants").sample(range(len(bench_items)), 5)
    for j, (item_index, how) in enumerate(zip(planted_items, ("image", "near_image", "text", "text", "text"))):
        item = bench_items[item_index]
        rng = seeded_rng(seed, "bench_plant", j)
        if how == "image":
            images = [("jpg", item["image_bytes"])]
            caption = rng.choice(("A landscape drawing found on a website, with a few simple objects under the sky.",
                                  "Simple sketch of the countryside with a few objects, copied from an online quiz."))
        elif how == "near_image":
            data, _ = close_variant(decode_image(item["image_bytes"]), "reencode", rng)
            images = [("jpg", data)]
            caption = "An illustrated landscape with simple shapes and colours, shared in a drawing forum last year."
        else:
            for attempt in range(50):
                scene = random_scene(seeded_rng(seed, "bench_plant_scene", j, attempt))
                image = render_scene(scene, rng)
                if distinct.admit_images(image):
                    break
            else:
                raise RuntimeError(f"demo corpus: benchmark plant image {j} not distinct after 50 attempts")
            images = [("jpg", encode_image(image, "jpg"))]
            caption = f"{scene_caption(scene, 'en', rng)} Quiz: {item['question']}"
        rec = DemoRecord("caption", caption.encode("utf-8"), {}, images, lang="en")
        plants.append((rec, item["item_id"], how))
        records.append(rec)

    bad = planted_bad_records(seed)
    records += [r for r, _ in bad]

    # Source ids from a seeded permutation, so planted records are spread over all shards.
    order = list(range(len(records)))
    seeded_rng(seed, "ids").shuffle(order)
    for record, number in zip(records, order):
        record.source_id = f"{number:06d}"
    for record, reason in bad:
        if reason == UNSAFE_MEMBER_PATH:
            record.source_id = UNSAFE_SOURCE_ID
    for record in records:
        if record.images and "url" not in record.meta:
            record.meta.update(image_meta(record.source_id, record.images[0][0], record.images[0][1]))

    # Manifest: ~10% of the clean single-image samples; half by bytes, half by a path under images/.
    manifest_idx = sorted(seeded_rng(seed, "manifest").sample(single, max(2, config.num_samples // 10)), key=lambda i: clean[i].source_id)
    _write_all(out_dir, config, records, [clean[i] for i in manifest_idx], bench_items)

    expected = {
        "config": asdict(config),
        "total_records": len(records),
        "num_shards": math.ceil(len(records) / config.samples_per_tar),
        "manifest_records": len(manifest_idx),
        "manifest_ids": [clean[i].source_id for i in manifest_idx],
        "bad_records": {r.source_id: reason for r, reason in sorted(bad, key=lambda b: b[0].source_id)},
        "exact_duplicates": sorted([o.source_id, d.source_id] for o, d in exact),
        "near_duplicates": sorted([o.source_id, v.source_id, how] for o, v, how in near),
        "near_duplicate_texts": sorted([a.source_id, b.source_id] for a, b in near_texts),
        "benchmark_plants": sorted(({"source_id": r.source_id, "item_id": item_id, "how": how} for r, item_id, how in plants),
                                   key=lambda p: p["source_id"]),
        "benchmark_items": len(bench_items),
        "kinds": count_values(r.kind for r in records),
        "languages": {r.source_id: r.lang for r in sorted(clean, key=lambda r: r.source_id)
                      if r.kind == "caption" and "chart" not in r.meta},
        "clean_ids": sorted(r.source_id for r in clean),
        "reason_codes": list(BAD_RECORD_REASONS),
    }
    with open(os.path.join(out_dir, EXPECTED_FILE), "w", encoding="utf-8") as f:
        json.dump(expected, f, indent=1, sort_keys=True, ensure_ascii=False)
        f.write("\n")
    return expected


def _scene_caption_again(orig: DemoRecord, seed: int, j: int) -> bytes:
    """Variants get a caption in the original's language that differs in wording but not in content."""
    if orig.lang != "en":
        return orig.caption
    extra = seeded_rng(seed, "near_caption", j).choice(EN_EXTRA[1:3])
    return (orig.caption.decode("utf-8") + " " + extra).encode("utf-8")


def count_values(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def _write_all(out_dir: str, config: DemoCorpusConfig, records: list[DemoRecord], manifest: list[DemoRecord],
               bench_items: list[dict[str, Any]]) -> None:
    os.makedirs(os.path.join(out_dir, TAR_DIR), exist_ok=True)
    ordered = sorted(records, key=lambda r: r.source_id)
    for shard, start in enumerate(range(0, len(ordered), config.samples_per_tar)):
        members = [m for r in ordered[start:start + config.samples_per_tar] for m in r.members()]
        write_tar(os.path.join(out_dir, TAR_DIR, f"{shard:05d}.tar"), sorted(members))

    rows = []
    os.makedirs(os.path.join(out_dir, IMAGES_DIR), exist_ok=True)
    for j, record in enumerate(manifest):
        ext, data = record.images[0]
        meta = {"key": record.source_id, "kind": record.kind, **record.meta}
        path = None
        if j % 2:
            path = f"{IMAGES_DIR}/{record.source_id}.{ext}"
            with open(os.path.join(out_dir, path), "wb") as f:
                f.write(data)
        rows.append({"id": record.source_id, "image_bytes": None if path else data, "image_path": path,
                     "caption": record.caption.decode("utf-8"), "kind": record.kind,
                     "meta": json.dumps(meta, sort_keys=True, ensure_ascii=False)})
    _write_parquet(pa.Table.from_pylist(rows, schema=MANIFEST_COLUMNS), os.path.join(out_dir, MANIFEST_FILE))

    os.makedirs(os.path.join(out_dir, BENCHMARK_DIR), exist_ok=True)
    _write_parquet(pa.Table.from_pylist(bench_items, schema=BENCHMARK_COLUMNS), os.path.join(out_dir, BENCHMARK_DIR, BENCHMARK_FILE))


def _write_parquet(table: pa.Table, path: str) -> None:
    tmp = path + ".tmp"
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """`vlmloom demo-corpus OUT_DIR [--num-samples N] [--seed S]`."""
    parser = argparse.ArgumentParser(prog="vlmloom demo-corpus", description="Build the deterministic demo corpus.")
    parser.add_argument("output")
    parser.add_argument("--num-samples", type=int, default=DemoCorpusConfig().num_samples)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    expected = build_demo_corpus(args.output, DemoCorpusConfig(num_samples=args.num_samples, seed=args.seed))
    print(f"wrote {args.output}: {expected['total_records']} records in tars, "
          f"{expected.get('manifest_records', 0)} manifest rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
