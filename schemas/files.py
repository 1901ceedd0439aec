"""Where the readers of curated.py and packed.py find files: a four-call filesystem, local by default.

    curated.read_manifest(DIR)                    # LOCAL_FILES: os and glob
    curated.read_manifest(DIR, files=BEAM_FILES)  # pipelines/files.py: Beam's FileSystems (gs://, s3://, ...)

The layout modules own which paths a directory holds; a `Files` only answers for paths, so schemas/ needs no
Beam and pipelines/ reaches object stores through the same readers.
"""
from __future__ import annotations

import glob
import json
import os
from typing import Any, BinaryIO, Protocol


class Files(Protocol):
    def join(self, *parts: str) -> str:
        """Path parts joined the filesystem's way."""

    def glob(self, pattern: str) -> list[str]:
        """Paths matching `pattern` (one `*` wildcard in the last part), sorted; [] when none."""

    def open(self, path: str) -> BinaryIO:
        """A binary file object to read `path` (a context manager)."""

    def exists(self, path: str) -> bool:
        """Is there a file (or directory) at `path`?"""


class LocalFiles:
    """The local filesystem."""

    def join(self, *parts: str) -> str:
        return os.path.join(*parts)

    def glob(self, pattern: str) -> list[str]:
        return sorted(glob.glob(pattern))

    def open(self, path: str) -> BinaryIO:
        return open(path, "rb")

    def exists(self, path: str) -> bool:
        return os.path.exists(path)


LOCAL_FILES = LocalFiles()


def read_json(path: str, files: Files = LOCAL_FILES) -> Any | None:
    """The JSON document at `path`, or None when there is none (report.json, pack_report.json)."""
    if not files.exists(path):
        return None
    with files.open(path) as fh:
        return json.loads(fh.read().decode("utf-8"))
