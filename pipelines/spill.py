"""Kept samples wait for their bucket's writer on disk, not in the runner's memory (the local runners).

    samples | "KeptByBucket" >> SpilledByBucket(spill_dir, bucket_fn)   → (bucket, references of the bundle's samples)
    ... GroupByKey ...
    for pickled in read_spilled(spill_dir, values): ...                 # in the bucket's writer
    samples | "Wait" >> SpilledSamples(directory)   → one reference per run of up to RUN_SAMPLES samples
    for sample in SpillReader(directory).samples(ref): ...               # the step that waited

On Beam's local runners (the DirectRunner's FnApiRunner, in-process or with worker processes) a GroupByKey's
input lives in the runner's memory until every producer is done, decoded into Python objects: the sink's
per-bucket grouping held every kept sample (a ~1.3 KB pickle, more as an object) while dedup decided, which made
peak memory grow with the corpus. Here each bundle appends its samples, pickled, to a file of its own under the
output's hidden `.spill/` directory (written through Beam's FileSystems) and passes on only references: file
name, offset, length and the number of samples there, 32 bytes. What crosses the wait is one element per many
samples where nothing else must travel with them: a bundle's samples of one bucket are one element, (bucket, file
name + their offsets and lengths, 12 bytes a sample), and a sample that waits for a side input goes in a run of
up to RUN_SAMPLES consecutive samples (RUN_BYTES at most) that one reference names, so the runner's cost per
element (encoding it, buffering it, handing it to the next stage: tens of microseconds on the local runner) is
paid once a run, not once a sample. The bucket's writer reads its samples back in file order. The same holds for
the other waits of the local job: samples waiting for a side input (key uniqueness's decisions:
`SpilledSamples`, a run read back by a `SpillReader`), for the documents stage's removals (the documents one by
one, keyed for their join; the other records in runs) and for dedup's decisions before model stages
(`ApplyDecisions`, keyed by sample); those files live in the pipeline's own temporary directory, which Beam
removes. A bundle that fails or is retried leaves a file no reference names; the job removes the
directory when it ends, whatever the outcome (curate.py, chunked.py), and for local outputs it lives inside the
staging directory anyway.

Cluster runners (Dataflow, Flink, Spark) shuffle through their own disk-backed services: spilling there would
only write every sample twice to the object store and read it back by offset, so `output_format.spill: auto`
spills on the local runners only (`spills`). The written output is byte-identical either way.
"""
from __future__ import annotations

import pickle
import struct
import uuid
from typing import Any, Callable, Iterable, Iterator, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from vlmloom.schemas.records import Sample

SPILL_DIR = ".spill"  # under the job's output (staging) directory
SPILL_MODES = ("auto", "always", "never")
_NAME_BYTES = 16  # a spill file's name: 16 hex digits of a uuid4
# offset, length, samples: big-endian, so that sorting references sorts reads by file and offset
_REF = struct.Struct(">QII")
_SPAN = struct.Struct(">QI")  # one sample of a bucket's list: offset, length
# A run of waiting samples (one element of the wait) holds at most RUN_SAMPLES samples ... The runner splits the
# next stage's input among its workers by element (decode runs after key uniqueness's wait), so runs stay short
# enough to spread a small corpus over many workers; the cost per element is still paid once a run.
RUN_SAMPLES = 64
RUN_BYTES = 8 * 2**20  # ... and at most this many bytes of them (it is read back one sample at a time anyway)
LOCAL_RUNNERS = ("", "DirectRunner", "SwitchingDirectRunner", "BundleBasedDirectRunner", "FnApiRunner")


def spill_dir(output_dir: str) -> str:
    return FileSystems.join(output_dir, SPILL_DIR)


def spills(mode: str, options, output_dir: str) -> bool:
    """Does this job spill kept samples? `auto`: on Beam's local runners writing a local output."""
    if mode != "auto":
        return mode == "always"
    return runner_name(options) in LOCAL_RUNNERS and "://" not in output_dir


def runner_name(options) -> str:
    """The runner the options name, as its class name ("" when they name none: Beam's default, the DirectRunner)."""
    runner = options.view_as(StandardOptions).runner if options is not None else None
    name = runner if isinstance(runner, str) or runner is None else type(runner).__name__
    return (name or "").split(".")[-1]


def discard(output_dir: str) -> None:
    """Remove the job's spill files (after the writer has read them, or after a failure)."""
    directory = spill_dir(output_dir)
    try:
        if FileSystems.exists(directory):
            FileSystems.delete([directory])
    except Exception:  # noqa: BLE001 - a leftover hidden directory must not fail a finished job
        pass


def reference(name: bytes, offset: int, length: int, count: int = 1) -> bytes:
    """`count` samples pickled one after the other in `length` bytes at `offset` of spill file `name`."""
    return name + _REF.pack(offset, length, count)


def _parse(ref: bytes) -> tuple[bytes, int, int, int]:
    return (ref[:_NAME_BYTES], *_REF.unpack(ref[_NAME_BYTES:]))


def spans(name: bytes, spans_: Iterable[tuple[int, int]]) -> bytes:
    """A bucket's samples of one spill file: the file's name, then each sample's (offset, length)."""
    return name + b"".join(_SPAN.pack(offset, length) for offset, length in spans_)


def read_spilled(directory: str, values: Iterable[bytes]) -> Iterator[bytes]:
    """The pickled samples that `spans` values name, read file by file in offset order."""
    wanted = []
    for value in values:
        name = value[:_NAME_BYTES]
        wanted.extend((name, offset, length) for offset, length in _SPAN.iter_unpack(value[_NAME_BYTES:]))
    reader = SpillReader(directory)
    try:
        for name, offset, length in sorted(wanted):
            yield reader.read(name, offset, length)
    finally:
        reader.close()


class SpillReader:
    """Reference → its samples, pickled (`load`, a reference to one sample) or unpickled (`samples`): keeps the
    file it read last open, so that references that arrive in their file's order read sequentially."""

    def __init__(self, directory: str):
        self._dir = directory
        self._name, self._handle, self._position = b"", None, 0

    def _seek(self, name: bytes, offset: int):
        if name != self._name:
            self.close()
            self._name = name
            self._handle = FileSystems.open(FileSystems.join(self._dir, name.decode() + ".pkl"))
            self._position = 0
        if offset != self._position:
            self._handle.seek(offset)
        return self._handle

    def read(self, name: bytes, offset: int, length: int) -> bytes:
        data = self._seek(name, offset).read(length)
        if len(data) != length:
            raise IOError(f"spill file {name.decode()}: {len(data)} of {length} bytes at offset {offset}")
        self._position = offset + length
        return data

    def load(self, ref: bytes) -> bytes:
        """The pickled sample of a one-sample reference."""
        name, offset, length, count = _parse(ref)
        if count != 1:
            raise ValueError(f"spill reference to {count} samples, where one sample was expected")
        return self.read(name, offset, length)

    def samples(self, ref: bytes) -> Iterator[Sample]:
        """The samples a reference names, unpickled one by one from the file (a run is never read whole)."""
        name, offset, length, count = _parse(ref)
        handle = self._seek(name, offset)
        self._position = -1  # moved by the loads below; set again once they all went well
        try:
            for _ in range(count):
                yield pickle.load(handle)
        except (EOFError, pickle.UnpicklingError) as exc:  # the file ends (or was overwritten) inside the run
            raise IOError(f"spill file {name.decode()}: the {count} samples at offset {offset} do not read back "
                          f"({exc or type(exc).__name__})") from exc
        if handle.tell() != offset + length:
            raise IOError(f"spill file {name.decode()}: {count} samples at offset {offset} took "
                          f"{handle.tell() - offset} bytes, not {length}")
        self._position = offset + length

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._name, self._handle = b"", None


def _on_window(value) -> WindowedValue:
    """An output of finish_bundle (which names its window): the pipeline's waits are in the global window."""
    return WindowedValue(value, MIN_TIMESTAMP, (GlobalWindow(),))


class _SpillDoFn(beam.DoFn):
    """Sample → written to this bundle's spill file (one file a bundle, closed when the bundle finishes, before the
    runner hands its output on). What it passes on, by `how`:
    - "runs": a reference per run of consecutive samples (RUN_SAMPLES, RUN_BYTES), for a step that reads them all;
    - "keyed": (key_fn(sample), a one-sample reference) per sample, for a join by a key as fine as the sample's;
    - "buckets": (key_fn(sample), `spans` of the bundle's samples under that key) per key and bundle, for keys of
      few values (the writer's buckets)."""

    def __init__(self, directory: str, how: str, key_fn: Callable[[Sample], Any] | None = None):
        self._dir, self._how, self._key_fn = directory, how, key_fn

    def start_bundle(self):
        self._file, self._name, self._offset = None, b"", 0
        self._run_start, self._run_count = 0, 0
        self._buckets: dict[Any, list[tuple[int, int]]] = {}

    def _write(self, sample: Sample) -> tuple[int, int]:
        data = pickle.dumps(sample, protocol=pickle.HIGHEST_PROTOCOL)
        if self._file is None:
            self._name = uuid.uuid4().hex[:_NAME_BYTES].encode()
            self._file = FileSystems.create(FileSystems.join(self._dir, self._name.decode() + ".pkl"))
            self._offset = 0
        self._file.write(data)
        offset, self._offset = self._offset, self._offset + len(data)
        return offset, len(data)

    def _end_run(self) -> bytes | None:
        if not self._run_count:
            return None
        ref = reference(self._name, self._run_start, self._offset - self._run_start, self._run_count)
        self._run_start, self._run_count = self._offset, 0
        return ref

    def process(self, sample: Sample):
        offset, length = self._write(sample)
        if self._how == "keyed":
            yield self._key_fn(sample), reference(self._name, offset, length)
        elif self._how == "buckets":
            key = self._key_fn(sample)
            spans_ = self._buckets.setdefault(key, [])
            spans_.append((offset, length))
            if len(spans_) >= RUN_SAMPLES:  # a bucket's list stays short: what the bundle keeps is bounded
                self._file.flush()
                yield key, spans(self._name, self._buckets.pop(key))
        else:
            self._run_count += 1
            if self._run_count >= RUN_SAMPLES or self._offset - self._run_start >= RUN_BYTES:
                self._file.flush()  # what a reference names is on disk before the reference leaves
                yield self._end_run()

    def finish_bundle(self):
        if self._file is None:
            return
        self._file.close()
        self._file = None
        if self._how == "runs":
            ref = self._end_run()
            if ref is not None:
                yield _on_window(ref)
        elif self._how == "buckets":
            for key, spans_ in sorted(self._buckets.items()):
                yield _on_window((key, spans(self._name, spans_)))
            self._buckets = {}

    def teardown(self):
        if getattr(self, "_file", None) is not None:
            self._file.close()  # a failed bundle's file: no reference to it leaves this bundle


class SpilledByBucket(beam.PTransform):
    """Sample → (key_fn(sample), its samples in a spill file under `directory`). `per_sample`: one element per
    sample, a one-sample reference (keys as fine as the samples', for a join); else one element per key and
    bundle, `spans` of the bundle's samples under that key (keys of few values: the writer's buckets)."""

    def __init__(self, directory: str, key_fn: Callable[[Sample], Any], key_type: type = int,
                 per_sample: bool = False):
        super().__init__()
        self._dir, self._key_fn, self._key_type = directory, key_fn, key_type
        self._how = "keyed" if per_sample else "buckets"

    def expand(self, samples):
        return samples | "Spill" >> beam.ParDo(_SpillDoFn(self._dir, self._how, self._key_fn)).with_output_types(
            Tuple[self._key_type, bytes])


class SpilledSamples(beam.PTransform):
    """Sample → references to runs of samples (bytes): for a step whose samples must wait for a side input (the
    local runner holds its main input until the side input exists); the step reads each run back with a
    `SpillReader` (`samples`)."""

    def __init__(self, directory: str):
        super().__init__()
        self._dir = directory

    def expand(self, samples):
        return samples | "Spill" >> beam.ParDo(_SpillDoFn(self._dir, "runs")).with_output_types(bytes)
