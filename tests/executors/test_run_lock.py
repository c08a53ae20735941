"""One run per output folder, with real `adamllm` processes on the tiny models (engine hf): a second
run is refused at once naming the first, a kill -9'd run's lock is taken over, cluster shards run side
by side, and a damaged shard is named and repaired by --overwrite."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adamllm.testing.fixtures import make_caption_pairs

pytestmark = pytest.mark.slow

NEW_TOKENS = 8
SHARD = "shards/syn_task_triplets.000-of-001.jsonl"
FILES = ("syn_task_triplets.jsonl", "syn_task_triplets.rejects.jsonl")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return make_caption_pairs(tmp_path_factory.mktemp("pairs"), 12, seed=17)


def command(tiny_models, pairs, out, *extra, stage="synthesize"):
    if stage == "run":
        models = ["--synthesizer", tiny_models["synthesizer"], "--checker", tiny_models["checker"]]
    else:
        models = ["--model", tiny_models["synthesizer"]]
    return [
        sys.executable,
        "-m",
        "adamllm",
        stage,
        *map(str, models),
        "--data_path",
        str(pairs["data_path"]),
        "--image_folder",
        str(pairs["image_folder"]),
        "--output_dir",
        str(out),
        "--engine",
        "hf",
        "--max_new_tokens",
        str(NEW_TOKENS),
        "--batch_size",
        "4",
        *map(str, extra),
    ]


ENV = dict(os.environ, OMP_NUM_THREADS="1")


def run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV)


def start(cmd):
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)


def wait_for_lock(lock: Path, proc, timeout_s: float = 600):
    """Until `proc` holds `lock` (its pid written in it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if f'"pid": {proc.pid},' in lock.read_text():
                return
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"process {proc.pid} never held {lock} (exit {proc.poll()})")


@pytest.fixture(scope="module")
def reference(tiny_models, pairs, tmp_path_factory):
    """One run alone: what every run here must leave."""
    out = tmp_path_factory.mktemp("reference")
    result = run(command(tiny_models, pairs, out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def same_files(a: Path, b: Path):
    for name in FILES:
        assert (a / name).exists() == (b / name).exists(), name
        if (a / name).exists():
            assert (a / name).read_bytes() == (b / name).read_bytes(), name


def refused_by(result, holder, stage="synthesize"):
    """A refusal: exit 1, one line naming the holder and what to do, no traceback, no engine loaded."""
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Loading weights" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith(f"adamllm {stage}: ")]
    assert len(lines) == 1, result.stderr[-3000:]
    assert f"is locked by another run: process {holder.pid} on {socket.gethostname()} has held it since " in lines[0]
    assert "Wait for that run to end, or stop it (a run that died holds no lock)" in lines[0]
    return lines[0]


def test_a_second_synthesize_into_the_folder_is_refused_at_once_and_the_first_finishes(
    tiny_models, pairs, reference, tmp_path
):
    first = start(command(tiny_models, pairs, tmp_path))
    wait_for_lock(tmp_path / "shards" / "syn_task_triplets.lock", first)
    os.kill(first.pid, signal.SIGSTOP)  # the first holds the folder for as long as the second takes
    try:
        second = run(command(tiny_models, pairs, tmp_path))
    finally:
        os.kill(first.pid, signal.SIGCONT)
    line = refused_by(second, first)
    assert line.startswith(
        f"adamllm synthesize: failed: {tmp_path}/syn_task_triplets.jsonl (the synthesize stage) is locked"
    )
    assert f"({sys.executable} -m adamllm synthesize --model " in line, "the holder's command"
    assert first.wait() == 0, first.stderr.read()[-3000:]
    same_files(reference, tmp_path)
    assert list((tmp_path / "shards").glob("*.lock")) == [], "the run let go of its locks"


def test_a_kill_9ed_run_leaves_a_lock_the_rerun_takes_over(tiny_models, pairs, reference, tmp_path):
    first = start(command(tiny_models, pairs, tmp_path))
    lock = tmp_path / "shards" / "syn_task_triplets.lock"
    wait_for_lock(lock, first)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert json.loads(lock.read_text())["pid"] == first.pid, "the dead run's lock file is still there"
    rerun = run(command(tiny_models, pairs, tmp_path))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    same_files(reference, tmp_path)


def test_a_second_adamllm_run_is_refused_with_one_line(tiny_models, pairs, tmp_path):
    first = start(command(tiny_models, pairs, tmp_path, stage="run"))
    wait_for_lock(tmp_path / "shards" / "run.lock", first)
    os.kill(first.pid, signal.SIGSTOP)
    try:
        second = run(command(tiny_models, pairs, tmp_path, stage="run"))
    finally:
        os.kill(first.pid, signal.SIGCONT)
    line = refused_by(second, first, stage="run")
    assert line.startswith(f"adamllm run: failed: {tmp_path} (adamllm run) is locked by another run")
    assert first.wait() == 0, first.stderr.read()[-3000:]
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["synthesize"]["records_in"] == stats["filter"]["records_in"] == stats["format"]["records_in"] == 12


def test_cluster_shards_run_side_by_side_but_one_shard_runs_once(tiny_models, pairs, reference, tmp_path):
    shard0 = start(command(tiny_models, pairs, tmp_path, "--num_shards", 2, "--shard_index", 0))
    wait_for_lock(tmp_path / "shards" / "syn_task_triplets.000-of-002.lock", shard0)
    os.kill(shard0.pid, signal.SIGSTOP)
    try:
        copy = run(command(tiny_models, pairs, tmp_path, "--num_shards", 2, "--shard_index", 0))
        whole = run(command(tiny_models, pairs, tmp_path))
        shard1 = run(command(tiny_models, pairs, tmp_path, "--num_shards", 2, "--shard_index", 1))
    finally:
        os.kill(shard0.pid, signal.SIGCONT)
    assert f"{tmp_path}/shards/syn_task_triplets.000-of-002.jsonl is locked" in refused_by(copy, shard0)
    assert f"{tmp_path}/syn_task_triplets.jsonl (the synthesize stage) is locked" in refused_by(whole, shard0)
    assert shard1.returncode == 0, shard1.stderr[-3000:]  # beside shard 0, which is still running
    assert not (tmp_path / "syn_task_triplets.jsonl").exists()
    assert shard0.wait() == 0, shard0.stderr.read()[-3000:]  # the last shard to finish merges
    same_files(reference, tmp_path)


def test_the_last_two_cluster_shards_finishing_together_merge_safely(tiny_models, pairs, reference, tmp_path):
    procs = [start(command(tiny_models, pairs, tmp_path, "--num_shards", 2, "--shard_index", i)) for i in (0, 1)]
    for proc in procs:
        assert proc.wait() == 0, proc.stderr.read()[-3000:]
    same_files(reference, tmp_path)


def tear(text: str) -> str:
    """A shard whose second line was cut short and the rest written after it (a torn line inside)."""
    lines = text.splitlines(keepends=True)
    return lines[0] + lines[1][: len(lines[1]) // 2] + "\n" + "".join(lines[2:])


def another_input(text: str) -> str:
    last = json.loads(text.splitlines()[-1])
    return text + json.dumps({**last, "syn_id": 9999}) + "\n"


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda text: text + text, "syn_id 0 is on lines 1 and 13: a record written twice (two runs into one folder?)"),
        (tear, "line 2 is not a record with an integer syn_id"),
        (another_input, "syn_id 9999 is not in the stage's input (a record of another input)"),
    ],
)
def test_a_damaged_shard_is_named_and_overwrite_repairs_it(tiny_models, pairs, reference, tmp_path, damage, problem):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    shard = out / SHARD
    shard.write_text(damage(shard.read_text()))
    refused = run(command(tiny_models, pairs, out))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert (
        f"adamllm synthesize: error: {shard}: {problem}. Rerun with --overwrite to redo this shard's records, or "
        f"delete {shard}" in refused.stderr
    )
    assert "the stage's input must hold" not in refused.stderr
    repaired = run(command(tiny_models, pairs, out, "--overwrite"))
    assert repaired.returncode == 0, repaired.stderr[-3000:]
    same_files(reference, out)
