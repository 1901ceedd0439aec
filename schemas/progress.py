"""Live progress on the console, one look for every command (tqdm), and the counter files that carry a running
Beam job's counts from its workers to the process that draws them.

    bar = progress_bar("pack", total=n, enabled=show_progress(flag))     # pack/train: a plain tqdm bar
    # curate: every worker process keeps a tally and rewrites one small file; the main process sums them
    tally("decode/kept")                       # in a DoFn (pipelines/progress.py mirrors Beam counters here)
    totals = read_tallies(directory)           # {"decode/kept": 70, "read/records": 77, ...}

Beam's DirectRunner answers `result.metrics()` only after the run (and blocks in `run()` in-process), so live
counts cannot come from Beam metrics. The tallies are a display aid: a retried bundle may count twice here,
while the report uses Beam's committed counters. The directory is passed to workers by the environment variable
PROGRESS_ENV (the DirectRunner's subprocess workers inherit our environment), so the pipeline itself is unchanged;
without the variable `tally` does nothing.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
import uuid
from typing import Any, TextIO

PROGRESS_ENV = "VLMLOOM_PROGRESS_DIR"
FLUSH_SECONDS = 0.5  # a worker rewrites its file at most this often (and at the end of each bundle)
BAR_FORMAT = "{desc:<16}{percentage:3.0f}%|{bar:24}| {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}]{postfix}"
COUNTER_FORMAT = "{desc:<16}{n_fmt} [{elapsed}, {rate_fmt}]{postfix}"


def show_progress(requested: bool | None, stream: TextIO | None = None) -> bool:
    """Progress is drawn when asked (`--progress`), never when refused (`--no-progress`), and otherwise only
    when stdout is a terminal, so redirected output and CI logs stay clean."""
    if requested is not None:
        return requested
    stream = stream or sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)())


def progress_bar(desc: str, total: int | None = None, *, enabled: bool = True, file: TextIO | None = None,
                 position: int | None = None, initial: int = 0, unit: str = "it") -> Any:
    """The one tqdm look: a bar where the total is known, a counter line where it is not."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, file=file or sys.stderr, position=position,
                initial=initial, unit=unit, dynamic_ncols=True, smoothing=0, mininterval=0.5, leave=True,
                bar_format=BAR_FORMAT if total is not None else COUNTER_FORMAT)


class _Tally:
    """This process's counts, rewritten atomically to DIR/<pid>-<random>.json."""

    def __init__(self, directory: str):
        self.directory = directory
        self.path = os.path.join(directory, f"{os.getpid()}-{uuid.uuid4().hex[:8]}.json")
        self.counts: dict[str, int] = {}
        self.lock = threading.Lock()
        self.written = 0.0

    def add(self, name: str, n: int) -> None:
        with self.lock:
            self.counts[name] = self.counts.get(name, 0) + n
        if time.monotonic() - self.written > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        with self.lock:
            data = json.dumps(self.counts)
            self.written = time.monotonic()
        tmp = f"{self.path}.tmp-{threading.get_ident()}"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(data)
            os.replace(tmp, self.path)
        except OSError:  # the run ended and its directory is gone: progress is only a display
            pass


_TALLY: _Tally | None = None
_TALLY_LOCK = threading.Lock()


def _current() -> _Tally | None:
    global _TALLY
    directory = os.environ.get(PROGRESS_ENV)
    if not directory:
        return None
    if _TALLY is None or _TALLY.directory != directory:
        with _TALLY_LOCK:
            if _TALLY is None or _TALLY.directory != directory:
                _TALLY = _Tally(directory)
    return _TALLY


def tally(name: str, n: int = 1) -> None:
    """Add n to counter `name` ("stage/what") of the running job; a no-op when no progress is being drawn."""
    current = _current()
    if current is not None:
        current.add(name, n)


def flush_tally() -> None:
    current = _current()
    if current is not None:
        current.flush()


def read_tallies(directory: str) -> dict[str, int]:
    """The sum of every process's counts."""
    totals: dict[str, int] = {}
    try:
        names = [n for n in os.listdir(directory) if n.endswith(".json")]
    except OSError:
        return totals
    for name in names:
        try:
            with open(os.path.join(directory, name), encoding="utf-8") as fh:
                counts = json.load(fh)
        except (OSError, ValueError):  # being replaced right now: the next poll reads it
            continue
        for key, value in counts.items():
            totals[key] = totals.get(key, 0) + int(value)
    return totals
