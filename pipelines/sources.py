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
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from vlmloom.curation import readers
from vlmloom.schemas.config import ConfigError
from vlmloom.schemas.records import KINDS, Rejection, Sample, make_key

log = logging.getLogger(__name__)
PROGRESS_EVERY = 1000
FORMATS = ("auto", "webdataset", "parquet", "jsonl", "folder")


@dataclass(frozen=True, kw_only=True)
class InputConfig:
    path: str  # a file, a glob (`data/*.tar`) or a folder; local or any Beam filesystem (gs://, s3://)
    name: str = ""  # source name used in keys and lineage; "" derives it from the path
    format: str = "auto"  # auto | webdataset | parquet | jsonl | folder
    kind: str = "caption"  # kind of records whose metadata does not say

    def validate(self) -> None:
        if not self.path:
            raise ConfigError("inputs[].path is empty: give a tar/parquet/jsonl file, a glob or a folder")
        if self.format not in FORMATS:
            raise ConfigError(f"inputs[].format is {self.format!r}: use one of {FORMATS}")
        if self.kind not in KINDS:
            raise ConfigError(f"inputs[].kind is {self.kind!r}: use one of {KINDS}")

    def source_name(self) -> str:
        if self.name:
            return self.name
        path = self.path.rstrip("/")
        parts = [p for p in path.split("/") if p and not any(c in p for c in "*?[")]
        if parts and "." in parts[-1] and not any(c in path.split("/")[-1] for c in "*?["):
            parts = parts[:-1]  # a single file: name it after its folder
        return parts[-1] if parts else "input"


def _has_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def _match(pattern: str) -> list[str]:
    result = FileSystems.match([pattern])[0]
    return sorted(m.path for m in result.metadata_list)


def resolve_input(cfg: InputConfig) -> tuple[str, list[str]]:
    """(format, sorted file list) for one input; raises ConfigError if nothing matches."""
    path = cfg.path
    fmt = cfg.format
    is_dir = not _has_glob(path) and (path.endswith("/") or ("://" not in path and os.path.isdir(path)))
    if fmt == "auto":
        if is_dir:
            tars = _match(posixpath.join(path, "*.tar"))
            fmt = "webdataset" if tars else "folder"
        elif path.endswith(".tar") or path.endswith(".tar.gz"):
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


class _ReadTar(beam.DoFn):
    def __init__(self, source: str, kind: str):
        self._source, self._kind = source, kind
        self._read = Metrics.counter("read", "records")

    def process(self, path: str):
        count = 0
        with FileSystems.open(path) as fh:
            for item in readers.iter_tar_records(fh, path):
                self._read.inc()
                count += 1
                if count % PROGRESS_EVERY == 0:
                    log.info("read %d records from %s ...", count, path)
                if isinstance(item, tuple):
                    source_id, reason, detail = item
                    yield Rejection(make_key(self._source, source_id), self._source, source_id,
                                    readers.READ_STAGE, reason, detail)
                else:
                    yield readers.record_to_sample(item, self._source, self._kind)
        log.info("read %d records from %s", count, path)


class _ReadManifest(beam.DoFn):
    def __init__(self, source: str, kind: str, fmt: str):
        self._source, self._kind, self._fmt = source, kind, fmt
        self._read = Metrics.counter("read", "records")

    def process(self, path: str):
        base = posixpath.dirname(path)

        def open_relative(rel: str) -> bytes:
            full = rel if "://" in rel or rel.startswith("/") else posixpath.join(base, rel)
            with FileSystems.open(full) as fh:
                return readers.read_bytes(fh)

        for index, row in enumerate(self._rows(path)):
            self._read.inc()
            if isinstance(row, Rejection):
                yield row
            else:
                yield readers.row_to_sample(row, self._source, index, open_relative, self._kind)

    def _rows(self, path: str):
        if self._fmt == "parquet":
            import pyarrow.parquet as pq

            with FileSystems.open(path) as fh:
                parquet = pq.ParquetFile(io.BytesIO(readers.read_bytes(fh)))
                for batch in parquet.iter_batches(batch_size=256):
                    yield from batch.to_pylist()
        else:
            with FileSystems.open(path) as fh:
                for line_no, line in enumerate(fh):
                    if not line.strip():
                        continue
                    try:
                        yield json.loads(line)
                    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                        source_id = f"{posixpath.basename(path)}:{line_no + 1}"
                        yield Rejection(make_key(self._source, source_id), self._source, source_id,
                                        readers.READ_STAGE, "invalid_json", f"{path} line {line_no + 1}: {exc}")


class _ReadFolderRecord(beam.DoFn):
    def __init__(self, source: str, kind: str):
        self._source, self._kind = source, kind
        self._read = Metrics.counter("read", "records")

    def process(self, item: tuple[str, dict[str, str]]):
        source_id, files = item
        self._read.inc()
        try:
            data = {}
            for ext, path in files.items():
                with FileSystems.open(path) as fh:
                    data[ext] = readers.read_bytes(fh)
        except OSError as exc:
            yield Rejection(make_key(self._source, source_id), self._source, source_id, readers.READ_STAGE,
                            "read_error", f"{type(exc).__name__}: {exc}")
            return
        yield readers.record_to_sample(readers.RawRecord(source_id, data, files.get("jpg") or source_id),
                                       self._source, self._kind)


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
                groups = sorted(readers.group_folder_files(files, cfg.path.rstrip("/")).items())
                pcoll = (pbegin | f"{label}/List" >> beam.Create(groups, reshuffle=False)
                         | f"{label}/Spread" >> beam.Reshuffle()
                         | f"{label}/Read" >> beam.ParDo(_ReadFolderRecord(source, cfg.kind)))
            else:
                reader = _ReadTar(source, cfg.kind) if fmt == "webdataset" else _ReadManifest(source, cfg.kind, fmt)
                pcoll = (pbegin | f"{label}/List" >> beam.Create(files, reshuffle=False)
                         | f"{label}/Spread" >> beam.Reshuffle()
                         | f"{label}/Read" >> beam.ParDo(reader))
            outputs.append(pcoll)
        merged = outputs | "MergeInputs" >> beam.Flatten()
        split = merged | "SplitRead" >> beam.Partition(lambda item, _: 0 if isinstance(item, Sample) else 1, 2)
        return {"kept": split[0], "rejected": split[1]}
