"""pipelines/heap.py: Beam SDK worker processes freeze their start-up heap once; an in-process run leaves the
user's heap alone."""
from __future__ import annotations

import gc
import json
import os
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from vlmloom.pipelines import heap, progress
from beam_runners import RUNNERS


def _probe(tmp_path, runner: str) -> list[dict]:
    class Probe(progress.CountingDoFn):
        """Reports, from wherever it runs, whether it runs in an SDK worker and how much of the heap is frozen
        (a local class: cloudpickle ships it by value to worker processes that cannot import this test module)."""

        def process(self, element):
            yield json.dumps({"pid": os.getpid(), "worker": heap.in_sdk_worker(), "frozen": gc.get_freeze_count(),
                              "at": time.monotonic()})

    prefix = str(tmp_path / runner / "probe")
    with beam.Pipeline(options=PipelineOptions(RUNNERS[runner])) as pipeline:
        (pipeline
         | beam.Create(list(range(16)), reshuffle=True)
         | beam.ParDo(Probe())
         | beam.io.WriteToText(prefix, shard_name_template=""))
    with open(prefix) as fh:
        return [json.loads(line) for line in fh]


def test_worker_processes_freeze_their_heap_once(tmp_path):
    rows = _probe(tmp_path, "multi_processing")
    assert len(rows) == 16
    assert all(row["worker"] for row in rows)
    assert all(row["pid"] != os.getpid() for row in rows)
    assert all(row["frozen"] > 10_000 for row in rows), rows  # Beam's own modules alone are far more objects
    per_pid: dict[int, list[int]] = {}
    for row in sorted(rows, key=lambda row: row["at"]):
        per_pid.setdefault(row["pid"], []).append(row["frozen"])
    # Once per process: the permanent generation only shrinks afterwards (frozen objects freed by refcount leave
    # it); a second freeze would add everything allocated since.
    assert all(counts == sorted(counts, reverse=True) for counts in per_pid.values()), per_pid


def test_in_process_run_leaves_the_callers_heap_alone(tmp_path):
    before = gc.get_freeze_count()
    rows = _probe(tmp_path, "in_process")
    assert len(rows) == 16
    assert not any(row["worker"] for row in rows)
    assert {row["pid"] for row in rows} == {os.getpid()}
    assert {row["frozen"] for row in rows} == {before}
    assert gc.get_freeze_count() == before
    assert heap.settle_worker_heap() is False


def test_settles_only_under_the_sdk_harness(monkeypatch):
    """The check is on __main__'s module spec, the way `python -m ...sdk_worker_main` starts every Beam worker."""
    import sys
    import types

    fake_main = types.ModuleType("__main__")
    fake_main.__spec__ = types.SimpleNamespace(name=heap.SDK_HARNESS)
    monkeypatch.setitem(sys.modules, "__main__", fake_main)
    assert heap.in_sdk_worker()
    monkeypatch.setattr(heap, "_settled", True)  # already settled: no second freeze (it would pin live samples)
    before = gc.get_freeze_count()
    assert heap.settle_worker_heap() is False
    assert gc.get_freeze_count() == before
    fake_main.__spec__ = types.SimpleNamespace(name=heap.WORKER_POOL)  # the EXTERNAL pool's harness threads
    assert heap.in_sdk_worker()
    fake_main.__spec__ = types.SimpleNamespace(name="pytest")
    assert not heap.in_sdk_worker()
    fake_main.__spec__ = None  # python -c ...
    assert not heap.in_sdk_worker()

