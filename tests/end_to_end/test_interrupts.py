"""Ctrl-C and kill -9, sent for real to real `adamllm` processes: Ctrl-C is one line and exit 130, an
interrupted format leaves its files as they were (output, summary and companions together), and a
rerun of the same command removes the temp files and staging folders a killed run of it left."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from builders import make_run, write_rows
from conftest import read_json
from PIL import Image

from adamllm.core.files import clean_stale_tmp, interrupts_held, pid_place, replaced_together
from adamllm.testing.fixtures import make_caption_pairs

FINAL = "image_caption_and_synthetic_task.json"


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def killed_runs_tmp(path: Path, pid: int, place: str | None = None) -> Path:
    """The temp file a writer of `path` with `pid` leaves when killed (files.tmp_path's name)."""
    tmp = path.with_name(f"{path.name}.tmp{pid}-{place or pid_place()}")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text("[\n{half a record")
    return tmp


def adamllm_cmd(*args):
    return [sys.executable, "-m", "adamllm", *map(str, args)]


def wait_for(predicate, what: str, timeout_s: float = 300):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def big_format_input(tmp_path, n: int):
    """A run folder formatted once from 3 records, then given an n-record input (record 1 rejected)."""
    run = make_run(tmp_path, [f"Q{i}?" for i in range(3)])
    flags = ["format", "--data_path", run["data"], "--image_folder", run["images"], "--output", run["final"]]
    assert subprocess.run(adamllm_cmd(*flags), capture_output=True).returncode == 0
    rows = []
    for i in range(n):
        Image.new("RGB", (8, 6), (i % 256, 100, 200)).save(run["images"] / f"b{i}.png")
        rows.append(
            {
                "images": [f"b{i}.png" if i != 1 else "gone.png"],
                "syn_id": i,
                "pred": "raw",
                "consistency": "yes",
                "messages": [
                    {"role": "user", "content": "<image>\nDescribe."},
                    {"role": "assistant", "content": f"Caption {i}."},
                ],
                "collected_QA": {"Q": f"Big {i}?", "precise_A": "P", "informative_A": "Long answer."},
            }
        )
    write_rows(run["out"], rows)
    return run, flags


def format_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name != "filtered_task_pairs.jsonl"}


# --- Ctrl-C --------------------------------------------------------------------------------------
def test_interrupts_are_held_while_files_are_replaced_together(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text("old a")
    b.write_text("old b")
    with pytest.raises(KeyboardInterrupt):
        with replaced_together(a, b) as (ta, tb):
            ta.write_text("new a")
            raise KeyboardInterrupt  # before the renames: nothing changes
    assert (a.read_text(), b.read_text()) == ("old a", "old b") and sorted(p.name for p in tmp_path.iterdir()) == [
        "a.json",
        "b.json",
    ]
    with pytest.raises(KeyboardInterrupt):
        with interrupts_held():
            with replaced_together(a, b) as (ta, tb):
                ta.write_text("new a")
                os.kill(os.getpid(), signal.SIGINT)  # a Ctrl-C in the commit waits for its end
                time.sleep(0.05)
    assert (a.read_text(), b.exists()) == ("new a", False)  # b had no new file: a companion this run has none of


def test_ctrl_c_during_format_leaves_output_and_summary_together(tmp_path):
    run, flags = big_format_input(tmp_path, 4000)
    before = format_files(run["out"])
    proc = subprocess.Popen(
        adamllm_cmd(*flags), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    wait_for(lambda: any(run["out"].glob(f"{FINAL}.tmp*")), "format to start writing")
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == (
        "adamllm format: interrupted; no output was half-written (each file is replaced whole, or left as it was); the "
        "same command starts again"
    )
    after = format_files(run["out"])
    if after != before:  # the interrupt came in the commit: then every file is the new run's
        assert read_json(run["final"].with_name("image_caption_and_synthetic_task.summary.json"))["records_out"] == 3999
    summary = read_json(run["final"].with_name("image_caption_and_synthetic_task.summary.json"))
    assert summary["records_out"] == len(read_json(run["final"]))
    assert not list(run["out"].glob("*.tmp*"))
    result = subprocess.run(adamllm_cmd(*flags), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_json(run["final"].with_name("image_caption_and_synthetic_task.summary.json"))
    assert summary["records_out"] == len(read_json(run["final"])) == 3999 and summary["rejected"] == {
        "image_missing": 1
    }


@pytest.mark.slow
def test_ctrl_c_during_synthesis_is_one_line_and_the_same_command_resumes(tiny_models, tmp_path):
    from adamllm.stage2.synthesize import SynthesizeArgs, run_synthesize

    pairs = make_caption_pairs(tmp_path / "pairs", 12, seed=8)
    flags = dict(
        model=str(tiny_models["synthesizer"]),
        data_path=str(pairs["data_path"]),
        image_folder=str(pairs["image_folder"]),
        max_new_tokens=8,
        batch_size=2,
        engine="hf",
    )
    run_synthesize(SynthesizeArgs(output_dir=str(tmp_path / "whole"), **flags))
    out = tmp_path / "out"
    cmd = adamllm_cmd("synthesize", *[x for k, v in flags.items() for x in (f"--{k}", v)], "--output_dir", out)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    shard = out / "shards" / "syn_task_triplets.000-of-001.jsonl"
    wait_for(lambda: shard.exists() and shard.read_text().count("\n") >= 2, "the first batch")
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == (
        f"adamllm synthesize: interrupted; the records finished so far are saved in {out / 'shards'}/; the same "
        f"command resumes from them"
    )
    assert not (out / "syn_task_triplets.jsonl").exists() and shard.read_text().count("\n") < 12
    # What a kill -9 of the merge leaves: a dead pid of this host is removed at once, not after 60 s.
    stale = [
        killed_runs_tmp(out / "syn_task_triplets.jsonl", dead_pid()),
        killed_runs_tmp(out / "shards" / "x.stats.json", dead_pid()),
    ]
    elsewhere = killed_runs_tmp(out / "stats.json", os.getpid(), place="0badc0de")  # another node's writer may be alive
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "syn_task_triplets.jsonl").read_bytes() == (
        tmp_path / "whole" / "syn_task_triplets.jsonl"
    ).read_bytes()
    assert not any(p.exists() for p in stale) and elsewhere.exists()


# --- kill -9 -------------------------------------------------------------------------------------
def test_a_rerun_of_format_removes_what_a_kill_9_of_it_left(tmp_path):
    run, flags = big_format_input(tmp_path, 4000)
    proc = subprocess.Popen(adamllm_cmd(*flags), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: any(run["out"].glob(f"{FINAL}.tmp*")), "format to start writing")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    left = [p.name for p in run["out"].glob("*.tmp*")]
    assert any(name.startswith(f"{FINAL}.tmp{proc.pid}-{pid_place()}") for name in left), left
    result = subprocess.run(adamllm_cmd(*flags), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not list(run["out"].glob("*.tmp*")) and len(read_json(run["final"])) == 3999


def test_a_rerun_of_merge_seed_removes_what_a_killed_run_of_it_left(seed_fixtures, tmp_path):
    output = tmp_path / "train.json"
    stale = [killed_runs_tmp(output, dead_pid()), killed_runs_tmp(tmp_path / "train.summary.json", dead_pid())]
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = killed_runs_tmp(output, sleeper.pid)  # a run of it still writing: kept
        other = killed_runs_tmp(tmp_path / "notes.json", dead_pid())  # not a file merge-seed writes: kept
        result = subprocess.run(
            adamllm_cmd(
                "merge-seed",
                "--caption_path",
                seed_fixtures["caption"],
                "--precise_qa_path",
                seed_fixtures["precise"],
                "--informative_qa_path",
                seed_fixtures["informative"],
                "--blank_image_path",
                tmp_path / "blank.png",
                "--output",
                output,
            ),
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert not any(p.exists() for p in stale) and live.exists() and other.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_rerun_of_export_removes_the_staging_folder_a_killed_export_left(tmp_path):
    pytest.importorskip("datasets")
    run = make_run(tmp_path, [f"Q{i}?" for i in range(3)])
    flags = ["--data_path", run["data"], "--image_folder", run["images"], "--output", run["final"]]
    assert subprocess.run(adamllm_cmd("format", *flags), capture_output=True).returncode == 0
    staging = tmp_path / f".hf.export.tmp{dead_pid()}-{pid_place()}"
    (staging / "cache").mkdir(parents=True)
    (staging / "cache" / "rows.arrow").write_bytes(b"\0" * 1000)
    elsewhere = tmp_path / f".hf.export.tmp{os.getpid()}-0badc0de"  # another node's, its writer maybe alive
    elsewhere.mkdir()
    os.utime(elsewhere, (time.time() - 3600, time.time() - 3600))
    result = subprocess.run(adamllm_cmd("export", run["out"], "--to", tmp_path / "hf"), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not staging.exists() and elsewhere.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["hf", "images", "out", elsewhere.name])


def test_stale_temp_files_by_where_their_writer_ran(tmp_path):
    old = time.time() - 3600
    killed_runs_tmp(tmp_path / "a.json", dead_pid())  # its writer died here: removed
    here_live = killed_runs_tmp(tmp_path / "b.json", os.getpid())
    elsewhere_fresh = killed_runs_tmp(tmp_path / "c.json", dead_pid(), place="0badc0de")
    elsewhere_old = killed_runs_tmp(tmp_path / "d.json", dead_pid(), place="0badc0de")
    unnamed_old = tmp_path / f"e.json.tmp{dead_pid()}"  # named before places were
    unnamed_old.write_text("x")
    for path in (elsewhere_old, unnamed_old):
        os.utime(path, (old, old))
    assert clean_stale_tmp(tmp_path) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([here_live.name, elsewhere_fresh.name])
