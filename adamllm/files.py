"""Writing files safely: through temp files renamed into place, cleaning up what a failed or killed
run leaves, one run at a time per output (locks), and OS errors told as a person reads them (the
path and the cause)."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shlex
import socket
import sys
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


@contextmanager
def hold_lock(path: str | os.PathLike, what: str, shared: bool = False, wait: bool = False) -> Iterator[None]:
    """Hold an flock on `path` while the block runs: another process asking for it is refused at
    once (RuntimeError naming the holder: pid, host, command, since when) or, with `wait`, waits.

    The kernel drops the lock when its holder dies, even by kill -9, so a dead run's lock is taken
    over without asking. `shared` locks (cluster shards of one stage) go together, but not with an
    exclusive one. Each holder writes who it is into the file for the message (shared holders add a
    line each); an exclusive holder removes the file as it lets go, so no lock file outlives a run
    beside the user's outputs.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(fd, mode | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise RuntimeError(f"{what} is locked by another run: {holder}. Wait for that run to end, or stop it "
                               "(a run that died holds no lock); to run both at once, give this one another output folder") from None
        except BaseException:
            os.close(fd)
            raise
        # An exclusive holder may have removed the file between our open and our lock: ours would
        # then be a lock on a file no one else sees. Lock the one at `path`.
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": shlex.join(sys.orig_argv)[:500],
                  "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        if not shared:
            os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(holder) + "\n").encode())
        yield
    finally:
        if not shared:
            path.unlink(missing_ok=True)
        os.close(fd)


def _lock_holder(fd: int) -> str:
    """Who holds a lock, as its holders wrote it: the last one still alive (shared holders that
    ended leave their line behind)."""
    said, live = [], []
    for line in os.pread(fd, 1 << 20, 0).decode("utf-8", "replace").splitlines():
        try:
            h = json.loads(line)
            said.append(f"process {h['pid']} on {h['host']} has held it since {h['since']} ({h['command']})")
        except (ValueError, KeyError, TypeError):  # a holder still writing who it is
            continue
        if h["host"] != socket.gethostname() or _alive(h["pid"]):
            live.append(said[-1])
    return (live or said or ["another process holds it"])[-1]


def describe_os_error(error: OSError) -> str:
    """An OS error as a person reads it: the path(s) and the cause, no traceback."""
    where = " -> ".join(str(f) for f in (error.filename, error.filename2) if f is not None)
    cause = error.strerror or str(error)
    return f"{where}: {cause}" if where else cause
