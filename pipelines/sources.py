"""Beam sources: every input, through its registered reader (curation/formats) → Samples + read Rejections.

Files are listed when the pipeline is built (Beam FileSystems, so gs:// and s3:// work where their
extras are installed), `auto` picks the format from what the listing holds (`plan_units`: a save_to_disk
folder, tars, COCO annotation files, row files, an image folder), and units (*paths*, never bytes) are
spread by a Reshuffle and read by workers with the registered readers in `vlmloom.curation.formats`.
Per-source counts (`inputs/<source>/<code>`: records, read_file:<ext>, ignored_file:<ext>, ignored_member:<ext>,
unreadable_file:<ext>, ...) reach report.json's `by_source`; an input that yields no record fails the job.
"""
from __future__ import annotations

import logging
import os
import posixpath
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from vlmloom.curation import formats, readers
from vlmloom.curation.formats import resolve
from vlmloom.pipelines import progress
from vlmloom.schemas.config import ConfigError
from vlmloom.schemas.records import KINDS, Rejection, Sample, release_bytes

log = logging.getLogger(__name__)
PROGRESS_EVERY = 1000
COUNT_RUN = 64  # records read are added to the read counters this many at a time (and at each unit's end)
INPUTS_NAMESPACE = "inputs"  # per-source counters: inputs/<source>/<code> (records, ignored_member:npy, ...)


@dataclass(frozen=True, kw_only=True)
class InputConfig:
    path: str = ""  # a file, a glob (`data/*.tar`) or a folder; local or any Beam filesystem (gs://, s3://)
    paths: list[str] = field(default_factory=list)  # or several files of one source (a shell-expanded glob)
    name: str = ""  # source name used in keys and lineage; "" derives it from the files' folder
    format: str = "auto"  # a registered reader (curation/formats: webdataset, hf, llava, coco, ...) or auto
    kind: str = "caption"  # kind of records whose metadata does not say
    image_root: str = ""  # images named by records: relative paths resolve here (default: the file's folder) and
    # absolute paths are read only under it; "" refuses absolute paths
    fields: dict[str, str] = field(default_factory=dict)  # canonical field → the input's name: {text: TEXT, id: uid}

    def validate(self) -> None:
        if not self.path and not self.paths:
            raise ConfigError("inputs[].path is empty: give a tar/parquet/jsonl file, a glob or a folder")
        if self.path and self.paths:
            raise ConfigError("inputs[]: set either path or paths, not both")
        if self.format not in formats.format_names():
            raise ConfigError(f"inputs[].format is {self.format!r}: use one of {formats.format_names()}")
        if self.kind not in KINDS:
            raise ConfigError(f"inputs[].kind is {self.kind!r}: use one of {KINDS}")

    def patterns(self) -> list[str]:
        return list(self.paths) if self.paths else [self.path]

    def source_name(self) -> str:
        """The explicit name, else the folder the input's files live in (`raw/*.tar`, `raw/a.tar` and a
        shell-expanded `raw/a.tar raw/b.tar` all name the source `raw`, so keys do not depend on quoting)."""
        if self.name:
            return self.name
        names = {_folder_name(p) for p in self.patterns()}
        return names.pop() if len(names) == 1 else "input"


def _folder_name(path: str) -> str:
    path = path.rstrip("/")
    parts = [p for p in path.split("/") if p and not resolve.has_glob(p) and p != "."]
    last = path.split("/")[-1]
    if parts and parts[-1] == last and "." in last and not resolve.is_local_dir(path):
        parts = parts[:-1]  # a single file: name it after its folder
    return parts[-1] if parts else "input"


def group_cli_paths(paths: list[str]) -> list[dict]:
    """Command-line INPUT arguments → inputs[] entries: plain files of one folder (what the shell makes of
    `raw/*.tar`) become one input with `paths`, like the quoted glob; globs and folders stay one input each."""
    entries: list[dict] = []
    files_by_folder: dict[str, list[str]] = {}
    for path in paths:
        if resolve.has_glob(path) or path.endswith("/") or resolve.is_local_dir(path):
            entries.append({"path": path})
        else:
            files_by_folder.setdefault(posixpath.dirname(path) or ".", []).append(path)
    for folder, files in files_by_folder.items():
        entries.append({"path": files[0]} if len(files) == 1 else {"paths": sorted(files)})
    return entries


def _match(pattern: str) -> list[str]:
    result = FileSystems.match([pattern])[0]
    return sorted(m.path for m in result.metadata_list)


# Format resolution and unit planning are Beam-free (curation/formats/resolve.py, shared with the contamination
# stage's benchmarks); these names stay for this module's callers.
ROWS, plan_units = resolve.ROWS, resolve.plan_units


def resolve_input(cfg: InputConfig) -> tuple[str, list[str]]:
    """(format, sorted file list) for one input; raises ConfigError if nothing matches. The format is a
    registered reader's name, or `auto` for row files whose format each file's first row decides."""
    fmts, files = set(), set()
    for path in cfg.patterns():
        fmt, matched = _resolve_one(path, cfg.format)
        fmts.add(fmt)
        files.update(matched)
    if len(fmts) > 1:
        raise ConfigError(f"inputs[].paths {cfg.paths} mix formats {sorted(fmts)}: give each format its own input")
    return fmts.pop(), sorted(files)


def _resolve_one(path: str, fmt: str) -> tuple[str, list[str]]:
    return resolve.resolve_path(path, fmt, _match)


def planned_units(cfg: InputConfig) -> tuple[str, list, list[str]]:
    """(format, the units workers read, the files no unit reads) of one input, in their deterministic order."""
    fmt, files = resolve_input(cfg)
    units, ignored = plan_units(fmt, files, resolve.folder_root(cfg.patterns()[0]))
    return fmt, units, ignored


def _reads_raw(path: str) -> bool:
    """Is `path` a local file that FileSystems.open reads byte for byte (no compression by extension)? Its bytes
    can then be re-read by offset (ImageRef.span) instead of riding the shuffles."""
    return "://" not in path and CompressionTypes.detect_compression_type(path) == CompressionTypes.UNCOMPRESSED


class _ReadUnits(progress.CountingDoFn):
    """One unit of an input (a file, a folder record, COCO's annotation files) → Samples and read Rejections,
    through the registered reader; per-source counts go to `inputs/<source>/<code>` counters."""

    def __init__(self, source: str, fmt: str, kind: str, image_root: str, fields: dict[str, str]):
        self._source, self._fmt, self._kind, self._image_root, self._fields = source, fmt, kind, image_root, fields
        self._read = progress.counter("read", "records")
        self._counters: dict[str, progress.MirroredCounter] = {}

    def _count(self, code: str, n: int = 1) -> None:
        code = code.replace("/", "_")  # the report splits `inputs/<source>/<code>` at the last slash
        if code not in self._counters:
            self._counters[code] = progress.counter(INPUTS_NAMESPACE, f"{self._source}/{code}")
        self._counters[code].inc(n)

    def process(self, unit):
        ctx = formats.ReadContext(source=self._source, kind=self._kind, fields=self._fields,
                                  image_root=self._image_root, open=FileSystems.open, local_file=_local_file,
                                  count=self._count)
        for path in ([unit] if isinstance(unit, str) else unit if isinstance(unit, list) else []):
            self._count(f"read_file:{formats.extension(path) or 'none'}")
        count = counted = 0
        for item in resolve.read_unit(self._fmt, unit, ctx):
            count += 1
            if count - counted >= COUNT_RUN:  # counted in runs: a Beam counter's increment costs ~10 µs
                self._count_records(count - counted)
                counted = count
            if count % PROGRESS_EVERY == 0:
                log.debug("read %d records from %s ...", count, unit)
            yield item
        self._count_records(count - counted)

    def _count_records(self, n: int) -> None:
        if n:
            self._read.inc(n)
            self._count(formats.FILE_RECORDS, n)


class _CountIgnored(progress.CountingDoFn):
    """Files of an input that no reader takes: counted `ignored_file:<ext>` for the source, never passed by."""

    def __init__(self, source: str):
        self._source = source

    def process(self, path: str):
        progress.counter(INPUTS_NAMESPACE, f"{self._source}/ignored_file:{formats.extension(path) or 'none'}").inc()
        return []


def _local_file(path: str) -> str | None:
    """The local file whose bytes `FileSystems.open(path)` reads unchanged (spans), else None."""
    return os.path.realpath(path) if _reads_raw(path) else None


def check_every_input_read(inputs: list[InputConfig], counters: dict[str, int]) -> None:
    """An input that yielded no record (no sample, no read rejection) fails the job, naming it. Skipped when the
    runner reported no counters."""
    if not counters:
        return
    for cfg in inputs:
        source = cfg.source_name()
        if not counters.get(f"{INPUTS_NAMESPACE}/{source}/{formats.FILE_RECORDS}"):
            counts = {k.split("/", 2)[2]: v for k, v in sorted(counters.items())
                      if k.startswith(f"{INPUTS_NAMESPACE}/{source}/")}
            raise ConfigError(f"input {cfg.patterns()} (source {source!r}, format {cfg.format}) yielded no records "
                              f"({counts or 'nothing read'}); check inputs[].format and inputs[].fields")


class _SplitRead(progress.CountingDoFn):
    """Samples to the main output, read Rejections to `rejected`, one `read/dropped_<reason>` counter per reason."""

    def __init__(self):
        self._counters: dict[str, progress.MirroredCounter] = {}

    def process(self, item: Sample | Rejection):
        if isinstance(item, Sample):
            # Images that lie in a local input file travel as their span, not their bytes: the key shuffle and
            # every later one move metadata; decode, the model stages and the writer read the bytes again.
            yield release_bytes(item)
            return
        if item.reason not in self._counters:
            self._counters[item.reason] = progress.counter(readers.READ_STAGE, f"dropped_{item.reason}")
        self._counters[item.reason].inc()
        yield beam.pvalue.TaggedOutput("rejected", item)


class ReadInputs(beam.PTransform):
    """All inputs → {"kept": PCollection[Sample], "rejected": PCollection[Rejection]} (the `read` stage)."""

    def __init__(self, inputs: list[InputConfig], units: dict[int, tuple[int, int]] | None = None):
        super().__init__()
        self._inputs = inputs
        # A chunk of a chunked run (pipelines/chunked.py): {input index: (start, stop)} of its planned units; the
        # inputs not named are not read, and an input's unread files are counted by the chunk that holds unit 0.
        self._units = units

    def expand(self, pbegin):
        outputs = []
        names = [cfg.source_name() for cfg in self._inputs]
        if len(set(names)) != len(names):
            raise ConfigError(f"input source names {names} are not unique: set inputs[].name for each input")
        for i, cfg in enumerate(self._inputs):
            if self._units is not None and i not in self._units:
                continue
            fmt, units, ignored = planned_units(cfg)
            source = cfg.source_name()
            label = f"Input{i}_{source}"
            if not units:
                raise ConfigError(f"input {cfg.patterns()} (source {source!r}, format {fmt}) has nothing to read: "
                                  f"{len(ignored)} file(s), none of them {fmt} data")
            if self._units is not None:
                start, stop = self._units[i]
                units, ignored = units[start:stop], ignored if start == 0 else []
            pcoll = (pbegin | f"{label}/List" >> beam.Create(units, reshuffle=False)
                     | f"{label}/Spread" >> beam.Reshuffle()
                     | f"{label}/Read" >> beam.ParDo(_ReadUnits(source, fmt, cfg.kind, cfg.image_root,
                                                                dict(cfg.fields))))
            if ignored:
                _ = (pbegin | f"{label}/Unread" >> beam.Create(ignored, reshuffle=False)
                     | f"{label}/CountUnread" >> beam.ParDo(_CountIgnored(source)))
            outputs.append(pcoll)
        # (one input: no Flatten, which the FnApiRunner would materialise, encoding every sample once more)
        merged = outputs[0] if len(outputs) == 1 else outputs | "MergeInputs" >> beam.Flatten()
        split = merged | "SplitRead" >> beam.ParDo(_SplitRead()).with_output_types(
            Sample, rejected=Rejection).with_outputs("rejected", main="kept")
        return {"kept": split["kept"], "rejected": split["rejected"]}
