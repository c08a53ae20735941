"""files.hold_lock between real processes: a second holder is refused at once with the first's pid,
host, command and start; a holder killed with kill -9 leaves a lock that is taken over."""

import os
import signal
import socket
import subprocess
import sys
import threading

import pytest

from adamllm.core.files import hold_lock

HOLDER = """
import sys
from adamllm.core.files import hold_lock
with hold_lock(sys.argv[1], "the thing", shared=sys.argv[2] == "shared"):
    print("held", flush=True)
    sys.stdin.read()
"""


def holder(path, mode="exclusive"):
    """A process holding the lock until its stdin closes."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline() == "held\n"
    return proc


def release(proc):
    proc.stdin.close()
    assert proc.wait() == 0


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    path = tmp_path / "x.lock"
    proc = holder(path)
    with pytest.raises(RuntimeError) as error:
        with hold_lock(path, "OUT/x.jsonl (the synthesize stage)"):
            pass
    message = str(error.value)
    assert message.startswith(
        f"OUT/x.jsonl (the synthesize stage) is locked by another run: process {proc.pid} on {socket.gethostname()} "
        f"has held it since "
    )
    assert f"({sys.executable} -c " in message and f" {path} exclusive)" in message  # the holder's command line
    assert (
        "Wait for that run to end, or stop it (a run that died holds no lock); to run both at once, give this one "
        "another output folder" in message
    )
    release(proc)
    assert not path.exists(), "an exclusive holder removes its lock file as it lets go"
    with hold_lock(path, "x"):
        assert path.exists()
    assert not path.exists()


def test_a_lock_whose_holder_was_killed_is_taken_over(tmp_path):
    path = tmp_path / "x.lock"
    proc = holder(path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert str(proc.pid) in path.read_text(), "kill -9 left the lock file, naming the dead holder"
    with hold_lock(path, "x"):
        assert f'"pid": {os.getpid()}' in path.read_text()


def test_shared_holders_go_together_but_not_with_an_exclusive_one(tmp_path):
    path = tmp_path / "x.lock"
    first = holder(path, "shared")
    ended = holder(path, "shared")
    release(ended)  # its line stays in the file; the refusal names the holder still alive
    with pytest.raises(RuntimeError, match=f"is locked by another run: process {first.pid} "):
        with hold_lock(path, "x"):
            pass
    with hold_lock(path, "x", shared=True):
        pass
    release(first)
    exclusive = holder(path)
    with pytest.raises(RuntimeError, match=f"process {exclusive.pid} "):
        with hold_lock(path, "x", shared=True):
            pass
    release(exclusive)


def test_wait_waits_for_the_holder_instead_of_refusing(tmp_path):
    path = tmp_path / "x.lock"
    proc = holder(path)
    got = []

    def wait_for_it():
        with hold_lock(path, "x", wait=True):
            got.append(f'"pid": {os.getpid()}' in path.read_text())

    waiter = threading.Thread(target=wait_for_it)
    waiter.start()
    release(proc)
    waiter.join(timeout=60)
    assert got == [True]
