"""bench/bench_stage1.py: the small CPU run through the real `adamllm train` path prints sane numbers;
its default configuration is the 8B's shapes; it needs neither vLLM nor Ray."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import bench_stage1  # noqa: E402


@pytest.mark.slow
def test_small_bench_trains_through_adamllm_train_and_prints_sane_numbers(tmp_path):
    env = dict(os.environ)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "bench_stage1.py"),
            "--small",
            "--work_dir",
            str(tmp_path),
            "--steps",
            "4",
            "--warmup_steps",
            "1",
            "--peak_tflops",
            "0.1",
            "--port",
            "29661",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    header = (
        "ZeRO | attention + levers | processes | batch | params | tokens/sample | padding | timed steps | s/step "
        "| tokens/s | MFU | peak memory/rank"
    )
    lines = run.stdout.splitlines()
    assert header in lines, run.stdout
    row = lines[lines.index(header) + 2].split(" | ")
    assert row[:4] == ["2", "sdpa", "2", "2"] and row[10].endswith("%") and row[11].endswith("GiB")

    result = json.loads((tmp_path / "results.json").read_text())["result"]
    assert result["timed_steps"] == 3 and result["processes"] == 2 and len(result["per_rank_peak_gib"]) == 2
    assert result["tokens_per_s"] > 0 and result["seconds_per_step"] > 0 and 0 < result["mfu"] < 1
    assert 0 < result["peak_memory_gib"] < 64 and result["device"] == "cpu"
    # 88 image tokens (the tiny 2x2 grid, filled) and about 300 text tokens per sample.
    assert 88 + 200 < result["tokens_per_sample"] < 88 + 400 and 0 <= result["padding"] < 0.5
    assert not (tmp_path / "run-zero2").exists()  # the training output is removed unless --keep


def test_default_configuration_is_the_8b_layer_shapes():
    """Built on the meta device: the shapes, not the weights."""
    import torch
    from transformers import LlavaNextForConditionalGeneration

    from adamllm.models.model_io import image_token_count
    from adamllm.testing import tiny

    args = bench_stage1.parse_args([])
    assert args.zero == 2 and args.gradient_checkpointing and not args.small and args.text_tokens == 300
    shapes = bench_stage1.EIGHT_B
    tokenizer = tiny.build_tokenizer()
    config = bench_stage1.model_config(shapes, shapes.layers, shapes.vision_layers, tokenizer)
    with torch.device("meta"):
        model = LlavaNextForConditionalGeneration(config)
    info = bench_stage1.model_info(model, Path("x"))
    assert (shapes.layers, shapes.vision_layers) == (8, 24) and round(info.params / 1e9, 2) == 3.12
    text, vision = config.text_config, config.vision_config
    assert (
        text.vocab_size,
        text.hidden_size,
        text.intermediate_size,
        text.num_attention_heads,
        text.num_key_value_heads,
    ) == (128256, 4096, 14336, 32, 8)
    assert text.rope_parameters["rope_theta"] == 500000.0 and (
        vision.hidden_size,
        vision.intermediate_size,
        vision.num_attention_heads,
    ) == (1024, 4096, 16)
    assert (vision.image_size, vision.patch_size, config.vision_feature_layer, config.projector_hidden_act) == (
        336,
        14,
        -2,
        "gelu",
    )
    processor = bench_stage1.make_processor(shapes, tokenizer)
    assert image_token_count(processor, shapes.picture, shapes.picture) == 2928  # the pictures fill the 2x2 grid


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H200", 989.4),
        ("NVIDIA H200 NVL", 835.0),
        ("NVIDIA H100 80GB HBM3", 989.4),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA GH200 480GB", 989.4),
        ("Tesla V100-SXM2-32GB", None),
    ],
)
def test_peak_tflops_from_the_device_name(name, tflops):
    assert bench_stage1.peak_tflops(name) == tflops


def test_stage1_path_needs_neither_vllm_nor_ray():
    """A GPU box with only torch, transformers, accelerate and DeepSpeed runs the benchmark."""
    code = (
        "import sys; sys.modules.update(vllm=None, ray=None); sys.path.insert(0, 'bench')\n"
        "import bench_stage1, adamllm.cli, adamllm.stage1.train, adamllm.stage1.speed, adamllm.testing.tiny, "
        "adamllm.stage1.merge_seed\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
