"""The tiny models load and generate greedily in transformers and in vLLM, with identical tokens."""

import pytest
from PIL import Image

from adamllm.core import prompts
from adamllm.testing.tiny import IMAGE_TOKEN, SPECIAL_TOKENS

pytestmark = pytest.mark.slow

CAPTIONS = ["A red square on a white background.", "Two slices of toast with butter."]
IMAGES = [Image.new("RGB", (80, 60), (200, 30, 30)), Image.new("RGB", (50, 120), (30, 30, 200))]
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def hf_synthesizer(tiny_models):
    from adamllm.models.model_io import load_synthesizer

    return load_synthesizer(str(tiny_models["synthesizer"]))


def test_tokenizer_is_llama3_like(hf_synthesizer):
    _, processor = hf_synthesizer
    tok = processor.tokenizer
    ids = [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert ids == list(range(ids[0], ids[0] + len(SPECIAL_TOKENS)))  # Llama-3's order, contiguous
    assert processor.image_token == IMAGE_TOKEN == "<|reserved_special_token_4|>"
    assert tok.convert_ids_to_tokens(ids[8]) == IMAGE_TOKEN
    assert tok("x").input_ids[0] == tok.bos_token_id
    assert tok.eos_token == prompts.EOS
    text = "Ramen, 3 eggs & naïve café 🍜"
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text


def test_synthesizer_prompt_token_ids_start_with_two_bos(hf_synthesizer):
    _, processor = hf_synthesizer
    tok = processor.tokenizer
    ids = tok(prompts.synthesizer_prompt(CAPTIONS[0], processor.image_token)).input_ids
    bos, start, end = (
        tok.bos_token_id,
        tok.convert_tokens_to_ids(prompts.START_HEADER),
        tok.convert_tokens_to_ids(prompts.END_HEADER),
    )
    assert ids[:3] == [bos, bos, start]
    assert ids[-1] == tok("\n\n", add_special_tokens=False).input_ids[-1] and ids[-2] == end
    assert ids.count(tok.convert_tokens_to_ids(IMAGE_TOKEN)) == 1
    assert tok.decode(ids) == prompts.BOS + prompts.synthesizer_prompt(CAPTIONS[0], processor.image_token)


def hf_generate(model, processor, images, texts):
    import torch

    outputs = []
    for image, text in zip(images, texts):
        inputs = (
            processor(images=image, text=text, return_tensors="pt")
            if image is not None
            else processor(text, return_tensors="pt")
        )
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
        outputs.append(out[0, inputs["input_ids"].shape[1] :].tolist())
    return outputs


def vllm_generate(path, requests):
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=str(path), enforce_eager=True, max_model_len=4096, dtype="float32", generation_config="vllm", seed=0
    )
    params = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, skip_special_tokens=False, ignore_eos=True)
    return [list(o.outputs[0].token_ids) for o in llm.generate(requests, params, use_tqdm=False)]


def test_synthesizer_greedy_tokens_identical_in_vllm_and_transformers(tiny_models, hf_synthesizer):
    model, processor = hf_synthesizer
    texts = [prompts.synthesizer_prompt(c, processor.image_token) for c in CAPTIONS]
    expected = hf_generate(model, processor, IMAGES, texts)
    got = vllm_generate(
        tiny_models["synthesizer"], [{"prompt": t, "multi_modal_data": {"image": i}} for t, i in zip(texts, IMAGES)]
    )
    assert all(len(e) == NEW_TOKENS for e in expected)
    assert got == expected


def test_checker_greedy_tokens_identical_in_vllm_and_transformers(tiny_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["checker"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["checker"])
    texts = [
        prompts.filter_prompt("How many?", "Two cups, so 2.", "2"),
        prompts.filter_prompt("Color?", "It is red.", "Blue"),
    ]
    expected = hf_generate(model, tok, [None, None], texts)
    assert vllm_generate(tiny_models["checker"], texts) == expected
