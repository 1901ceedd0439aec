"""Beam sources: webdataset tars, Parquet/JSONL manifests and image folders → Samples + read Rejections.

Files are listed when the pipeline is built (Beam FileSystems, so gs:// and s3:// work where their
extras are installed), distributed as *paths* (a Reshuffle of paths, never of bytes) and read by
workers with the pure readers in `vlmloom.curation.readers`.
"""
from __future__ import annotations

import io
import json
import logging
import os
import posixpath
from dataclasses import dataclass, field

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from vlmloom.curation import readers
from vlmloom.pipelines import progress
from vlmloom.schemas.config import ConfigError
from vlmloom.schemas.records import KINDS, Rejection, Sample, make_key, release_bytes

log = logging.getLogger(__name__)
PROGRESS_EVERY = 1000
FORMATS = ("auto", "webdataset", "parquet", "jsonl", "folder")


@dataclass(frozen=True, kw_only=True)
class InputConfig:
    path: str = ""  # a file, a glob (`data/*.tar`) or a folder; local or any Beam filesystem (gs://, s3://)
    paths: list[str] = field(default_factory=list)  # or several files of one source (a shell-expanded glob)
    name: str = ""  # source name used in keys and lineage; "" derives it from the files' folder
    format: str = "auto"  # auto | webdataset | parquet | jsonl | folder
    kind: str = "caption"  # kind of records whose metadata does not say
    image_root: str = ""  # manifests: absolute image_path values are read only under this root; "" refuses them

    def validate(self) -> None:
        if not self.path and not self.paths:
            raise ConfigError("inputs[].path is empty: give a tar/parquet/jsonl file, a glob or a folder")
        if self.path and self.paths:
            raise ConfigError("inputs[]: set either path or paths, not both")
        if self.format not in FORMATS:
            raise ConfigError(f"inputs[].format is {self.format!r}: use one of {FORMATS}")
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
    parts = [p for p in path.split("/") if p and not _has_glob(p) and p != "."]
    last = path.split("/")[-1]
    if parts and parts[-1] == last and "." in last and not _is_local_dir(path):
        parts = parts[:-1]  # a single file: name it after its folder
    return parts[-1] if parts else "input"


def _is_local_dir(path: str) -> bool:
    return "://" not in path and os.path.isdir(path)


def group_cli_paths(paths: list[str]) -> list[dict]:
    """Command-line INPUT arguments → inputs[] entries: plain files of one folder (what the shell makes of
    `raw/*.tar`) become one input with `paths`, like the quoted glob; globs and folders stay one input each."""
    entries: list[dict] = []
    files_by_folder: dict[str, list[str]] = {}
    for path in paths:
        if _has_glob(path) or path.endswith("/") or _is_local_dir(path):
            entries.append({"path": path})
        else:
            files_by_folder.setdefault(posixpath.dirname(path) or ".", []).append(path)
    for folder, files in files_by_folder.items():
        entries.append({"path": files[0]} if len(files) == 1 else {"paths": sorted(files)})
    return entries


def _has_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def _match(pattern: str) -> list[str]:
    result = FileSystems.match([pattern])[0]
    return sorted(m.path for m in result.metadata_list)


def resolve_input(cfg: InputConfig) -> tuple[str, list[str]]:
    """(format, sorted file list) for one input; raises ConfigError if nothing matches."""
    fmts, files = set(), set()
    for path in cfg.patterns():
        fmt, matched = _resolve_one(path, cfg.format)
        fmts.add(fmt)
        files.update(matched)
    if len(fmts) > 1:
        raise ConfigError(f"inputs[].paths {cfg.paths} mix formats {sorted(fmts)}: give each format its own input")
    return fmts.pop(), sorted(files)


def _resolve_one(path: str, fmt: str) -> tuple[str, list[str]]:
    is_dir = not _has_glob(path) and (path.endswith("/") or ("://" not in path and os.path.isdir(path)))
    if fmt == "auto":
        if is_dir:
            tars = _match(posixpath.join(path, "*.tar"))
            fmt = "webdataset" if tars else "folder"
        elif path.endswith((".tar", ".tar.gz", ".tgz")):
            fmt = "webdataset"
        elif path.endswith(".parquet"):
            fmt = "parquet"
        elif path.endswith(".jsonl") or path.endswith(".json"):
            fmt = "jsonl"
        else:
            raise ConfigError(f"input {path!r}: cannot tell its format; set inputs[].format to one of {FORMATS[1:]}")
    if fmt == "folder":
        files = _match(posixpath.join(path, "**")) if is_dir else _match(path)
    elif is_dir:
        ext = {"webdataset": "*.tar", "parquet": "*.parquet", "jsonl": "*.jsonl"}[fmt]
        files = _match(posixpath.join(path, ext))
    else:
        files = _match(path)
    if not files:
        raise ConfigError(f"input {path!r} matches no files")
    return fmt, files


def _folder_root(path: str) -> str:
    """The folder a folder input's files are named relative to: the path itself, or a glob's fixed prefix."""
    if not _has_glob(path):
        return path.rstrip("/")
    fixed = path[:min(path.index(c) for c in "*?[" if c in path)]
    return fixed.rstrip("/") if fixed.endswith("/") else posixpath.dirname(fixed)


def _reads_raw(path: str) -> bool:
    """Is `path` a local file that FileSystems.open reads byte for byte (no compression by extension)? Its bytes
    can then be re-read by offset (ImageRef.span) instead of riding the shuffles."""
    return "://" not in path and CompressionTypes.detect_compression_type(path) == CompressionTypes.UNCOMPRESSED


def _read_rejection(source: str, source_id: str, reason: str, detail: str) -> Rejection:
    source_id = readers.printable(source_id)
    return Rejection(make_key(source, source_id), source, source_id, readers.READ_STAGE, reason,
                     readers.printable(detail))


def _inside(path: str, root: str) -> bool:
    """Local files only: does `path`, with symlinks resolved, stay under `root`?"""
    real, base = os.path.realpath(path), os.path.realpath(root)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


class _ReadTar(progress.CountingDoFn):
    def __init__(self, source: str, kind: str):
        self._source, self._kind = source, kind
        self._read = progress.counter("read", "records")

    def process(self, path: str):
        count = 0
        try:
            fh = FileSystems.open(path)
        except OSError as exc:
            self._read.inc()
            yield _read_rejection(self._source, f"{posixpath.basename(path)}:<tar>", "read_error",
                                  f"{path}: {type(exc).__name__}: {exc}")
            return
        with fh:
            for item in readers.iter_tar_records(fh, path, path if _reads_raw(path) else None):
                self._read.inc()
                count += 1
                if count % PROGRESS_EVERY == 0:
                    log.info("read %d records from %s ...", count, path)
                if isinstance(item, tuple):
                    yield _read_rejection(self._source, *item)
                else:
                    yield readers.record_to_sample(item, self._source, self._kind)
        log.info("read %d records from %s", count, path)


class _ReadManifest(progress.CountingDoFn):
    def __init__(self, source: str, kind: str, fmt: str, image_root: str = ""):
        self._source, self._kind, self._fmt, self._image_root = source, kind, fmt, image_root
        self._read = progress.counter("read", "records")

    def process(self, path: str):
        base = posixpath.dirname(path)
        name = posixpath.basename(path)

        opened: dict[str, str] = {}  # image_path → the local file it was read from (for ImageRef.span)

        def open_relative(rel: str) -> bytes:
            absolute = "://" in rel or rel.startswith("/")
            full = rel if absolute else posixpath.join(base, rel)
            if "://" not in full and not _inside(full, self._image_root if absolute else base):
                raise readers.InvalidRecord("unsafe_image_path", f"{name}: image_path {rel!r} resolves (through a "
                                                                 "symlink) outside its folder")
            with FileSystems.open(full) as fh:
                data = readers.read_bytes(fh)
            if _reads_raw(full):
                opened[rel] = os.path.realpath(full)  # where the symlink check resolved it
            return data

        for index, (where, row) in enumerate(self._rows(path)):
            self._read.inc()
            if isinstance(row, Rejection):
                yield row
                continue
            opened.clear()
            sample = readers.row_to_sample(row, self._source, index, open_relative, self._kind,
                                           fallback_id=where, image_root=self._image_root)
            for image in getattr(sample, "images", ()):
                if image.uri in opened and image.bytes is not None:  # a whole local file, re-read by path
                    image.span = (opened[image.uri], 0, len(image.bytes))
            yield sample

    def _rows(self, path: str):
        """(position id, row dict or Rejection) per record; one Rejection for a file that cannot be read."""
        name = posixpath.basename(path)
        if self._fmt == "parquet":
            import pyarrow.parquet as pq

            try:
                with FileSystems.open(path) as fh:
                    parquet = pq.ParquetFile(io.BytesIO(readers.read_bytes(fh)))
                batches = parquet.iter_batches(batch_size=256)
                index = 0
                for batch in batches:
                    for row in batch.to_pylist():
                        yield f"{name}:row{index}", row
                        index += 1
            except Exception as exc:  # noqa: BLE001 - pyarrow raises several types on corrupt files
                yield name, _read_rejection(self._source, f"{name}:<parquet>", "corrupt_parquet",
                                            f"{path}: {type(exc).__name__}: {exc}")
            return
        with FileSystems.open(path) as fh:
            for line_no, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                where = f"{name}:{line_no}"
                try:
                    yield where, readers.parse_jsonl_line(line, where)
                except readers.InvalidRecord as exc:
                    yield where, _read_rejection(self._source, where, exc.reason,
                                                 f"{path} line {line_no}: {exc.detail}")


class _ReadFolderRecord(progress.CountingDoFn):
    def __init__(self, source: str, kind: str, root: str):
        self._source, self._kind, self._root = source, kind, root
        self._read = progress.counter("read", "records")

    def process(self, item: tuple[str, dict[str, str]]):
        source_id, files = item
        self._read.inc()
        data = {}
        for ext, path in files.items():
            if "://" not in path and not _inside(path, self._root):
                yield _read_rejection(self._source, source_id, "unsafe_member_path",
                                      f"{path}: a symlink that leaves the input folder {self._root}")
                return
            try:
                with FileSystems.open(path) as fh:
                    data[ext] = readers.read_bytes(fh)
            except OSError as exc:
                yield _read_rejection(self._source, source_id, "read_error", f"{path}: {type(exc).__name__}: {exc}")
                return
        first = sorted(files)[0]
        spans = {ext: (os.path.realpath(path), 0, len(data[ext])) for ext, path in files.items()
                 if _reads_raw(path)}  # the whole file, re-read where the symlink check resolved it
        yield readers.record_to_sample(
            readers.RawRecord(source_id, data, files[first][:-len(first) - 1], member_uris=dict(files), spans=spans),
            self._source, self._kind)


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

    def __init__(self, inputs: list[InputConfig]):
        super().__init__()
        self._inputs = inputs

    def expand(self, pbegin):
        outputs = []
        names = [cfg.source_name() for cfg in self._inputs]
        if len(set(names)) != len(names):
            raise ConfigError(f"input source names {names} are not unique: set inputs[].name for each input")
        for i, cfg in enumerate(self._inputs):
            fmt, files = resolve_input(cfg)
            source = cfg.source_name()
            label = f"Input{i}_{source}"
            if fmt == "folder":
                root = _folder_root(cfg.patterns()[0])
                groups = sorted(readers.group_folder_files(files, root).items())
                pcoll = (pbegin | f"{label}/List" >> beam.Create(groups, reshuffle=False)
                         | f"{label}/Spread" >> beam.Reshuffle()
                         | f"{label}/Read" >> beam.ParDo(_ReadFolderRecord(source, cfg.kind, root)))
            else:
                reader = _ReadTar(source, cfg.kind) if fmt == "webdataset" else _ReadManifest(source, cfg.kind, fmt, cfg.image_root)
                pcoll = (pbegin | f"{label}/List" >> beam.Create(files, reshuffle=False)
                         | f"{label}/Spread" >> beam.Reshuffle()
                         | f"{label}/Read" >> beam.ParDo(reader))
            outputs.append(pcoll)
        # (one input: no Flatten, which the FnApiRunner would materialise, encoding every sample once more)
        merged = outputs[0] if len(outputs) == 1 else outputs | "MergeInputs" >> beam.Flatten()
        split = merged | "SplitRead" >> beam.ParDo(_SplitRead()).with_output_types(
            Sample, rejected=Rejection).with_outputs("rejected", main="kept")
        return {"kept": split["kept"], "rejected": split["rejected"]}
