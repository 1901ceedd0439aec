"""Beam's FileSystems as the `Files` of schemas/files.py, so the one reader of each on-disk layout
(schemas/curated.py, schemas/packed.py) reads local and object-store directories (gs://, s3://, ...) alike.

    curated.read_manifest(DIR, files=BEAM_FILES)
"""
from __future__ import annotations

from typing import BinaryIO

from apache_beam.io.filesystems import FileSystems


class BeamFiles:
    def join(self, *parts: str) -> str:
        return FileSystems.join(*parts)

    def glob(self, pattern: str) -> list[str]:
        return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)

    def open(self, path: str) -> BinaryIO:
        return FileSystems.open(path)

    def exists(self, path: str) -> bool:
        return FileSystems.exists(path)


BEAM_FILES = BeamFiles()
