"""report.html and pack_report.html rendered in headless Chromium: every chart drawn with as many bars/points as
the JSON report has bins/stages/sequences, every image decoded; a screenshot of each lands in the test's tmp dir.
Also: histograms with negative values (a CLIP cosine below 0) and a failing HTML page never cost a finished job.
Skips where Chromium is absent (Debian: `apt-get install -y chromium`; .ci/run installs it)."""
import json
import os
import re
import shutil
import subprocess
import tempfile

import pytest

from vlmloom.demo.corpus import DemoCorpusConfig, build_demo_corpus
from vlmloom.demo.records import synthetic_samples
from vlmloom.packing.pack import PackConfig, pack
from vlmloom.pipelines import curate as curate_mod
from vlmloom.pipelines.report import _model_sections
from vlmloom.pipelines.report_html import render_html
from vlmloom.schemas.charts import bin_labels, histogram
from vlmloom.schemas.curated import write_curated_dir
from vlmloom.schemas.records import Message, Sample

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("headless Chromium not found: install it (Debian: apt-get install -y chromium) to run browser tests")


def _browser(page: str, *args: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args,
                               f"file://{os.path.abspath(page)}"], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def render(page: str, screenshot: str) -> str:
    """The DOM after load (scripts run), and a full-page screenshot."""
    dom = _browser(page, "--virtual-time-budget=10000", "--dump-dom")
    _browser(page, f"--screenshot={screenshot}", "--window-size=1280,3000")
    assert os.path.getsize(screenshot) > 10_000
    return dom


def charts_in(dom: str) -> dict[str, dict[str, int]]:
    """{chart id: {"bars": <rect class="bar"> count, "points": <circle class="point"> count}} from the DOM."""
    out = {}
    for chunk in dom.split('<figure class="chart"')[1:]:
        chunk = chunk.split("</figure>")[0]
        chart_id = re.search(r'data-chart="([^"]+)"', chunk).group(1)
        out[chart_id] = {"bars": len(re.findall(r'<rect class="bar"', chunk)),
                         "points": len(re.findall(r'<circle class="point"', chunk))}
    return out


def assert_images_loaded(dom: str) -> int:
    body = re.search(r"<body([^>]*)>", dom).group(1)
    total = int(re.search(r'data-images="(\d+)"', body).group(1))
    loaded = int(re.search(r'data-images-loaded="(\d+)"', body).group(1))
    assert total == loaded, f"{total - loaded} of {total} images did not load"
    return total


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    build_demo_corpus(str(root / "corpus"), DemoCorpusConfig(num_samples=50))
    out = root / "out"
    config = curate_mod.load_config({"inputs": [{"path": str(root / "corpus" / "tars" / "*.tar")}], "output": str(out)})
    return out, curate_mod.curate(config, [], progress=False)


def test_curation_report_in_a_browser(curated, tmp_path):
    out, report = curated
    dom = render(str(out / "report.html"), str(tmp_path / "report.png"))
    drawn = charts_in(dom)
    assert drawn["funnel"]["bars"] == len(report["funnel"])
    for name, h in report["histograms"].items():
        assert drawn[name]["bars"] == len(h["counts"]), name
    assert drawn["languages"]["bars"] == len(report["languages"])
    assert drawn["sources"]["bars"] == 2 * len(report["by_source"])
    reasons = {(row["stage"], reason) for row in report["funnel"] for reason in row["dropped"]}
    assert drawn["reasons"]["bars"] == len(reasons) > 5
    for (stage, reason) in reasons:
        assert f"<td>{reason}</td>" in dom, reason
    assert assert_images_loaded(dom) > 10
    # near-duplicates beside their representative, with the distance measured
    assert "Duplicates beside what they duplicate" in dom and "pHash Hamming distance" in dom
    assert re.search(r"kept: tars-[0-9a-f]+", dom)


def test_pack_report_in_a_browser(tmp_path):
    samples = synthetic_samples(40, seed=3, source="caps", kinds=("caption", "ocr", "interleaved"),
                                image_side=(20, 90))
    bad = Sample(key="caps-bad", source="caps", source_id="bad", kind="qa", answer="3",
                 messages=[Message("user", "q"), Message("assistant", "no reasoning")])
    curated = write_curated_dir(str(tmp_path / "caps"), samples + [bad], per_shard=16)
    report = pack(PackConfig(inputs=[curated], output=str(tmp_path / "packed"), seq_len=512))
    dom = render(str(tmp_path / "packed" / "pack_report.html"), str(tmp_path / "pack_report.png"))
    drawn = charts_in(dom)
    assert drawn["fill_per_sequence"]["points"] == report["sequences"] > 1
    for name, h in report["histograms"].items():
        assert drawn[name]["bars"] == len(h["counts"]), name
    assert drawn["mixture"]["bars"] == len(report["sources"])
    assert drawn["dropped"]["bars"] == len(report["dropped_by_reason"]) >= 1
    assert_images_loaded(dom)


def test_histogram_handles_negative_and_open_edges():
    h = histogram([-0.7, -0.2, 0.0, 0.05, 0.31, 0.9], [None, 0, 0.1, 0.2, 0.3, None])
    assert h["counts"] == [2, 2, 0, 0, 2] and sum(h["counts"]) == 6
    assert bin_labels(h["edges"]) == ["<0", "0–0.1", "0.1–0.2", "0.2–0.3", "≥0.3"]
    assert bin_labels([0, 4096, 1 << 20, None]) == ["0–4096", "4096–1048576", "≥1048576"]
    assert bin_labels([0.0, 0.30000000000000004, 1.33]) == ["0–0.3", "0.3–1.33"]
    closed = histogram([-5, 3, 300], [0, 10, 100])  # out of closed ends: nearest bin, nothing lost
    assert closed["counts"] == [2, 1]
    with pytest.raises(ValueError):
        histogram([1], [0, None, 5])
    sections = _model_sections([{"clip_score": -0.31}, {"clip_score": -0.02}, {"clip_score": 0.25}])
    assert sum(sections["clip"]["histogram"]["counts"]) == 3 and sections["clip"]["histogram"]["counts"][0] == 2


def test_negative_clip_scores_render(curated, tmp_path):
    out, report = curated
    with_clip = {**report, "sections": {**report["sections"], **_model_sections([{"clip_score": -0.4},
                                                                                   {"clip_score": 0.3}])}}
    page = render_html(str(out), with_clip, {})
    assert 'data-chart="clip"' in page and "&lt;0" in page


def test_a_failing_html_page_keeps_the_finished_job(curated, monkeypatch, caplog):
    out, report = curated

    def broken(*args, **kwargs):
        raise ValueError("could not convert string to float: '-1-0'")

    monkeypatch.setattr(curate_mod, "render_html", broken)
    copy = dict(report)
    config = curate_mod.load_config({"inputs": [{"path": str(out.parent / "corpus" / "tars" / "*.tar")}], "output": str(out)})
    curate_mod._render_html(str(out), copy, config)  # must not raise: the caller then publishes the data
    assert "'-1-0'" in copy["report_html_error"]
    assert "report.html not written" in caplog.text
