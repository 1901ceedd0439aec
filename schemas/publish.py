"""Publish an output directory atomically (local filesystems): a job writes into a fresh staging directory beside
the output, and `publish_directory` renames it into place, so the output path only ever holds a finished job.

    staging = staging_directory(output)      # OUTPUT.tmp-XXXXXXXX, holding only its owner file
    ... write everything under staging, `_SUCCESS` last ...
    publish_directory(staging, output, overwrite=...)   # or discard_staging(staging) on failure

Used by `vlmloom curate` (local outputs) and `vlmloom pack`. A staging directory carries an owner file
("host pid"); the next job for the same output removes staging directories whose owner is gone (a killed run).
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import time
import uuid

from vlmloom.schemas.config import ConfigError

log = logging.getLogger(__name__)

STAGING_OWNER = "_STAGING_OWNER"  # "host pid" of the job writing a staging directory; removed before publishing
STAGING_GRACE_S = 60  # a staging directory without an owner file is stale once this old


def staging_directory(output: str) -> str:
    """Remove killed runs' staging directories of `output`, then create and return a fresh sibling of `output`
    to write the job into (holding only its owner file)."""
    remove_stale_staging(output)
    staging = f"{os.path.normpath(output)}.tmp-{uuid.uuid4().hex[:8]}"
    os.makedirs(staging)
    with open(os.path.join(staging, STAGING_OWNER), "w") as fh:
        fh.write(f"{socket.gethostname()} {os.getpid()}")
    return staging


def remove_stale_staging(output: str) -> None:
    """Remove staging directories of killed runs of the same output: their owner process is gone (same host),
    or they carry no owner file and are older than a minute. Live jobs' and other hosts' are left alone."""
    parent, prefix = os.path.dirname(os.path.abspath(output)), os.path.basename(os.path.normpath(output)) + ".tmp-"
    if not os.path.isdir(parent):
        return
    for name in sorted(os.listdir(parent)):
        path = os.path.join(parent, name)
        if not name.startswith(prefix) or not os.path.isdir(path):
            continue
        try:
            with open(os.path.join(path, STAGING_OWNER)) as fh:
                host, pid = fh.read().split()
            stale = host == socket.gethostname() and not _pid_alive(int(pid))
        except (OSError, ValueError):
            stale = time.time() - os.path.getmtime(path) > STAGING_GRACE_S
        if stale:
            log.info("removing the staging directory of a killed run: %s", path)
            shutil.rmtree(path, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def publish_directory(staging: str, output: str, overwrite: bool) -> None:
    """Rename `staging` to `output`. An existing empty directory is replaced; a non-empty one only with
    `overwrite`, and then it is moved aside first and deleted after the rename."""
    owner = os.path.join(staging, STAGING_OWNER)
    if os.path.exists(owner):
        os.remove(owner)
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
