"""Publish an output directory atomically (local filesystems): a job writes into a fresh staging directory beside
the output, and `publish_directory` renames it into place, so the output path only ever holds a finished job.

    staging = staging_directory(output)      # OUTPUT.tmp-XXXXXXXX, created empty
    ... write everything under staging, `_SUCCESS` last ...
    publish_directory(staging, output, overwrite=...)   # or discard_staging(staging) on failure

Used by `vlmloom curate` (local outputs) and `vlmloom pack`.
"""
from __future__ import annotations

import os
import shutil
import uuid

from vlmloom.schemas.config import ConfigError


def staging_directory(output: str) -> str:
    """Create and return an empty sibling of `output` to write the job into."""
    staging = f"{os.path.normpath(output)}.tmp-{uuid.uuid4().hex[:8]}"
    os.makedirs(staging)
    return staging


def publish_directory(staging: str, output: str, overwrite: bool) -> None:
    """Rename `staging` to `output`. An existing empty directory is replaced; a non-empty one only with
    `overwrite`, and then it is moved aside first and deleted after the rename."""
    if os.path.isdir(output) and not os.listdir(output):
        os.rmdir(output)
    if not os.path.exists(output):
        os.rename(staging, output)
        return
    if not overwrite:
        raise ConfigError(f"output {output} appeared while the job ran; nothing was replaced (pass --overwrite)")
    old = f"{os.path.normpath(output)}.old-{uuid.uuid4().hex[:8]}"
    os.rename(output, old)
    os.rename(staging, output)
    shutil.rmtree(old)


def discard_staging(staging: str) -> None:
    shutil.rmtree(staging, ignore_errors=True)
