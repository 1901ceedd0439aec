"""report.json comes from aggregates the job sums where it writes each bucket (report.ReportStats, one file per
bucket beside its parts, merged by the driver), not from reading every row back in the driver: the figures equal a plain pass over all
the rows written; merging is exact and does not depend on order; report.html reads only what it shows."""
import collections
import glob
import json
import math
import os
import random

import pytest

from vlmloom.demo.corpus import DemoCorpusConfig, build_demo_corpus
from vlmloom.demo.models import save_random_clip
from vlmloom.pipelines import report as report_mod
from vlmloom.pipelines.curate import curate, load_config
from vlmloom.pipelines.report import ReportStats, read_manifest, read_rejections
from vlmloom.pipelines.report_html import (DEDUP_STAGES, EXAMPLES_PER_REASON, NEAR_DUPLICATE_PAIRS, render_html,
                                           representative_of)
from vlmloom.schemas import curated as curated_layout, formats
from vlmloom.schemas.charts import esc, histogram
from vlmloom.schemas.curated import key_bucket

ROW_FIELDS = ("funnel", "kinds", "sources", "shards", "languages", "by_source", "histograms", "sections")


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """Two sources, every rule-based stage, CLIP (random tiny model) and contamination against the demo's
    planted benchmark items: many reasons, model sections, contamination hits."""
    root = tmp_path_factory.mktemp("report")
    corpus = str(root / "corpus")
    build_demo_corpus(corpus, DemoCorpusConfig(num_samples=120, samples_per_tar=40))
    out = str(root / "out")
    config = load_config({
        "inputs": [{"path": f"{corpus}/tars/*.tar", "name": "wds"},
                   {"path": f"{corpus}/manifest.parquet", "name": "man"}],
        "output": out, "output_format": {"buckets": 5},
        "models": {"clip": {"enabled": True, "model_path": save_random_clip(str(root / "clip")), "top_fraction": 0.8},
                   "contamination": {"enabled": True,
                                     "benchmarks": [{"name": "demo", "path": f"{corpus}/benchmark/items.parquet"}]}},
    })
    return out, curate(config, ["--direct_num_workers=1"], progress=False), corpus, config


def _plain_pass(out: str, stage_names: list[str], input_records: int) -> dict:
    """The report's row figures computed the obvious way, from every row at once (the reference)."""
    kept, rejected = read_manifest(out), read_rejections(out)
    signals = [json.loads(r["signals"]) for r in kept]
    dropped = collections.Counter((r["stage"], r["reason"]) for r in rejected)
    funnel, remaining = [], input_records
    for stage in stage_names:
        reasons = {reason: n for (s, reason), n in sorted(dropped.items()) if s == stage}
        funnel.append({"stage": stage, "in": remaining, "kept": remaining - sum(reasons.values()), "dropped": reasons})
        remaining -= sum(reasons.values())
    by_source = {}
    for name in sorted({r["source"] for r in kept} | {r["source"] for r in rejected}):
        mine = [r for r in rejected if r["source"] == name]
        by_source[name] = {"kept": sum(r["source"] == name for r in kept), "rejected": len(mine),
                           "reasons": dict(sorted(collections.Counter(r["reason"] for r in mine).items()))}
    sections = {}
    for signal, (section, count_name, edges) in report_mod.VALUE_SECTIONS.items():
        values = [s[signal] for s in signals if s.get(signal) is not None]
        if values:
            sections[section] = {count_name: len(values), "mean": round(math.fsum(values) / len(values), 4),
                                 "histogram": histogram(values, edges)}
    hits = collections.defaultdict(collections.Counter)
    for r in rejected:
        if r["stage"] == "contamination" and r["reason"].startswith("benchmark_"):
            hits[json.loads(r["fields"])["contamination_benchmark"]][r["reason"]] += 1
    if hits:
        sections["contamination"] = {name: dict(sorted(c.items())) for name, c in sorted(hits.items())}
    langs = collections.Counter(s.get("lang", "und") for s in signals)
    sides = [(r["width"], r["height"]) for r in kept]
    return {
        "funnel": funnel,
        "kinds": dict(sorted(collections.Counter(r["kind"] for r in kept).items())),
        "sources": dict(sorted(collections.Counter(r["source"] for r in kept).items())),
        "shards": len({r["shard"] for r in kept}),
        "languages": dict(sorted(langs.items(), key=lambda kv: (-kv[1], kv[0]))),
        "by_source": by_source,
        "histograms": {
            "width": histogram([w for w, _ in sides if w], report_mod.SIDE_EDGES),
            "height": histogram([h for _, h in sides if h], report_mod.SIDE_EDGES),
            "aspect_ratio": histogram([w / h for w, h in sides if w and h], report_mod.ASPECT_EDGES),
            "text_chars": histogram([r["text_chars"] for r in kept], report_mod.TEXT_EDGES),
        },
        "sections": sections,
    }


def test_the_jobs_aggregates_equal_a_plain_pass_over_every_row(job):
    out, report, *_ = job
    stage_names = [row["stage"] for row in report["funnel"]]
    assert report["accounting"]["kept"] == len(read_manifest(out))
    assert report["accounting"]["rejected"] == len(read_rejections(out))
    from_rows = json.loads(json.dumps({k: report[k] for k in ROW_FIELDS}))  # a copy: the fixture is shared
    read_counts = {name: entry.pop("read") for name, entry in from_rows["by_source"].items()}  # from counters
    assert from_rows == _plain_pass(out, stage_names, report["accounting"]["input_records"])
    assert sum(counts["records"] for counts in read_counts.values()) == report["accounting"]["input_records"]
    assert read_counts["wds"]["read_file:tar"] >= 1
    # the case is not trivial: both sources, several reasons, the model sections and contamination hits are there
    assert set(report["by_source"]) == {"wds", "man"} and len(report["languages"]) > 1
    assert sum(len(row["dropped"]) for row in report["funnel"]) >= 5
    assert report["sections"]["clip"]["scored"] > 0 and report["sections"]["contamination"]["demo"]
    assert not os.path.exists(os.path.join(out, formats.REPORT_STATS_DIR))  # merged into report.json, removed


def test_streaming_the_parts_gives_the_same_report(job):
    """A directory without the job's aggregates (built by another tool, or an older job) gets the same figures
    streamed part by part."""
    out, report, _, config = job
    stage_names = [row["stage"] for row in report["funnel"]]
    rebuilt = report_mod.build_report(out, stage_names, report["counters"], config, 0.0)
    assert {k: rebuilt[k] for k in ROW_FIELDS + ("accounting",)} == {k: report[k] for k in ROW_FIELDS + ("accounting",)}


def _random_rows(rng: random.Random, n: int) -> tuple[list[dict], list[dict]]:
    awkward = [0.1, 0.2, 0.3, 1e8, -1e8, 1.0, 2.0 ** -40, 0.7]  # float sums of these depend on order
    rows = [{"source": rng.choice("ab"), "kind": rng.choice(["caption", "qa"]), "shard": f"s{i // 7}",
             "width": rng.choice([None, 64, 300, 4000]), "height": rng.choice([None, 32, 700]),
             "text_chars": rng.randrange(5000),
             "signals": json.dumps({"lang": rng.choice(["en", "de", "zh"]), "clip_score": rng.choice(awkward),
                                    **({"text_choice": rng.choice(["orig", "recap"])} if i % 3 else {})})}
            for i in range(n)]
    rejections = [{"source": rng.choice(["a", "b", ""]), "stage": rng.choice(["decode", "contamination"]),
                   "reason": rng.choice(["benchmark_text_overlap", "too_small"]),
                   "fields": json.dumps({"contamination_benchmark": rng.choice(["x", "y"])})}
                  for _ in range(n // 7 * 3)]
    return rows, rejections


def test_merging_is_exact_and_order_free():
    rng = random.Random(7)
    rows, rejections = _random_rows(rng, 700)
    # split into groups along shard boundaries (a shard is never split: each group plays one bucket)
    cuts = sorted(rng.sample(range(1, 100), 9))
    groups = [(rows[a * 7:b * 7], rejections[a * 3:b * 3]) for a, b in zip([0] + cuts, cuts + [100])]
    parts = [ReportStats().add(r, j) for r, j in groups]
    results = set()
    for order in range(5):
        shuffled = parts[:]
        random.Random(order).shuffle(shuffled)
        if order % 2:  # a tree of merges, as combiner lifting does, vs a chain
            merged = ReportStats().merge(ReportStats().merge(shuffled[0]).merge(shuffled[1]))
            for p in shuffled[2:]:
                merged = ReportStats().merge(p).merge(merged)
        else:
            merged = ReportStats()
            for p in shuffled:
                merged.merge(ReportStats.from_json(p.to_json()))  # through the accumulator's JSON form, too
        results.add(merged.to_json())
    assert len(results) == 1
    merged = ReportStats.from_json(results.pop())
    whole = ReportStats().add(rows, rejections)
    assert merged.to_json() == whole.to_json()
    scores = [json.loads(r["signals"])["clip_score"] for r in rows]
    group_sums = [sum(json.loads(r["signals"])["clip_score"] for r in g) for g, _ in groups]
    orders = {sum(random.Random(k).sample(group_sums, len(group_sums))) for k in range(20)}
    assert len(orders) > 1  # plain float sums would make the mean depend on merge order
    assert merged.sections()["clip"]["mean"] == round(math.fsum(scores) / len(scores), 4)
    fields = merged.report_fields(["decode", "contamination"], len(rows) + len(rejections))
    assert fields["shards"] == 100 and sum(fields["kinds"].values()) == len(rows)
    assert fields["by_source"]["?"]["rejected"] == sum(not r["source"] for r in rejections)


def test_report_html_reads_only_what_it_shows(job, monkeypatch):
    out, report, corpus, _ = job
    rejected = read_rejections(out)  # the reference, read before the page may not
    read = []
    real_read_part = curated_layout.read_part
    monkeypatch.setattr(curated_layout, "read_part", lambda path, columns=None, files=None:
                        read.append((path, columns)) or real_read_part(path, columns, files))
    monkeypatch.setattr(curated_layout, "read_rows", lambda *a: pytest.fail("report.html read every row at once"))
    page = render_html(out, report, {"wds": sorted(glob.glob(f"{corpus}/tars/*.tar"))})
    manifest_reads = [(path, columns) for path, columns in read if f"/{formats.MANIFEST_DIR}/" in path]
    rejected_reads = [path for path, _ in read if f"/{formats.REJECTED_DIR}/" in path]
    assert len(set(rejected_reads)) == len(rejected_reads)  # each part at most once
    # of the manifest, only the parts of the kept representatives shown beside their duplicates, three columns
    pairs = [(r, representative_of(r)) for r in rejected if r["stage"] in DEDUP_STAGES]
    reps = {rep for _, rep in pairs if rep}
    assert reps  # the demo plants duplicates
    parts = report_mod.part_paths(out, curated_layout.MANIFEST)
    shown_reps = {rep for _, rep in [(r, rep) for r, rep in pairs if rep][:NEAR_DUPLICATE_PAIRS]}
    assert sorted(manifest_reads) == sorted((parts[key_bucket(rep, len(parts))], ["key", "shard", "signals"])
                                            for rep in {key_bucket(k, len(parts)): k for k in shown_reps}.values())
    # what it shows: the first EXAMPLES_PER_REASON rows of each reason in part order, as the whole table gives
    for row in report["funnel"]:
        for reason in row["dropped"]:
            first = [r for r in rejected if (r["stage"], r["reason"]) == (row["stage"], reason)][:EXAMPLES_PER_REASON]
            for r in first:
                assert esc(f"{r['source_id']}: {r['detail'][:160]}") in page, (row["stage"], reason)
