"""What `vlmloom curate` prints: no Beam chatter by default (in-process and with worker subprocesses), live
per-stage progress only when asked or on a terminal, and neither changes the output bytes."""
import json
import logging
import os
import re
import subprocess
import sys

import pytest

from vlmloom.demo.corpus import DemoCorpusConfig, build_demo_corpus
from vlmloom.schemas import console
from vlmloom.schemas.progress import PROGRESS_ENV, read_tallies, show_progress

# one formatter for every log line, whichever process logged it (a worker's raw "INFO:vlmloom...:" is rewritten)
OUR_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ vlmloom[\w.]* ")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("console")
    build_demo_corpus(str(root / "corpus"), DemoCorpusConfig(num_samples=50))
    return root


def _curate(root, out, *extra):
    cmd = [sys.executable, "-m", "vlmloom.cli.main", "curate", str(root / "corpus" / "tars" / "*.tar"),
           "--output", str(out), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _output_bytes(out):
    """Shards, manifest parts and rejection parts (schemas/formats.py), by relative path."""
    return {str(p.relative_to(out)): p.read_bytes() for sub in ("shards", "manifest", "rejected")
            for p in sorted((out / sub).iterdir())}


def _progress_lines(stderr: str) -> list[str]:
    return [ANSI.sub("", part).strip() for part in re.split(r"[\r\n]", stderr) if ANSI.sub("", part).strip()]


@pytest.fixture(scope="module")
def default_run(corpus):
    out = corpus / "default"
    return out, _curate(corpus, out)


def test_default_console_has_only_vlmloom_lines(default_run):
    out, done = default_run
    stray = [line for line in done.stderr.splitlines() if line.strip() and not OUR_LINE.match(line)]
    assert not stray, "lines that are not vlmloom's own reached the console:\n" + "\n".join(stray)
    assert not console.BEAM_NOISE.search(done.stderr + done.stdout)
    assert "balanced" in done.stdout
    # stdout is a pipe here: no progress unless asked
    assert "%|" not in done.stderr and "rec/s" not in done.stderr


def test_two_processes_quiet_with_live_progress_and_same_bytes(corpus, default_run):
    default_out, _ = default_run
    out = corpus / "multi"
    done = _curate(corpus, out, "--progress", "--direct_num_workers=2", "--direct_running_mode=multi_processing")
    lines = _progress_lines(done.stderr)
    report = json.loads((out / "report.json").read_text())
    stage_names = [row["stage"] for row in report["funnel"]]
    stray = [line for line in lines if not OUR_LINE.match(line) and line.split()[0] not in stage_names]
    assert not stray, "lines that are neither vlmloom's nor progress reached the console:\n" + "\n".join(stray)
    # the last drawing of each stage shows what the report says
    for row in report["funnel"]:
        drawn = [line for line in lines if line.split()[0] == row["stage"]]
        assert drawn, f"no progress line for {row['stage']}"
        rejected = sum(row["dropped"].values())
        assert f"kept {row['kept']}, rejected {rejected}" in drawn[-1], drawn[-1]
    assert _output_bytes(out) == _output_bytes(default_out)


def test_noise_filter_and_verbose():
    record = logging.LogRecord("root", logging.WARNING, __file__, 1, "apitools not found, and bigquery client "
                               "libraries are not available despite the import not raising an ImportError.", (), None)
    real = logging.LogRecord("apache_beam.runners", logging.WARNING, __file__, 1, "disk full", (), None)
    assert not console.BeamNoiseFilter().filter(record) and console.BeamNoiseFilter().filter(real)
    handler = logging.StreamHandler()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        console.configure_logging(verbose=False)
        assert console.quiet() and logging.getLogger("apache_beam").level == logging.WARNING
        console.configure_logging(verbose=True)
        assert not console.quiet() and logging.getLogger("apache_beam").level == logging.INFO
    finally:
        root.removeHandler(handler)
        console.configure_logging(verbose=False)
    assert console.wants_beam_logs(["--default_sdk_harness_log_level=INFO"]) and not console.wants_beam_logs(["--x"])


def test_worker_stderr_is_filtered_line_by_line(capfd):
    script = ("import sys; sys.stderr.write('WARNING:root:apitools not found, and bigquery client libraries are not"
              " available\\nINFO:__main__:Logging handler created.\\nINFO:vlmloom.curate:wrote shard 0\\n"
              "Traceback (most recent call last):\\n')")
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = [logging.StreamHandler()]  # the console as configure_logging leaves it (not pytest's capture)
    root.handlers[0].setFormatter(logging.Formatter(console.LOG_FORMAT))
    try:
        with console.worker_stderr_filtered(True) as stream:
            subprocess.run([sys.executable, "-c", script], check=True)
            stream.write("drawn live\n")
    finally:
        root.handlers = saved
    err = capfd.readouterr().err
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ vlmloom.curate wrote shard 0$", err, re.MULTILINE), err
    assert "INFO:vlmloom" not in err and "Traceback (most recent call last):" in err and "drawn live" in err
    assert "apitools" not in err and "Logging handler created" not in err


def test_worker_lines_take_the_console_format():
    formatter = logging.Formatter("%(levelname)s|%(name)s|%(message)s")
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = [handler]
    try:
        assert console.format_worker_line("WARNING:vlmloom.x.y:read: 3 of 4\n") == "WARNING|vlmloom.x.y|read: 3 of 4\n"
        assert console.format_worker_line("INFO:apache_beam:a:b") == "INFO|apache_beam|a:b"
        assert console.format_worker_line("  File \"x.py\", line 1\n") == "  File \"x.py\", line 1\n"
    finally:
        root.handlers = saved


def test_tallies_from_several_processes_add_up(tmp_path):
    script = ("from vlmloom.schemas.progress import tally, flush_tally\n"
              "for _ in range(5): tally('decode/kept')\ntally('read/records', 3)\nflush_tally()\n")
    env = {**os.environ, PROGRESS_ENV: str(tmp_path)}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", script], check=True, env=env)
    assert read_tallies(str(tmp_path)) == {"decode/kept": 10, "read/records": 6}


def test_progress_shown_only_on_a_terminal_unless_asked(tmp_path):
    with open(tmp_path / "f", "w") as fh:
        assert show_progress(None, fh) is False and show_progress(True, fh) is True
    with open(os.devnull, "w") as fh:
        assert show_progress(False, fh) is False



def test_worker_subprocess_counts_reach_the_main_process(tmp_path, monkeypatch):
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from vlmloom.pipelines import progress

    class CountEach(progress.CountingDoFn):  # local: pickled by value into the worker subprocesses
        def __init__(self):
            self._seen, self._odd = progress.counter("test", "seen"), progress.counter("test", "dropped_odd")

        def process(self, x):
            self._seen.inc()
            if x % 2:
                self._odd.inc()
            yield x

    monkeypatch.setenv(PROGRESS_ENV, str(tmp_path))
    options = PipelineOptions(["--runner=DirectRunner", "--direct_num_workers=2",
                               "--direct_running_mode=multi_processing"])
    with beam.Pipeline(options=options) as p:
        _ = p | beam.Create(list(range(23))) | beam.Reshuffle() | beam.ParDo(CountEach())
    pids = {name.split("-")[0] for name in os.listdir(tmp_path)}
    assert pids and str(os.getpid()) not in pids  # every count came from a worker subprocess's file
    assert read_tallies(str(tmp_path)) == {"test/seen": 23, "test/dropped_odd": 11}


def test_pack_progress_has_the_same_look_and_changes_nothing(tmp_path, capsys):
    from vlmloom.demo.records import synthetic_samples
    from vlmloom.packing.pack import PackConfig, pack
    from vlmloom.schemas.curated import write_curated_dir

    curated = write_curated_dir(str(tmp_path / "c"), synthetic_samples(20, seed=4, source="caps",
                                                                       kinds=("caption",), image_side=(20, 60)))
    reports = [pack(PackConfig(inputs=[curated], output=str(tmp_path / f"p{i}"), seq_len=512), progress=shown)
               for i, shown in enumerate((True, False))]
    err = ANSI.sub("", capsys.readouterr().err)
    assert re.search(r"pack: measure\s+20 \[", err) and re.search(r"pack: write\s+100%\|.*\| 20/20 \[", err)
    assert reports[0]["config_hash"] == reports[1]["config_hash"]
    assert {k: v for k, v in reports[0].items() if k != "config"} == {k: v for k, v in reports[1].items()
                                                                       if k != "config"}
    shards = [sorted((tmp_path / f"p{i}" / "shards").iterdir()) for i in range(2)]
    assert [p.read_bytes() for p in shards[0]] == [p.read_bytes() for p in shards[1]]
