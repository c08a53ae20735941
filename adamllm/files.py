"""Writing files safely: through temp files renamed into place, cleaning up what a failed or killed
run leaves, and OS errors told as a person reads them (the path and the cause)."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)


# Temp files are named NAME.tmp<pid>: per process, as shard workers write side by side.
_TMP = re.compile(r"\.tmp(\d+)$")
STALE_TMP_AGE_S = 60  # on a shared file system a live writer on another node has a pid we cannot see


def tmp_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp{os.getpid()}")


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Any]:
    """Write a text file through a temp file renamed into place: readers never see half a file, and
    a write that fails (disk full) leaves neither the temp file nor a damaged target behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            yield fh
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def clean_stale_tmp(folder: str | os.PathLike) -> int:
    """Delete the temp files a killed run left in `folder` (and its shards/); returns how many."""
    removed = 0
    folder = Path(folder)
    for tmp in [*folder.glob("*.tmp*"), *folder.glob("shards/*.tmp*")]:
        match = _TMP.search(tmp.name)
        if not match or _alive(int(match.group(1))):
            continue
        try:
            if time.time() - tmp.stat().st_mtime > STALE_TMP_AGE_S:
                tmp.unlink()
                removed += 1
        except FileNotFoundError:
            pass
    if removed:
        log.info("%s: removed %d temp file(s) left by an interrupted run", folder, removed)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a whole file, streamed: an edit anywhere, even one that keeps the size, shows."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def describe_os_error(error: OSError) -> str:
    """An OS error as a person reads it: the path(s) and the cause, no traceback."""
    where = " -> ".join(str(f) for f in (error.filename, error.filename2) if f is not None)
    cause = error.strerror or str(error)
    return f"{where}: {cause}" if where else cause
