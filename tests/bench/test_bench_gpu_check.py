"""bench/gpu_check.sh, the one script a person with a GPU runs, here in its CPU mode (GPU_CHECK_SMALL=1):
every step is listed with ok or a stated skip, the logs are packed; a failing step does not stop the
script but makes it exit non-zero. And bench_stage2.py's GPU-mode path at the tiny shapes."""

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import bench_stage2  # noqa: E402

STEPS = [
    "env",
    "tiny_models",
    "seed_fixtures",
    "stage1_tune",
    "stage2_vllm",
    "stage2_hf",
    "filter_vllm",
    "filter_hf",
    "bench_stage1_zero2",
    "bench_stage1_zero3",
    "bench_stage2",
]


def table(out: Path) -> dict[str, list[str]]:
    """step -> [status, seconds, key figure], from OUT/summary.txt."""
    rows = {}
    for line in (out / "summary.txt").read_text().splitlines()[3:]:
        cells = [c.strip() for c in line.split(" | ")]
        rows[cells[0]] = cells[1:]
    return rows


def run_check(out: Path, python: str, timeout: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, GPU_CHECK_SMALL="1", PYTHON=python, MASTER_PORT="29671")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
    )


def failed_logs(out: Path) -> str:
    """The ends of the failed steps' logs: CI keeps no tmp folder, so a failure must carry its cause."""
    lines = (out / "summary.txt").read_text().splitlines()[3:] if (out / "summary.txt").exists() else []
    failed = [line.split(" | ")[0].strip() for line in lines if "FAILED" in line]
    text = []
    for step in failed:
        for log in sorted((out / "logs").glob(f"{step}*.log")):
            text.append(f"---- {log.name} ----\n" + log.read_text(errors="replace")[-3000:])
    return "\n".join(text)


@pytest.mark.slow
def test_cpu_mode_runs_every_step_and_packs_the_logs(tmp_path):
    out = tmp_path / "gpu_check"
    run = run_check(out, sys.executable, timeout=1500)
    assert run.returncode == 0, (run.stdout + run.stderr)[-2500:] + "\n" + failed_logs(out)
    rows = table(out)
    assert list(rows) == STEPS, rows
    for step, (status, seconds, key) in rows.items():
        assert status == "ok" or (status.startswith("skipped: ") and len(status) > len("skipped: ")), (step, status)
        assert seconds.isdigit()
        if status == "ok" and step != "env":
            assert key not in ("", "-"), (step, key)
    assert rows["stage1_tune"][2].startswith("loss ") and "fp32" in rows["stage1_tune"][2]
    assert "prefill" in rows["bench_stage2"][2] and "decode" in rows["bench_stage2"][2]
    with tarfile.open(out / "gpu_check_logs.tar.gz") as tar:
        names = set(tar.getnames())
    assert {f"logs/{step}.log" for step in STEPS} | {"summary.txt"} <= names, names
    # the table is printed at the end too, and the 8B-sized caches are gone
    assert run.stdout.rstrip().splitlines()[-1].endswith("gpu_check_logs.tar.gz")
    assert not list((out / "bench_stage1").glob("model-*")) and not (out / "bench_stage2" / "model").exists()


def test_a_failing_step_is_recorded_and_the_script_goes_on(tmp_path):
    """With an interpreter that fails every command: each step fails or is skipped for a stated
    reason, the table and the tarball are still written, and the exit status is 1."""
    out = tmp_path / "gpu_check"
    run = run_check(out, shutil.which("false"), timeout=120)
    assert run.returncode == 1, run.stdout + run.stderr
    rows = table(out)
    assert list(rows) == STEPS, rows
    assert rows["env"][0] == "FAILED 1" and rows["tiny_models"][0] == "FAILED 1"
    assert rows["stage1_tune"][0].startswith("skipped: no tiny models")
    assert rows["stage2_vllm"][0].startswith("skipped: ")
    assert all(status.startswith(("FAILED", "skipped: ")) for status, _, _ in rows.values())
    with tarfile.open(out / "gpu_check_logs.tar.gz") as tar:
        assert {f"logs/{step}.log" for step in STEPS} <= set(tar.getnames())


@pytest.mark.slow
def test_bench_stage2_gpu_mode_path_at_tiny_shapes(tmp_path):
    """--small --engine hf: the GPU mode's code (random model, generated pairs, `adamllm synthesize` in
    its own process, FLOPs and the table) on a CPU; random weights run every output to max_new_tokens."""
    result = tmp_path / "rows.json"
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "bench_stage2.py"),
            "--small",
            "--engine",
            "hf",
            "--num_pairs",
            "3",
            "--max_new_tokens",
            "4",
            "--peak_tflops",
            "1",
            "--json",
            str(result),
            "--work",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    header = (
        "engine | settings | pairs | wall s | pairs/s | prompt tok/pair | prefill tok/s | decode tok/s | prefill "
        "MFU | load s"
    )
    lines = run.stdout.splitlines()
    assert header in lines and lines[lines.index(header) + 2].startswith("hf | defaults | 3 | ")
    data = json.loads(result.read_text())
    assert data["image_tokens"] == 88  # the tiny 2x2 grid, filled
    (row,) = data["rows"]
    assert row["rc"] == 0 and row["records_out"] == 3 and row["output_tokens"] == 3 * 4  # forced decode length
    assert row["prompt_tokens"] > 3 * (88 + 50) and row["prefill_tok_s"] > 0 and row["decode_tok_s"] > 0
    assert 0 < row["prefill_mfu"] and row["prefill_flops"] > 2 * row["llm_layer_params"] * row["prompt_tokens"]
    assert not (tmp_path / "work" / "model").exists()  # the random model is not kept without --model_dir


def test_flops_at_the_8b_shapes_and_the_engine_choice():
    from transformers import LlavaNextConfig

    from adamllm.testing import tiny

    b1 = bench_stage2.bench_stage1()
    config: LlavaNextConfig = b1.model_config(b1.EIGHT_B, 32, 24, tiny.build_tokenizer())
    flops, params = bench_stage2.prefill_flops(config, 672, 672, records=1, prompt_tokens=3200)
    assert params == 6_979_321_856  # Llama-3-8B's 32 layers (norms aside)
    # LLM ~44.7 TFLOP, causal attention ~2.7, vision tower + projector on 5 tiles ~2
    assert 48e12 < flops < 51e12

    fp8 = [("quantization=fp8", ["--quantization", "fp8"])]
    assert bench_stage2.choose_engine("auto", fp8, has_vllm=True) == ("vllm", fp8, [])
    engine, rows, notes = bench_stage2.choose_engine("auto", fp8, has_vllm=False)
    assert engine == "hf" and rows == [("quantization=fp8", [])] and "vLLM is not installed" in notes[0]


def test_pass_through_flags_and_compare():
    args, extra, _ = bench_stage2.parse_args(
        ["--max_num_seqs", "128", "--compare", "quantization=,fp8", "--", "--no-prefix_caching"]
    )
    assert bench_stage2.row_flags(args) == [
        ("max_num_seqs=128 quantization=none", ["--max_num_seqs", "128"]),
        ("max_num_seqs=128 quantization=fp8", ["--max_num_seqs", "128", "--quantization", "fp8"]),
    ]
    assert extra == ["--no-prefix_caching"]
    assert bench_stage2.row_flags(bench_stage2.parse_args([])[0]) == [("defaults", [])]
    with pytest.raises(SystemExit):
        bench_stage2.row_flags(bench_stage2.parse_args(["--compare", "dtype=bfloat16,float16"])[0])
