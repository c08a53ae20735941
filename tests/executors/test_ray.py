"""`--executor ray` on real Ray (a local instance, and a two-node cluster on this machine): the same
files as the local executor, spread over nodes, resumed after a driver kill, redone after an actor kill."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import pairs_with_bad_images, read_json, read_jsonl

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")

NEW_TOKENS = 16


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """30 generated pairs; record 3 names a missing image, record 7 a corrupt one."""
    return pairs_with_bad_images(tmp_path_factory.mktemp("pairs"), 30, seed=21, missing=3, corrupt=7)


@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes on this machine, one CPU each: what a two-node cluster looks like to the driver."""
    from ray.cluster_utils import Cluster

    two_nodes = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": 200 << 20, "include_dashboard": False},
    )
    two_nodes.add_node(num_cpus=1, object_store_memory=200 << 20)
    two_nodes.wait_for_nodes()
    yield two_nodes
    two_nodes.shutdown()


def synthesize(tiny_models, pairs, out, *extra, wait=True):
    cmd = [
        sys.executable,
        "-m",
        "adamllm",
        "synthesize",
        "--model",
        str(tiny_models["synthesizer"]),
        "--data_path",
        str(pairs["data_path"]),
        "--image_folder",
        str(pairs["image_folder"]),
        "--output_dir",
        str(out),
        "--max_new_tokens",
        str(NEW_TOKENS),
        *map(str, extra),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def local_run(tiny_models, pairs, tmp_path_factory):
    """The local executor's files: what every Ray run must reproduce byte for byte."""
    outs = {}
    for engine in ("vllm", "hf"):
        out = tmp_path_factory.mktemp(f"local-{engine}")
        synthesize(tiny_models, pairs, out, "--engine", engine, "--batch_size", 4)
        outs[engine] = out
    return outs


def same_files(a: Path, b: Path):
    for name in ("syn_task_triplets.jsonl", "syn_task_triplets.rejects.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.parametrize("engine", ["vllm", "hf"])
def test_a_local_ray_instance_writes_the_local_executors_files(tiny_models, pairs, local_run, tmp_path, engine):
    synthesize(
        tiny_models, pairs, tmp_path, "--engine", engine, "--batch_size", 4, "--executor", "ray", "--num_workers", 2
    )
    same_files(local_run[engine], tmp_path)
    stats = read_json(tmp_path / "stats.json")["synthesize"]
    assert stats["records_in"] == 30 == stats["records_out"] + sum(stats["rejected"].values())
    assert stats["rejected"] == {"image_missing": 1, "image_unreadable": 1}
    assert [r["syn_id"] for r in read_jsonl(tmp_path / "syn_task_triplets.rejects.jsonl")] == [3, 7]


def test_two_nodes_share_the_work_and_give_the_same_files(tiny_models, pairs, local_run, cluster, tmp_path):
    synthesize(
        tiny_models,
        pairs,
        tmp_path,
        "--batch_size",
        2,
        "--executor",
        "ray",
        "--ray_address",
        cluster.address,
        "--num_workers",
        2,
    )
    same_files(local_run["vllm"], tmp_path)
    assert read_json(tmp_path / "stats.json")["synthesize"]["ray_nodes"] == 2


def wait_for_lines(path: Path, n: int, proc, timeout_s: float = 240):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and path.read_text().count("\n") >= n:
            return
        time.sleep(0.05)
    raise AssertionError(
        f"{path} never reached {n} lines (exit {proc.poll()}): "
        f"{proc.stderr.read()[-2000:] if proc.poll() is not None else ''}"
    )


def test_driver_killed_then_rerun_gives_the_same_files(tiny_models, pairs, local_run, cluster, tmp_path):
    shard = tmp_path / "shards" / "syn_task_triplets.000-of-001.jsonl"
    proc = synthesize(
        tiny_models,
        pairs,
        tmp_path,
        "--batch_size",
        2,
        "--executor",
        "ray",
        "--ray_address",
        cluster.address,
        "--num_workers",
        1,
        wait=False,
    )
    wait_for_lines(shard, 4, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = shard.read_text().count("\n")
    assert 4 <= done < 30, "the kill landed after the last batch"
    assert not (tmp_path / "syn_task_triplets.jsonl").exists()
    synthesize(
        tiny_models,
        pairs,
        tmp_path,
        "--batch_size",
        2,
        "--executor",
        "ray",
        "--ray_address",
        cluster.address,
        "--num_workers",
        1,
    )
    same_files(local_run["vllm"], tmp_path)


def test_an_actor_killed_mid_run_is_restarted_and_its_records_redone(tiny_models, pairs, local_run, cluster, tmp_path):
    import psutil

    shard = tmp_path / "shards" / "syn_task_triplets.000-of-001.jsonl"
    proc = synthesize(
        tiny_models,
        pairs,
        tmp_path,
        "--batch_size",
        2,
        "--executor",
        "ray",
        "--ray_address",
        cluster.address,
        "--num_workers",
        1,
        wait=False,
    )
    wait_for_lines(shard, 2, proc)
    actors = [p for p in psutil.process_iter(["cmdline"]) if "StageActor" in " ".join(p.info["cmdline"] or [])]
    assert actors, "no StageActor process found"
    for actor in actors:
        actor.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:]
    same_files(local_run["vllm"], tmp_path)
    stats = read_json(tmp_path / "stats.json")["synthesize"]
    assert stats["records_in"] == 30 == stats["records_out"] + sum(stats["rejected"].values())


def filter_cmd(tiny_models, data_path, out, *extra):
    cmd = [
        sys.executable,
        "-m",
        "adamllm",
        "filter",
        "--model",
        str(tiny_models["checker"]),
        "--data_path",
        str(data_path),
        "--output_dir",
        str(out),
        "--engine",
        "hf",
        "--batch_size",
        "2",
        *map(str, extra),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]


def first_line_removed(lines):
    return lines[1:]


def sparse_syn_ids(lines):
    records = [json.loads(lines[i]) for i in (0, 5, 9, 10, 11, 12)]
    return [json.dumps({**r, "syn_id": i}) for r, i in zip(records, (0, 5, 9, 100, 101, 5000))]


@pytest.mark.parametrize("select", [first_line_removed, sparse_syn_ids])
def test_ray_filters_every_record_whatever_its_syn_ids(tiny_models, local_run, cluster, tmp_path, select):
    """Read tasks split the records, not the range 0..N-1 of syn_id values (which lost 198 of 199 or 4 of 6)."""
    lines = select((local_run["hf"] / "syn_task_triplets.jsonl").read_text().splitlines())
    data = tmp_path / "triplets.jsonl"
    data.write_text("".join(line + "\n" for line in lines))
    filter_cmd(tiny_models, data, tmp_path / "local")
    filter_cmd(
        tiny_models, data, tmp_path / "ray", "--executor", "ray", "--ray_address", cluster.address, "--num_workers", 2
    )
    for name in ("filtered_task_pairs.jsonl", "filtered_task_pairs.rejects.jsonl"):
        local, on_ray = tmp_path / "local" / name, tmp_path / "ray" / name
        assert local.exists() == on_ray.exists() and (
            not local.exists() or local.read_bytes() == on_ray.read_bytes()
        ), name
    out = read_jsonl(tmp_path / "ray" / "filtered_task_pairs.jsonl")
    assert [r["syn_id"] for r in out] == [json.loads(line)["syn_id"] for line in lines]
    assert read_json(tmp_path / "ray" / "stats.json")["filter"]["records_in"] == len(lines)


def test_ray_synthesizes_every_record_of_an_input_that_carries_its_own_syn_ids(tiny_models, pairs, cluster, tmp_path):
    records = read_json(pairs["data_path"])[:6]
    data = tmp_path / "pairs.json"
    data.write_text(json.dumps([{**r, "syn_id": i} for r, i in zip(records, (0, 5, 9, 100, 101, 5000))]))
    subset = {**pairs, "data_path": data}
    synthesize(tiny_models, subset, tmp_path / "local", "--engine", "hf", "--batch_size", 2)
    synthesize(
        tiny_models,
        subset,
        tmp_path / "ray",
        "--engine",
        "hf",
        "--batch_size",
        2,
        "--executor",
        "ray",
        "--ray_address",
        cluster.address,
        "--num_workers",
        2,
    )
    same_files(tmp_path / "local", tmp_path / "ray")
    assert [r["syn_id"] for r in read_jsonl(tmp_path / "ray" / "syn_task_triplets.jsonl")] == list(range(6))


def test_ray_flags_are_checked_together(tiny_models, pairs, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "adamllm",
            "synthesize",
            "--model",
            str(tiny_models["synthesizer"]),
            "--data_path",
            str(pairs["data_path"]),
            "--image_folder",
            str(pairs["image_folder"]),
            "--output_dir",
            str(tmp_path),
            "--executor",
            "ray",
            "--num_shards",
            "2",
            "--num_workers",
            "-1",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "leave out --num_shards" in result.stderr and "--num_workers -1: must be >= 0" in result.stderr


def test_run_synthesis_sh_on_ray_writes_the_same_final_files(tiny_models, pairs, cluster, tmp_path):
    script = Path(__file__).resolve().parents[2] / "QA-Synthesizer" / "vllm_inference" / "run_synthesis.sh"
    outs = {}
    for executor in ("local", "ray"):
        extra = (
            ["--executor", "ray", "--ray_address", cluster.address, "--num_workers", "2"] if executor == "ray" else []
        )
        out = tmp_path / executor
        result = subprocess.run(
            [
                "bash",
                str(script),
                str(tiny_models["synthesizer"]),
                str(tiny_models["checker"]),
                str(pairs["data_path"]),
                str(pairs["image_folder"]),
                str(out),
                "--max_new_tokens",
                str(NEW_TOKENS),
                "--batch_size",
                "4",
                *extra,
            ],
            capture_output=True,
            text=True,
            env=dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1"),
        )
        assert result.returncode == 0, result.stderr[-3000:]
        outs[executor] = out
    for name in (
        "syn_task_triplets.jsonl",
        "filtered_task_pairs.jsonl",
        "image_caption_and_synthetic_task.json",
        "image_caption_and_synthetic_task.rejects.jsonl",
        "syn_task_triplets.rejects.jsonl",
    ):
        assert (outs["local"] / name).read_bytes() == (outs["ray"] / name).read_bytes(), name
    stats = read_json(outs["ray"] / "stats.json")
    assert stats["filter"]["records_in"] == 30 and stats["filter"]["args"]["executor"] == "ray"
