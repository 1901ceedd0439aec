"""Live progress of a running `curate` job: per stage, records in, kept and rejected so far, rate, elapsed.

    counter("decode", "kept").inc()       # in a DoFn: Beam's counter, mirrored to the live tally
    with LiveProgress(["read", "decode", ...], enabled=True, stream=sys.stderr) as live:
        pipeline.run().wait_until_finish()
        live.finish(beam_counters)        # the last drawing shows the counters the report uses

Workers mirror each counter increment into schemas/progress.py's per-process tally files; a thread of the main
process sums them every REFRESH_SECONDS and redraws: `read` as a counter line (its total is not known in advance),
every later stage as a bar whose total is what the stage before it has passed on so far. Nothing here changes the
pipeline or its output; with progress off the tally is a no-op.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import warnings
from typing import Any, TextIO

import apache_beam as beam
from apache_beam.metrics import Metrics
from tqdm.contrib.logging import logging_redirect_tqdm

from vlmloom.pipelines.heap import settle_worker_heap
from vlmloom.schemas.progress import PROGRESS_ENV, flush_tally, progress_bar, read_tallies, tally

REFRESH_SECONDS = 1.0
READ_STAGE = "read"


class MirroredCounter:
    """A Beam counter whose increments also reach the live tally (picklable: DoFns carry it to workers)."""

    def __init__(self, namespace: str, name: str):
        self._metric = Metrics.counter(namespace, name)
        self._name = f"{namespace}/{name}"

    def inc(self, n: int = 1) -> None:
        self._metric.inc(n)
        tally(self._name, n)


def counter(namespace: str, name: str) -> MirroredCounter:
    return MirroredCounter(namespace, name)


class CountingDoFn(beam.DoFn):
    """Base of DoFns that use `counter()`: the tally is written at the end of every bundle, so a finished run's
    files hold every count. Its set-up settles an SDK worker's start-up heap (pipelines/heap.py): every job
    reads through one, so each worker process freezes its heap before the first sample."""

    def setup(self) -> None:
        settle_worker_heap()
        # RunInference's batch-size estimator fits a line through its first few timings and numpy warns (divide
        # by zero, poorly conditioned polyfit) on every healthy run; the estimate is still used, the lines are noise.
        warnings.filterwarnings("ignore", module=r"apache_beam\.transforms\.util")

    def finish_bundle(self) -> None:
        flush_tally()


def stage_counts(counts: dict[str, int], stages: list[str]) -> list[dict[str, int]]:
    """[{stage, in, kept, rejected}] from counter totals; `in` of a stage is what the one before passed on."""
    rows = []
    read = counts.get(f"{READ_STAGE}/records", 0)
    passed = read - _dropped(counts, READ_STAGE)
    rows.append({"stage": READ_STAGE, "in": read, "kept": passed, "rejected": read - passed})
    for stage in stages:
        if stage == READ_STAGE:
            continue
        kept, rejected = counts.get(f"{stage}/kept", 0), _dropped(counts, stage)
        # A per-record judge that runs before dedup's decisions reach the samples (renderable) also passes the
        # duplicates those decisions drop in the writer: what it keeps is at most what reached it, less its drops.
        kept = min(kept, max(passed - rejected, 0))
        rows.append({"stage": stage, "in": passed, "kept": kept, "rejected": rejected})
        passed = kept
    return rows


def _dropped(counts: dict[str, int], stage: str) -> int:
    return sum(v for k, v in counts.items() if k.startswith(f"{stage}/dropped_"))


class LiveProgress:
    """Draws stage_counts() of the running job every REFRESH_SECONDS while the block runs (if enabled)."""

    def __init__(self, stages: list[str], *, enabled: bool, stream: TextIO | None = None):
        self._stages, self._enabled, self._stream = stages, enabled, stream
        self._bars: list[Any] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._dir = ""
        self._saved_env: str | None = None

    def __enter__(self) -> "LiveProgress":
        if not self._enabled:
            return self
        self._dir = tempfile.mkdtemp(prefix="vlmloom-progress-")
        self._saved_env = os.environ.get(PROGRESS_ENV)
        os.environ[PROGRESS_ENV] = self._dir  # before run(): subprocess workers inherit it
        rows = stage_counts({}, self._stages)
        self._bars = [progress_bar(row["stage"], None if i == 0 else 0, enabled=True, file=self._stream,
                                   position=i, unit="rec") for i, row in enumerate(rows)]
        # log lines printed while the bars are drawn go above them instead of through them
        self._redirect = logging_redirect_tqdm()
        self._redirect.__enter__()
        self._thread = threading.Thread(target=self._poll, name="vlmloom-progress", daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(REFRESH_SECONDS):
            self._draw(read_tallies(self._dir))

    def _draw(self, counts: dict[str, int]) -> None:
        for bar, row in zip(self._bars, stage_counts(counts, self._stages)):
            done = row["in"] if row["stage"] == READ_STAGE else row["kept"] + row["rejected"]
            if bar.total is not None:
                bar.total = max(row["in"], done)
            bar.set_postfix_str(f"kept {row['kept']}, rejected {row['rejected']}", refresh=False)
            bar.update(done - bar.n)
            bar.refresh()

    def finish(self, counters: dict[str, int] | None = None) -> None:
        """Stop polling and draw the final counts: Beam's committed counters when the runner reported them."""
        if not self._enabled or self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        flush_tally()
        self._draw(counters if counters else read_tallies(self._dir))
        for bar in self._bars:
            bar.close()
        self._redirect.__exit__(None, None, None)

    def __exit__(self, *exc_info) -> None:
        if not self._enabled:
            return
        self.finish()
        if self._saved_env is None:
            os.environ.pop(PROGRESS_ENV, None)
        else:
            os.environ[PROGRESS_ENV] = self._saved_env
        shutil.rmtree(self._dir, ignore_errors=True)
