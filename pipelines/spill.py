"""Kept samples wait for their bucket's writer on disk, not in the runner's memory (the local runners).

    samples | "KeptByBucket" >> SpilledByBucket(spill_dir, bucket_fn)   → (bucket, 28-byte reference)
    ... GroupByKey ...
    for pickled in read_spilled(spill_dir, references): ...             # in the bucket's writer

On Beam's local runners (the DirectRunner's FnApiRunner, in-process or with worker processes) a GroupByKey's
input lives in the runner's memory until every producer is done, decoded into Python objects: the sink's
per-bucket grouping held every kept sample (a ~1.3 KB pickle, more as an object) while dedup decided, which made
peak memory grow with the corpus. Here each bundle appends its samples, pickled, to a file of its own under the
output's hidden `.spill/` directory (written through Beam's FileSystems) and passes on only (bucket, reference):
file name, offset and length, 28 bytes. The bucket's writer reads its samples back in file order. The same
holds for the other waits of the local job: samples waiting for a side input (key uniqueness's decisions:
`SpilledSamples`, read back one by one by a `SpillReader`), for the documents stage's removals and for dedup's
decisions before model stages (`ApplyDecisions`); those files live in the pipeline's own temporary directory,
which Beam removes. A bundle that fails or is retried leaves a file no reference names; the job removes the
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

from vlmloom.schemas.records import Sample

SPILL_DIR = ".spill"  # under the job's output (staging) directory
SPILL_MODES = ("auto", "always", "never")
_NAME_BYTES = 16  # a spill file's name: 16 hex digits of a uuid4
_REF = struct.Struct(">QI")  # offset, length: big-endian, so that sorting references sorts reads by file and offset
LOCAL_RUNNERS = ("", "DirectRunner", "SwitchingDirectRunner", "BundleBasedDirectRunner", "FnApiRunner")


def spill_dir(output_dir: str) -> str:
    return FileSystems.join(output_dir, SPILL_DIR)


def spills(mode: str, options, output_dir: str) -> bool:
    """Does this job spill kept samples? `auto`: on Beam's local runners writing a local output."""
    if mode != "auto":
        return mode == "always"
    runner = options.view_as(StandardOptions).runner if options is not None else None
    name = runner if isinstance(runner, str) or runner is None else type(runner).__name__
    return (name or "").split(".")[-1] in LOCAL_RUNNERS and "://" not in output_dir


def discard(output_dir: str) -> None:
    """Remove the job's spill files (after the writer has read them, or after a failure)."""
    directory = spill_dir(output_dir)
    try:
        if FileSystems.exists(directory):
            FileSystems.delete([directory])
    except Exception:  # noqa: BLE001 - a leftover hidden directory must not fail a finished job
        pass


def reference(name: bytes, offset: int, length: int) -> bytes:
    return name + _REF.pack(offset, length)


def read_spilled(directory: str, references: Iterable[bytes]) -> Iterator[bytes]:
    """The pickled samples the references name, read file by file in offset order."""
    reader = SpillReader(directory)
    try:
        for ref in sorted(references):
            yield reader.load(ref)
    finally:
        reader.close()


class SpillReader:
    """Reference → pickled sample, one at a time (a step that reads what a wait spilled, in arrival order): keeps
    the file it read last open, so that a bundle's references, which arrive in their file's order, read
    sequentially."""

    def __init__(self, directory: str):
        self._dir = directory
        self._name, self._handle, self._position = b"", None, 0

    def load(self, ref: bytes) -> bytes:
        name, (offset, length) = ref[:_NAME_BYTES], _REF.unpack(ref[_NAME_BYTES:])
        if name != self._name:
            self.close()
            self._name = name
            self._handle = FileSystems.open(FileSystems.join(self._dir, name.decode() + ".pkl"))
            self._position = 0
        if offset != self._position:
            self._handle.seek(offset)
        data = self._handle.read(length)
        if len(data) != length:
            raise IOError(f"spill file {name.decode()}: {len(data)} of {length} bytes at offset {offset}")
        self._position = offset + length
        return data

    def sample(self, ref: bytes) -> Sample:
        return pickle.loads(self.load(ref))

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._name, self._handle = b"", None


class _SpillDoFn(beam.DoFn):
    """Sample → (key_fn(sample), reference), or the reference alone without a key_fn; one spill file per bundle,
    closed when the bundle finishes (before the runner hands its output on)."""

    def __init__(self, directory: str, key_fn: Callable[[Sample], Any] | None):
        self._dir, self._key_fn = directory, key_fn

    def start_bundle(self):
        self._file, self._name, self._offset = None, b"", 0

    def process(self, sample: Sample):
        data = pickle.dumps(sample, protocol=pickle.HIGHEST_PROTOCOL)
        if self._file is None:
            self._name = uuid.uuid4().hex[:_NAME_BYTES].encode()
            self._file = FileSystems.create(FileSystems.join(self._dir, self._name.decode() + ".pkl"))
            self._offset = 0
        self._file.write(data)
        ref = reference(self._name, self._offset, len(data))
        self._offset += len(data)
        yield ref if self._key_fn is None else (self._key_fn(sample), ref)

    def finish_bundle(self):
        if self._file is not None:
            self._file.close()
            self._file = None

    def teardown(self):
        if getattr(self, "_file", None) is not None:
            self._file.close()  # a failed bundle's file: no reference to it leaves this bundle


class SpilledByBucket(beam.PTransform):
    """Sample → (key_fn(sample), reference to the pickled sample in a spill file under `directory`)."""

    def __init__(self, directory: str, key_fn: Callable[[Sample], Any], key_type: type = int):
        super().__init__()
        self._dir, self._key_fn, self._key_type = directory, key_fn, key_type

    def expand(self, samples):
        return samples | "Spill" >> beam.ParDo(_SpillDoFn(self._dir, self._key_fn)).with_output_types(
            Tuple[self._key_type, bytes])


class SpilledSamples(beam.PTransform):
    """Sample → reference (bytes): for a step whose samples must wait for a side input (the local runner holds
    its main input until the side input exists); the step reads each sample back with a `SpillReader`."""

    def __init__(self, directory: str):
        super().__init__()
        self._dir = directory

    def expand(self, samples):
        return samples | "Spill" >> beam.ParDo(_SpillDoFn(self._dir, None)).with_output_types(bytes)
