"""Checkpoints whose processor was saved by transformers 4 (the released synthesizer's layout, and
llava-hf's LLaVA-NeXT checkpoints saved before processor_config.json existed) dry-run, synthesize on
both engines and train exactly as the tiny synthesizer they were written from; a processor that
contradicts its model is refused before any work, naming the setting and its fix."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import read_json, read_jsonl
from PIL import Image

from adamllm.core import prompts
from adamllm.testing.fixtures import make_caption_pairs, make_seed_fixtures
from adamllm.testing.tiny import IMAGE_TOKEN, LLAVA_HF_IMAGE_TOKEN, OLD_LAYOUTS, write_old_layout

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
NEW_TOKENS = 16
# Shapes that pick each grid pinpoint, and odd ones: the counts depend on the shape.
SIZES = [(80, 60), (50, 120), (56, 56), (112, 112), (300, 20), (20, 300), (1, 1), (999, 1000)]


@pytest.fixture(scope="module")
def old(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("old")
    return {layout: write_old_layout(tiny_models["synthesizer"], root / layout, layout) for layout in OLD_LAYOUTS}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return make_caption_pairs(tmp_path_factory.mktemp("pairs"), 6, seed=7)


def written(path: Path, layout: str, field: str) -> list[dict]:
    """The rows of `path`, `field` read as the tiny synthesizer would write it: the llava-hf layout names
    the image token `<image>` (its id is the tiny synthesizer's)."""
    rows = read_jsonl(path)
    if layout == "llava-hf-2024":
        for row in rows:
            row[field] = row[field].replace(LLAVA_HF_IMAGE_TOKEN, IMAGE_TOKEN)
    return rows


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def synthesize(model, pairs, out, **kw):
    from adamllm.stage2.synthesize import SynthesizeArgs, run_synthesize

    args = SynthesizeArgs(
        model=str(model),
        data_path=str(pairs["data_path"]),
        image_folder=str(pairs["image_folder"]),
        output_dir=str(out),
        max_new_tokens=NEW_TOKENS,
        batch_size=3,
        **kw,
    )
    return run_synthesize(args)


def test_old_layouts_are_what_they_claim(old):
    released = old["released"]
    assert sorted(read_json(released / "processor_config.json")) == [
        "image_token",
        "patch_size",
        "processor_class",
        "vision_feature_select_strategy",
    ]
    assert "chat_template" in read_json(released / "chat_template.json")
    assert (released / "preprocessor_config.json").is_file()
    llava_hf = old["llava-hf-2024"]
    assert not (llava_hf / "processor_config.json").exists() and (llava_hf / "preprocessor_config.json").is_file()
    assert json.dumps(LLAVA_HF_IMAGE_TOKEN) in (llava_hf / "tokenizer.json").read_text()


@pytest.mark.parametrize("layout", OLD_LAYOUTS)
def test_processor_expands_each_image_into_the_features_the_model_makes(tiny_models, old, layout):
    """The processor's count, its real expansion and the model's own feature count agree for every
    shape, and the model runs on what the processor made (transformers checks the two counts)."""
    import torch
    from transformers import AutoConfig

    from adamllm.models.backbones.llava_next import image_feature_count
    from adamllm.models.model_io import image_token_count, load_processor, load_synthesizer_model

    reference = load_processor(str(tiny_models["synthesizer"]))
    processor = load_processor(str(old[layout]))
    config = AutoConfig.from_pretrained(old[layout])
    model = load_synthesizer_model(str(old[layout]), torch.float32)
    assert processor.num_additional_image_tokens == 1  # CLIP's class token, from config.json's vision tower
    for width, height in SIZES:
        count = image_token_count(processor, width, height)
        assert count == image_token_count(reference, width, height) == image_feature_count(config, width, height, 1)
        inputs = processor(
            images=Image.new("RGB", (width, height), (90, 140, 30)), text=processor.image_token, return_tensors="pt"
        )
        assert (inputs["input_ids"] == config.image_token_id).sum().item() == count
        with torch.no_grad():
            model(**inputs)


@pytest.mark.parametrize("layout", OLD_LAYOUTS)
def test_dry_run_judges_prompt_length_as_the_model_counts(tiny_models, old, pairs, tmp_path, layout):
    """--max_model_len exactly the first record's prompt: no room to write, so it is rejected on every
    layout (counting one image token short, the released layout let it through)."""
    from adamllm.models.model_io import load_processor

    processor = load_processor(str(tiny_models["synthesizer"]))
    first = read_json(pairs["data_path"])[0]
    prompt = prompts.synthesizer_prompt(first["messages"][1]["content"], processor.image_token)
    image = Image.open(pairs["image_folder"] / first["images"][0]).convert("RGB")
    length = processor(images=image, text=prompt, return_tensors="pt")["input_ids"].shape[1] - 1  # the tokenizer's BOS
    runs = {}
    for name, model in (("tiny", tiny_models["synthesizer"]), (layout, old[layout])):
        stats = synthesize(model, pairs, tmp_path / name, dry_run=True, max_model_len=length)
        runs[name] = (
            stats,
            written(tmp_path / name / "prompts.jsonl", name, "prompt"),
            read_jsonl(tmp_path / name / "prompts.rejects.jsonl"),
        )
    stats, _, rejects = runs["tiny"]
    assert stats["rejected"].get("prompt_too_long", 0) >= 1 and rejects[0]["syn_id"] == 0
    assert runs[layout] == runs["tiny"]


@pytest.fixture(scope="module")
def hf_reference(tiny_models, pairs, tmp_path_factory):
    """The tiny synthesizer's own outputs on the transformers engine (the vLLM engine's are the same:
    test_stage2)."""
    out = tmp_path_factory.mktemp("reference")
    synthesize(tiny_models["synthesizer"], pairs, out, engine="hf")
    return read_jsonl(out / "syn_task_triplets.jsonl")


@pytest.mark.parametrize("engine", ["hf", "vllm"])
@pytest.mark.parametrize("layout", OLD_LAYOUTS)
def test_synthesize_on_an_old_layout_gives_the_synthesizers_outputs(old, pairs, hf_reference, tmp_path, layout, engine):
    stats = synthesize(old[layout], pairs, tmp_path, engine=engine)
    assert stats["records_out"] == 6 and stats["rejected"] == {}
    assert written(tmp_path / "syn_task_triplets.jsonl", layout, "pred") == hf_reference


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    return make_seed_fixtures(tmp_path_factory.mktemp("seed"), num_images=8, seed=4)


@pytest.mark.parametrize("layout", OLD_LAYOUTS)
def test_adamllm_train_on_an_old_layout_saves_the_current_one(old, seed, tmp_path, layout):
    from adamllm.models.model_io import load_processor
    from adamllm.stage1.train import main as train_main

    code = train_main(
        [
            "--model_name_or_path",
            str(old[layout]),
            "--caption_path",
            str(seed["caption"]),
            "--precise_qa_path",
            str(seed["precise"]),
            "--informative_qa_path",
            str(seed["informative"]),
            "--image_folder",
            str(seed["image_folder"]),
            "--output_dir",
            str(tmp_path / "syn"),
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "2",
            "--save_strategy",
            "no",
            "--report_to",
            "none",
            "--use_cpu",
            "True",
        ]
    )
    assert code == 0
    summary = read_json(tmp_path / "syn" / "training_summary.json")
    assert summary["steps"] == 2 and summary["records_used"] > 0
    # The trained synthesizer's processor states the class token: it loads the same under any transformers.
    saved = read_json(tmp_path / "syn" / "processor_config.json")
    assert saved["num_additional_image_tokens"] == 1 and saved["patch_size"] == 14
    assert load_processor(str(tmp_path / "syn")).image_token == (
        LLAVA_HF_IMAGE_TOKEN if layout == "llava-hf-2024" else IMAGE_TOKEN
    )


def test_tune_synthesizer_continues_training_the_released_layout(old, seed, tmp_path):
    """BASE_MODEL in the released synthesizer's layout: ZeRO-3 on two processes gets past its first steps."""
    env = dict(
        os.environ,
        BASE_MODEL=str(old["released"]),
        SAVE_PATH=str(tmp_path / "syn"),
        PYTHON=sys.executable,
        BATCH_SIZE="2",
        GLOBAL_BATCH="4",
        MASTER_PORT="29631",
    )
    env.pop("CUDA_VISIBLE_DEVICES", None)
    result = subprocess.run(
        [
            "bash",
            str(ROOT / "scripts" / "tune_synthesizer.sh"),
            str(seed["caption"]),
            str(seed["precise"]),
            str(seed["informative"]),
            str(seed["image_folder"]),
            "--max_steps",
            "2",
            "--save_strategy",
            "no",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_json(tmp_path / "syn" / "training_summary.json")["steps"] == 2


def test_a_stated_class_token_count_yields_to_the_vision_tower(tiny_models, old, tmp_path):
    """processor_config.json saying CLIP adds no token: the tower decides (it adds one)."""
    from adamllm.models.model_io import image_token_count, load_processor

    model = tmp_path / "stated"
    write_old_layout(tiny_models["synthesizer"], model)
    edit_json(model / "processor_config.json", num_additional_image_tokens=0)
    reference = load_processor(str(tiny_models["synthesizer"]))
    assert all(
        image_token_count(load_processor(str(model)), w, h) == image_token_count(reference, w, h) for w, h in SIZES
    )


# (file to edit, its changes, what the message must say)
CONTRADICTIONS = {
    "patch_size": ("processor_config.json", {"patch_size": 16}, "patch_size 16 where the model has 14"),
    "strategy": (
        "processor_config.json",
        {"vision_feature_select_strategy": "full"},
        "vision_feature_select_strategy full where the model has default",
    ),
    "image_token": (
        "processor_config.json",
        {"image_token": "<|reserved_special_token_5|>"},
        'set "image_token": "<|reserved_special_token_4|>" in processor_config.json',
    ),
    "unknown_token": ("processor_config.json", {"image_token": "<image>"}, "the model reads token"),
    "tile_size": (
        "preprocessor_config.json",
        {"size": {"shortest_edge": 112}, "crop_size": {"height": 112, "width": 112}},
        "size 112 where the model has 56",
    ),
    "pinpoints": (
        "preprocessor_config.json",
        {"image_grid_pinpoints": [[56, 168], [168, 56], [168, 168]]},
        "image_grid_pinpoints [[56, 168]",
    ),
}


@pytest.mark.parametrize("kind", sorted(CONTRADICTIONS))
def test_processor_contradicting_its_model_is_refused_before_any_work(tiny_models, pairs, tmp_path, capsys, kind):
    from adamllm.cli import main as adamllm_main
    from adamllm.stage1.train import main as train_main

    file, changes, expected = CONTRADICTIONS[kind]
    model = write_old_layout(tiny_models["synthesizer"], tmp_path / "model")
    edit_json(model / file, **changes)
    for engine in ("hf", "vllm"):
        out = tmp_path / f"out-{engine}"
        with pytest.raises(SystemExit) as exited:  # argparse's exit for a bad flag
            adamllm_main(
                [
                    "synthesize",
                    "--engine",
                    engine,
                    "--model",
                    str(model),
                    "--data_path",
                    str(pairs["data_path"]),
                    "--image_folder",
                    str(pairs["image_folder"]),
                    "--output_dir",
                    str(out),
                ]
            )
        assert exited.value.code == 2 and expected in capsys.readouterr().err and not out.exists()
    with pytest.raises(SystemExit) as exited:  # adamllm run names its own flag
        adamllm_main(
            [
                "run",
                "--engine",
                "hf",
                "--synthesizer",
                str(model),
                "--checker",
                str(tiny_models["checker"]),
                "--data_path",
                str(pairs["data_path"]),
                "--image_folder",
                str(pairs["image_folder"]),
                "--output_dir",
                str(tmp_path / "run"),
            ]
        )
    err = capsys.readouterr().err
    assert (
        exited.value.code == 2
        and f"--synthesizer {model}: its processor" in err
        and expected in err
        and not (tmp_path / "run").exists()
    )
    with pytest.raises(ValueError) as raised:
        synthesize(model, pairs, tmp_path / "dry", dry_run=True)
    message = str(raised.value)
    assert (
        message.startswith(f"--model {model}: its processor")
        and expected in message
        and f"edit the files in {model}" in message
    )
    assert not (tmp_path / "dry").exists()
    capsys.readouterr()
    assert (
        train_main(
            [
                "--model_name_or_path",
                str(model),
                "--data_path",
                str(pairs["data_path"]),
                "--image_folder",
                str(pairs["image_folder"]),
                "--output_dir",
                str(tmp_path / "syn"),
                "--check_only",
                "True",
            ]
        )
        == 2
    )
    assert f"--model_name_or_path {model}: its processor" in capsys.readouterr().err


def test_a_synthesizer_without_its_tokenizer_is_refused_naming_it(tiny_models, pairs, tmp_path):
    model = write_old_layout(tiny_models["synthesizer"], tmp_path / "model")
    (model / "tokenizer.json").unlink()
    with pytest.raises(
        ValueError, match=f"^--model {model}: its processor does not load \\(is its tokenizer saved with it\\?\\)"
    ):
        synthesize(model, pairs, tmp_path / "out", dry_run=True)
    assert not (tmp_path / "out").exists()
