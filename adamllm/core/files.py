"""Writing files safely: through temp files renamed into place, cleaning up what a failed or killed
run leaves, one run at a time per output (locks), and OS errors told as a person reads them (the
path and the cause)."""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)


# Temp files are named NAME.tmp<pid>-<place>: per process, as shard workers write side by side, and
# <place> says where that pid means that process (this host, this boot, this pid namespace). A temp
# file of a dead pid of this place is a killed run's, safe to remove at once; one from another place
# (a node sharing the file system) may have a live writer whose pid we cannot see, so it waits
# STALE_TMP_AGE_S (as does a temp file named before places were: NAME.tmp<pid>).
_TMP = re.compile(r"\.tmp(\d+)(?:-([0-9a-f]{8}))?$")
STALE_TMP_AGE_S = 60


@cache
def pid_place() -> str:
    """A short tag of where a pid names one process: host name, boot and pid namespace."""
    parts = [socket.gethostname()]
    for source in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            parts.append(os.readlink(source) if source.endswith("/pid") else Path(source).read_text().strip())
        except OSError:
            parts.append("")
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()[:8]


def tmp_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp{os.getpid()}-{pid_place()}")


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


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) off for the block; one that came meanwhile is raised at its end. Only the
    main thread can set signal handlers; elsewhere the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught and callable(previous):
            previous(signal.SIGINT, None)  # Python's own handler raises KeyboardInterrupt
        elif caught and previous == signal.SIG_DFL:
            raise KeyboardInterrupt


@contextmanager
def replaced_together(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """Temp paths to write `paths` through, all renamed into place at the end of the block with
    Ctrl-C held off: an interrupt leaves every file old or every file new, never an output beside
    another run's summary. A path whose temp file the block did not write is removed (a companion
    file this run has none of). On an error or an interrupt in the block no path changes."""
    paths = [Path(p) for p in paths]
    tmps = [tmp_path(p) for p in paths]
    try:
        yield tmps
        with interrupts_held():
            for tmp, path in zip(tmps, paths):
                if tmp.exists():
                    os.replace(tmp, path)
                else:
                    path.unlink(missing_ok=True)
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)


def tmp_pattern(path: str | os.PathLike) -> str:
    """The glob of the temp files of `path`, relative to its folder (for `clean_stale_tmp`)."""
    return glob.escape(Path(path).name) + ".tmp*"


def clean_stale_tmp(folder: str | os.PathLike, patterns: tuple[str, ...] = ("*.tmp*", "shards/*.tmp*")) -> int:
    """Delete the temp files (or staging folders) a killed run left in `folder`; returns how many."""
    removed = 0
    folder = Path(folder)
    for tmp in [p for pattern in patterns for p in folder.glob(pattern)]:
        if not is_stale_tmp(tmp):
            continue
        try:
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    if removed:
        log.info("%s: removed %d temp file(s) left by an interrupted run", folder, removed)
    return removed


def is_stale_tmp(tmp: Path) -> bool:
    """Whether `tmp` is a temp file whose writer is gone: a dead pid of this place, or, from another
    place, not written for STALE_TMP_AGE_S."""
    match = _TMP.search(tmp.name)
    if not match:
        return False
    pid, place = int(match.group(1)), match.group(2)
    if place == pid_place():
        return not _alive(pid)
    if (place is None and _alive(pid)) or tmp.is_dir():
        return False  # a staging folder's mtime does not show a live writer: only its own place judges it
    try:
        return time.time() - tmp.stat().st_mtime > STALE_TMP_AGE_S
    except FileNotFoundError:
        return False


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
            raise RuntimeError(
                f"{what} is locked by another run: {holder}. Wait for that run to end, or stop it "
                "(a run that died holds no lock); to run both at once, give this one another output folder"
            ) from None
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
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": shlex.join(sys.orig_argv)[:500],
            "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        }
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
