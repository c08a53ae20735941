"""The backbone layer: every family renders the method's conversation in its own format, its stage-2
prompt is the head of its training sequence in token ids, its output splits back into the trained
pairs, and models of no known family, or without the chat template theirs needs, are refused."""

import json
import shutil

import pytest

from adamllm.core import prompts
from adamllm.core.parse import collect_triplet
from adamllm.core.prompts import ASSISTANT, USER, Turn
from adamllm.models.backbones import BACKBONES, FAMILIES, split_pairs
from adamllm.models.backbones.chatml import messages

CAPTION = "A red circle above a blue square."
QUESTION = "What color is the circle?"
TURNS = [
    Turn(USER, f"{prompts.IMAGE_TAG}\n{prompts.CAPTION_HINT}"),
    Turn(ASSISTANT, CAPTION),
    Turn(USER, prompts.precise_question(QUESTION)),
    Turn(ASSISTANT, "Red"),
    Turn(USER, prompts.informative_question(QUESTION)),
    Turn(ASSISTANT, "The circle at the top is painted red, so its color is red."),
]
QWEN = ("qwen2_5_vl", "qwen3_vl")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """One tiny synthesizer per family, with its processor as the pipeline loads it."""
    from adamllm.models.model_io import load_processor, save_synthesizer
    from adamllm.testing.tiny import build_synthesizer, build_tokenizer

    out = {}
    for family in FAMILIES:
        folder = tmp_path_factory.mktemp(family) / "synthesizer"
        model, processor = build_synthesizer(build_tokenizer(family), family=family)
        save_synthesizer(model, processor, folder)
        out[family] = (folder, load_processor(str(folder)))
    return out


def test_llava_next_renders_the_release_strings_unchanged(models):
    _, processor = models["llava_next"]
    backbone = BACKBONES["llava_next"]
    assert backbone.prompt(processor, CAPTION) == prompts.synthesizer_prompt(CAPTION, processor.image_token)
    assert backbone.training_text(processor, TURNS) == prompts.training_text(TURNS, processor.image_token)


@pytest.mark.parametrize("family", QWEN)
def test_qwen_conversation_is_what_its_chat_template_renders(models, family):
    _, processor = models[family]
    backbone = BACKBONES[family]
    native = processor.apply_chat_template(messages(TURNS), tokenize=False)
    text = backbone.training_text(processor, TURNS)
    assert text == native + "<|endoftext|>"
    system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" if family == "qwen2_5_vl" else ""
    assert text == (
        f"{system}<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image.<|im_end|>\n"
        f"<|im_start|>assistant\n{CAPTION}<|im_end|>\n"
        f"<|im_start|>user\nAnswer with a precise response.\n{QUESTION}<|im_end|>\n"
        "<|im_start|>assistant\nRed<|im_end|>\n"
        f"<|im_start|>user\nAnswer with an informative response.\n{QUESTION}<|im_end|>\n"
        f"<|im_start|>assistant\n{TURNS[-1].text}<|im_end|>\n<|endoftext|>"
    )
    prompt = backbone.prompt(processor, CAPTION)
    assert prompt == native[: native.index("<|im_start|>user\nAnswer")] + "<|im_start|>user\n"


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_ids_are_the_head_of_the_training_ids_with_the_image_expanded(models, family):
    from PIL import Image

    from adamllm.models.model_io import image_token_count

    _, processor = models[family]
    backbone = BACKBONES[family]
    image = Image.new("RGB", (150, 90), (200, 40, 40))
    prompt = processor(images=image, text=backbone.prompt(processor, CAPTION), return_tensors="pt")["input_ids"][0]
    full = processor(images=image, text=backbone.training_text(processor, TURNS), return_tensors="pt")["input_ids"][0]
    assert full[: len(prompt)].tolist() == prompt.tolist() and len(full) > len(prompt)
    image_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    assert (prompt == image_id).sum() == image_token_count(processor, 150, 90) > 1
    assert full[-1] == processor.tokenizer.convert_tokens_to_ids(backbone.end_of_text)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_output_splits_back_into_the_trained_pairs(models, family):
    _, processor = models[family]
    backbone = BACKBONES[family]
    text = backbone.training_text(processor, TURNS)
    written = text[len(backbone.prompt(processor, CAPTION)) :]  # what a synthesizer that learned it writes
    expected = [(t.text, a.text) for t, a in zip(TURNS[2::2], TURNS[3::2])]
    assert split_pairs(written) == expected
    assert split_pairs(written[: -len(backbone.end_of_text)]) == expected  # the engines drop the stop token
    cut = written[: written.rindex(backbone.marks.turn_end.rstrip()) - 3]  # the last answer cut off
    assert split_pairs(cut) == expected[:1]
    triplet = collect_triplet(split_pairs(written))
    assert (triplet.Q, triplet.precise_A) == (QUESTION, "Red")


@pytest.mark.parametrize("family", QWEN)
def test_vision_encoder_parameters_are_the_visual_blocks_not_the_merger(models, family):
    from safetensors import safe_open

    folder, _ = models[family]
    backbone = BACKBONES[family]
    model = backbone.load_model(str(folder))
    names = [n for n, _ in model.named_parameters()]
    vision = [n for n in names if backbone.is_vision_param(n)]
    assert vision and all(".visual." in f".{n}" and ".merger." not in n for n in vision)
    assert any(".merger." in n for n in names) and not any(backbone.is_vision_param(n) for n in names if "merger" in n)
    assert len(vision) == sum(1 for n in names if "visual." in n and "merger" not in n)
    hub_prefix = {"qwen2_5_vl": "visual.blocks.", "qwen3_vl": "model.visual.blocks."}[family]
    with safe_open(str(folder / "model.safetensors"), "pt") as f:  # saved as the hub's checkpoints name them
        assert any(k.startswith(hub_prefix) for k in f.keys())


@pytest.mark.parametrize("family", QWEN)
def test_max_pixels_bounds_the_image_tokens(models, family):
    from adamllm.models.backbones import ProcessorOptions
    from adamllm.models.model_io import image_token_count, load_processor

    folder, processor = models[family]
    side = processor.image_processor.patch_size * processor.image_processor.merge_size  # px per token, each way
    small = load_processor(str(folder), ProcessorOptions(max_pixels=4 * side * side))
    assert image_token_count(processor, 8 * side, 8 * side) == 64
    assert image_token_count(small, 8 * side, 8 * side) == 4
    with pytest.raises(ValueError, match="--min_pixels .* is above --max_pixels"):
        load_processor(str(folder), ProcessorOptions(min_pixels=9 * side * side, max_pixels=4 * side * side))


def test_llava_next_refuses_pixel_options(models):
    from adamllm.models.backbones import ProcessorOptions
    from adamllm.models.model_io import load_processor

    with pytest.raises(ValueError, match="anyres grid takes no --min_pixels / --max_pixels"):
        load_processor(str(models["llava_next"][0]), ProcessorOptions(max_pixels=50_000))


@pytest.mark.parametrize("family", QWEN)
def test_a_qwen_base_without_its_chat_template_is_refused_with_the_fix(models, family, tmp_path):
    from adamllm.models.model_io import check_processor

    folder = tmp_path / "no-template"
    shutil.copytree(models[family][0], folder)
    for name in ("chat_template.jinja", "chat_template.json"):
        (folder / name).unlink(missing_ok=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    problem = check_processor(str(folder), "--model")
    title = BACKBONES[family].title
    assert problem.startswith(f"--model {folder}: it has no chat template") and "copy chat_template.jinja" in problem
    assert f"the {title} Instruct model" in problem and BACKBONES[family].example in problem


def test_unknown_multimodal_family_and_swapped_models_are_refused(models, tmp_path):
    from adamllm.models.model_io import check_model

    folder = tmp_path / "gemma"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gemma3"}))
    problem = check_model(str(folder), "synthesizer", "--model")
    assert "not a synthesizer family this toolkit knows" in problem and "did you swap" not in problem
    for backbone in BACKBONES.values():
        assert backbone.title in problem and backbone.example in problem
    assert "did you swap" in check_model(str(models["qwen3_vl"][0]), "checker", "--model").lower()
    text = tmp_path / "qwen3"
    text.mkdir()
    (text / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    assert "It looks like a text LLM" in check_model(str(text), "synthesizer", "--model")
    assert check_model(str(text), "checker", "--model") == ""
