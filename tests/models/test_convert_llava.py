"""adamllm convert-llava on a tiny checkpoint in the LLaVA repository's layout, built here from the tiny
llava-hf synthesizer: every weight back in place, the same logits, and the result serves in vLLM."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from builders import hf_weights, make_llava_repo_checkpoint
from conftest import read_jsonl

from adamllm.core import prompts

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def convert(src: Path, out: Path, *extra):
    return subprocess.run(
        [sys.executable, "-m", "adamllm", "convert-llava", str(src), str(out), *extra], capture_output=True, text=True
    )


@pytest.mark.parametrize("with_tower,bin_weights", [(True, False), (False, True)])
def test_every_weight_returns_to_its_place(tiny_models, tmp_path, with_tower, bin_weights):
    src = make_llava_repo_checkpoint(
        tiny_models["synthesizer"], tmp_path, with_tower=with_tower, bin_weights=bin_weights
    )
    result = convert(src, tmp_path / "hf")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == str(tmp_path / "hf")  # BASE_MODEL=$(adamllm convert-llava ...)
    original, converted = hf_weights(tiny_models["synthesizer"]), hf_weights(tmp_path / "hf")
    assert sorted(original) == sorted(converted)
    assert all(original[k].equal(converted[k]) for k in original)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == "llava_next" and config["vision_feature_select_strategy"] == "default"
    assert config["vision_feature_layer"] == -2 and config["image_grid_pinpoints"] == [[56, 112], [112, 56], [112, 112]]


def test_same_logits_and_it_serves_in_vllm(tiny_models, tmp_path):
    import torch
    from PIL import Image

    from adamllm.models.model_io import load_synthesizer

    src = make_llava_repo_checkpoint(tiny_models["synthesizer"], tmp_path)
    assert convert(src, tmp_path / "hf").returncode == 0
    image = Image.open(ROOT / "data_samples" / "images" / "food_mince_pie.jpg").convert("RGB")
    logits = []
    for folder in (tiny_models["synthesizer"], tmp_path / "hf"):
        model, processor = load_synthesizer(str(folder), torch.float32)
        assert processor.image_token == "<|reserved_special_token_4|>"
        inputs = processor(
            images=image,
            text=prompts.synthesizer_prompt("A mince pie on a plate.", processor.image_token),
            return_tensors="pt",
        )
        with torch.no_grad():
            logits.append(model(**inputs).logits)
    assert torch.equal(logits[0], logits[1])
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "adamllm",
            "synthesize",
            "--model",
            str(tmp_path / "hf"),
            "--data_path",
            str(ROOT / "data_samples" / "image_caption_pairs.json"),
            "--image_folder",
            str(ROOT / "data_samples" / "images"),
            "--output_dir",
            str(tmp_path / "out"),
            "--limit",
            "2",
            "--max_new_tokens",
            "8",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert all(isinstance(r["pred"], str) for r in read_jsonl(tmp_path / "out" / "syn_task_triplets.jsonl"))


@pytest.mark.parametrize(
    "config_edit,weights_edit,message",
    [
        (None, lambda w: w.pop("model.norm.weight"), "missing language_model.model.norm.weight"),
        (
            None,
            lambda w: w.__setitem__("model.mm_projector.4.weight", w["model.mm_projector.2.weight"].clone()),
            "have no place in LlavaNext: model.mm_projector.4.weight",
        ),
        (lambda c: c.__setitem__("mm_projector_type", "linear"), None, "mm_projector_type 'linear': only mlp2x_gelu"),
        (
            lambda c: c.__setitem__("image_aspect_ratio", "pad"),
            None,
            "image_aspect_ratio 'pad': LLaVA-NeXT's anyres is needed",
        ),
        (lambda c: c.pop("mm_vision_select_layer"), None, "mm_vision_select_layer is missing"),
    ],
)
def test_what_cannot_be_converted_is_named(tiny_models, tmp_path, config_edit, weights_edit, message):
    src = make_llava_repo_checkpoint(
        tiny_models["synthesizer"], tmp_path, config_edit=config_edit, weights_edit=weights_edit
    )
    result = convert(src, tmp_path / "hf")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "hf" / "config.json").exists()


def test_vision_tower_flag_supplies_a_tower_the_checkpoint_lacks(tiny_models, tmp_path):
    src = make_llava_repo_checkpoint(
        tiny_models["synthesizer"],
        tmp_path,
        with_tower=False,
        config_edit=lambda c: c.__setitem__("mm_vision_tower", "/nowhere/clip-vit"),
    )
    missing = convert(src, tmp_path / "first")
    assert missing.returncode == 2 and "/nowhere/clip-vit" in missing.stderr and "Traceback" not in missing.stderr
    result = convert(src, tmp_path / "hf", "--vision_tower", str(tmp_path / "clip"))
    assert result.returncode == 0, result.stderr[-3000:]
    original, converted = hf_weights(tiny_models["synthesizer"]), hf_weights(tmp_path / "hf")
    assert sorted(original) == sorted(converted) and all(original[k].equal(converted[k]) for k in original)
