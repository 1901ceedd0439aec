"""What reaches the console: vlmloom's own lines and real problems, not Beam's start-up chatter.

    configure_logging(verbose=False)   # once, in the `vlmloom` dispatcher, *before* apache_beam is imported
    with worker_stderr_filtered():     # around a run whose workers are subprocesses writing to our stderr
        pipeline.run()

Beam logs a fixed set of harmless warnings on every run (apitools/bigquery at import, pipeline options its own
DirectRunner cannot parse in its workers, the missing semi-persistent directory, worker logging set-up). The causes
we own are fixed where they arise (tagged outputs are declared, the runner is passed explicitly); the rest are
dropped by message here. `verbose` (`vlmloom -v ...`, or any of Beam's own log-level options) shows everything.

The DirectRunner's `multi_processing` workers are subprocesses that inherit our stderr file descriptor and log to
it with Python's default format before Beam's own handler exists, so a logging filter in this process cannot reach
them: `worker_stderr_filtered` puts a pipe on file descriptor 2 for the run and forwards every line but the known
noise, a worker's log line ("INFO:vlmloom.pipelines.sources:read 500 records") rewritten through the console's one
formatter (`format_worker_line`), so the console reads the same whichever process logged (their real log lines
also reach us through Beam's log channel, where the same filter applies).
No Beam import here: the dispatcher needs this before Beam is loaded.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
from typing import Iterator, TextIO

LOG_FORMAT = "%(asctime)s %(name)s %(message)s"

# Messages Beam prints on every healthy local run; matched anywhere in a log line.
BEAM_NOISE = re.compile("|".join([
    r"apitools not found, and bigquery client libraries are not available",
    r"No semi_persistent_directory found",
    r"Discarding unparseable args",
    r"Missing pipeline option \(runner\)",
    r"requested in with_outputs\(\) but not declared in type hints",
    r"Logging handler created\.",
    r"Python sdk harness (starting|exiting)",
    r"Creating state cache with size",
    r"Status HTTP server running at",
    r"Pipeline has additional dependencies to be installed in SDK worker container",
]))
# A worker subprocess's own stderr line in Python's default logging format: "LEVEL:logger:message".
_WORKER_LINE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL):([\w.]+):(.*)$", re.DOTALL)
# Beam options that choose log levels: passing one means the user wants Beam's own logging back.
BEAM_LOG_OPTIONS = ("--default_sdk_harness_log_level", "--sdk_harness_log_level_overrides")


def wants_beam_logs(beam_args: list[str]) -> bool:
    return any(arg.split("=", 1)[0] in BEAM_LOG_OPTIONS for arg in beam_args)


class BeamNoiseFilter(logging.Filter):
    """Drops the known harmless Beam messages (on a handler, so it sees records from every logger)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is a real problem: let the handler show it
            return True
        return not BEAM_NOISE.search(message)


_NOISE_FILTER = BeamNoiseFilter()


def configure_logging(verbose: bool = False) -> None:
    """INFO for vlmloom's loggers, WARNING for Beam, known noise dropped; verbose: everything at INFO."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    root.setLevel(logging.INFO)
    logging.getLogger("apache_beam").setLevel(logging.INFO if verbose else logging.WARNING)
    for handler in root.handlers:
        if verbose:
            handler.removeFilter(_NOISE_FILTER)
        elif _NOISE_FILTER not in handler.filters:
            handler.addFilter(_NOISE_FILTER)


def quiet() -> bool:
    """True unless configure_logging(verbose=True) (or nothing) set up the console."""
    return any(_NOISE_FILTER in h.filters for h in logging.getLogger().handlers)


def is_worker_noise(line: str) -> bool:
    """A worker subprocess's stderr line that the console does not need: known noise, or an INFO/DEBUG line of
    Beam's own loggers (vlmloom's INFO lines, warnings, errors and tracebacks pass)."""
    if BEAM_NOISE.search(line):
        return True
    match = _WORKER_LINE.match(line)
    return bool(match) and match.group(1) in ("DEBUG", "INFO") and not match.group(2).startswith("vlmloom")


def _console_formatter() -> logging.Formatter:
    """The formatter of the console's handler (configure_logging's), so forwarded lines look like our own."""
    for handler in logging.getLogger().handlers:
        if handler.formatter is not None:
            return handler.formatter
    return logging.Formatter(LOG_FORMAT)


def format_worker_line(line: str) -> str:
    """A worker subprocess's "LEVEL:logger:message" line as the console's formatter writes it (stamped when it
    arrives); any other line (a traceback's, a progress drawing) as it is."""
    match = _WORKER_LINE.match(line)
    if not match:
        return line
    level, name, message = match.groups()
    end = "\n" if message.endswith("\n") else ""
    record = logging.makeLogRecord({"name": name, "levelname": level, "levelno": logging.getLevelName(level),
                                    "msg": message[:len(message) - len(end)]})
    return _console_formatter().format(record) + end


@contextlib.contextmanager
def worker_stderr_filtered(enabled: bool = True) -> Iterator[TextIO]:
    """Filter what subprocesses started inside the block write to file descriptor 2; yields a text stream on the
    real stderr for live output (progress) that must not wait for a line end."""
    if not enabled:
        yield sys.stderr
        return
    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for raw in pipe:
                line = raw.decode("utf-8", "replace")
                if not is_worker_noise(line):
                    shown = format_worker_line(line)
                    os.write(real, raw if shown is line else shown.encode("utf-8"))

    thread = threading.Thread(target=forward, name="vlmloom-stderr-filter", daemon=True)
    thread.start()
    console = os.fdopen(os.dup(real), "w", buffering=1, encoding="utf-8", errors="replace")
    try:
        yield console
    finally:
        console.flush()
        sys.stderr.flush()
        os.dup2(real, 2)  # the pipe now ends when the last worker holding it exits
        thread.join(timeout=5)
        console.close()
        if not thread.is_alive():
            os.close(real)
