"""Tiny models for tests and the demo, built in seconds with no network.

    adamllm make-tiny-models exp/tiny [--family llava_next|qwen2_5_vl|qwen3_vl]

Writes `exp/tiny/synthesizer` (a model of the family and its processor, in the layout vLLM loads)
and `exp/tiny/checker` (a text LLM: Llama for LLaVA-NeXT, Qwen3 for the Qwen-VL families). Both share
a tokenizer trained here in the family's style: byte-level BPE with its split pattern, its special
tokens in its order, its chat template in the family's published format. For LLaVA-NeXT that is
Llama-3's, with `<|reserved_special_token_4|>` as the image token, as in the released synthesizer.
Their weights are random; what they prove is that the real code paths (transformers, vLLM, DeepSpeed)
run end to end.
"""

from __future__ import annotations

from pathlib import Path

from adamllm.core import prompts
from adamllm.models.backbones import DEFAULT_FAMILY, backbone_named
from adamllm.models.backbones.llava_next import (
    LLAMA3_SPECIAL_TOKENS,
    LLAMA3_SPLIT,
    TINY_GRID_PINPOINTS,
    TINY_IMAGE_SIZE,
    TINY_IMAGE_TOKEN,
    TINY_PATCH_SIZE,
    TINY_VISION,
)
from adamllm.models.model_io import save_synthesizer
from adamllm.testing import fixtures

# The LLaVA-NeXT tiny model's settings, under the names tests and benchmarks use.
IMAGE_TOKEN, SPECIAL_TOKENS, SPLIT = TINY_IMAGE_TOKEN, list(LLAMA3_SPECIAL_TOKENS), LLAMA3_SPLIT
IMAGE_SIZE, PATCH_SIZE, GRID_PINPOINTS, VISION = TINY_IMAGE_SIZE, TINY_PATCH_SIZE, TINY_GRID_PINPOINTS, TINY_VISION
VOCAB_SIZE = 3000

# Small enough to run in seconds on a CPU; head size 32 because vLLM's CPU attention needs >= 32.
# The same text model in every family, so that their costs compare.
TEXT = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4)
MAX_POSITIONS = 4096
# Wider than the usual 0.02: random logits then differ enough that greedy choices do not hinge on
# rounding, so two engines pick the same tokens.
INIT_RANGE = 0.2


def _corpus() -> list[str]:
    """Text to train the tokenizer on: the pipeline's own prompts and a spread of plain English."""
    import random

    rng = random.Random(0)
    lines = [
        prompts.SYSTEM,
        "You are a helpful assistant.",
        prompts.CAPTION_HINT,
        prompts.PRECISE_HINT,
        prompts.INFORMATIVE_HINT,
        prompts.default_filter_template(),
    ]
    lines += [t.user + " " + t.assistant for t in prompts.QA_TEMPLATES + prompts.COT_TEMPLATES]
    for _ in range(300):
        scene = fixtures.random_scene(rng)
        lines.append(fixtures.caption(scene, rng))
        lines += [" ".join(task[1:]) for task in fixtures.qa_tasks(scene)]
    lines += [__doc__ or "", fixtures.__doc__ or "", prompts.__doc__ or ""]
    return lines


def build_tokenizer(family: str = DEFAULT_FAMILY):
    """A fast tokenizer in the family's style (Llama-3's adds BOS in front; Qwen's adds none)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    spec = backbone_named(family).tiny_tokenizer
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(spec.split_pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(_corpus(), trainer)
    tok.add_special_tokens(list(spec.special_tokens))
    if spec.bos is not None:
        bos_id = tok.token_to_id(spec.bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{spec.bos} $A", pair=f"{spec.bos} $A {spec.bos} $B", special_tokens=[(spec.bos, bos_id)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=spec.bos,
        eos_token=spec.eos,
        pad_token=spec.pad,
        model_max_length=MAX_POSITIONS,
        **({"chat_template": spec.chat_template} if spec.chat_template else {}),
    )


def text_settings() -> dict:
    """The tiny text model's settings, as every family's text config takes them."""
    return dict(max_position_embeddings=MAX_POSITIONS, initializer_range=INIT_RANGE, **TEXT)


def _quiet_embeddings(model) -> None:
    """Shrink the input embeddings to the usual 0.02 scale: a token that training never shows (a
    word of a real caption, for a model trained on shapes) then adds little noise, where at the wide
    init it would swamp the prompt."""
    import torch

    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(0.1)


def build_synthesizer(tokenizer, seed: int = 0, family: str = DEFAULT_FAMILY):
    """A random tiny synthesizer of the family, and its processor."""
    model, processor = backbone_named(family).build_tiny(tokenizer, text_settings(), seed)
    _quiet_embeddings(model)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, processor


def build_checker(tokenizer, seed: int = 1, family: str = DEFAULT_FAMILY):
    """A random tiny text model: Llama beside LLaVA-NeXT, Qwen3 beside the Qwen-VL families."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    common = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(seed)
    if family == "llava_next":
        rope = {"rope_type": "default", "rope_theta": 500000.0}
        model = LlamaForCausalLM(LlamaConfig(rope_parameters=rope, **ids, **common, **text_settings()))
    else:
        rope = {"rope_type": "default", "rope_theta": 1e6}
        head_dim = TEXT["hidden_size"] // TEXT["num_attention_heads"]
        config = Qwen3Config(rope_parameters=rope, head_dim=head_dim, **ids, **common, **text_settings())
        model = Qwen3ForCausalLM(config)
    model.eval()
    _quiet_embeddings(model)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def teach_verdicts(checker, tokenizer, steps: int, seed: int = 0) -> list[float]:
    """Teach the random checker the verdict words on procedural triplets; returns the loss per step.

    Consistent triplets (both answers from one scene) are labelled " Yes", inconsistent ones (the
    precise answer of another scene) " No". A few dozen steps make the tiny checker answer in the
    filter's vocabulary, so the demo shows kept tasks. It learns the words, not the check: after 40
    steps, or 200, it answered Yes to consistent and inconsistent triplets alike.
    """
    import random

    import torch

    rng = random.Random(seed)
    targets = {v: tokenizer(f" {v}", add_special_tokens=False).input_ids[0] for v in ("Yes", "No")}
    optimizer = torch.optim.AdamW(checker.parameters(), lr=1e-2)
    template = prompts.default_filter_template()
    checker.train()
    losses = []
    for _ in range(steps):
        texts, labels = [], []
        for _ in range(8):
            a, b = fixtures.random_scene(rng), fixtures.random_scene(rng)
            task = rng.randrange(3)
            _, question, _, informative = fixtures.qa_tasks(a)[task]
            _, _, other, _ = fixtures.qa_tasks(b)[task]
            consistent = rng.random() < 0.5 or other == fixtures.qa_tasks(a)[task][2]
            precise = fixtures.qa_tasks(a)[task][2] if consistent else other
            texts.append(prompts.filter_prompt(question, informative, precise, template))
            labels.append(targets["Yes" if consistent else "No"])
        tokenizer.padding_side = "left"
        batch = tokenizer(texts, padding=True, return_tensors="pt")
        logits = checker(**batch).logits[:, -1]
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor(labels))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    tokenizer.padding_side = "right"
    checker.eval()
    return losses


def make_tiny_models(
    out_dir: str | Path, seed: int = 0, teach_checker_steps: int = 0, family: str = DEFAULT_FAMILY
) -> dict[str, Path]:
    """Build and save both tiny models of a family; returns their folders.

    `teach_checker_steps` > 0 teaches the checker to answer Yes / No (see `teach_verdicts`).
    """
    out = Path(out_dir)
    tokenizer = build_tokenizer(family)
    model, processor = build_synthesizer(tokenizer, seed, family)
    save_synthesizer(model, processor, out / "synthesizer")
    checker = build_checker(tokenizer, seed + 1, family)
    if teach_checker_steps:
        teach_verdicts(checker, tokenizer, teach_checker_steps, seed)
    checker.save_pretrained(out / "checker")
    tokenizer.save_pretrained(out / "checker")
    return {"synthesizer": out / "synthesizer", "checker": out / "checker"}


# The processor layouts of transformers 4 that checkpoints in use were saved in (see write_old_layout).
OLD_LAYOUTS = ("released", "llava-hf-2024")
# The four keys of the released synthesizer's processor_config.json.
RELEASED_PROCESSOR_KEYS = ("image_token", "patch_size", "processor_class", "vision_feature_select_strategy")
LLAVA_HF_IMAGE_TOKEN = "<image>"
# A Llama-3 LLaVA chat template, for the released layout's chat_template.json (the pipeline renders
# its prompts itself; the file is there because the release has one).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}" + IMAGE_TOKEN + "{% else %}"
    "{{ part['text'] }}{% endif %}{% endfor %}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def write_old_layout(synthesizer: str | Path, out_dir: str | Path, layout: str = "released") -> Path:
    """A copy of a saved tiny synthesizer, its processor rewritten in a layout of transformers 4.

    "released": as AdaptLLM/visual-instruction-synthesizer: the image processor in
    preprocessor_config.json, a chat_template.json, and a processor_config.json holding only
    RELEASED_PROCESSOR_KEYS (no num_additional_image_tokens).
    "llava-hf-2024": as llava-hf's LLaVA-NeXT checkpoints saved before processor_config.json existed:
    preprocessor_config.json alone, and `<image>` (the processor's default) as the image token.
    The weights and config.json are the synthesizer's: both layouts must give its outputs.
    """
    import json
    import shutil

    from adamllm.core.jsonfiles import write_json

    if layout not in OLD_LAYOUTS:
        raise ValueError(f"layout {layout!r}: choose one of {', '.join(OLD_LAYOUTS)}")
    src, out = Path(synthesizer), Path(out_dir)
    shutil.copytree(src, out)
    processor = json.loads((src / "processor_config.json").read_text(encoding="utf-8"))
    image_processor = {**processor.pop("image_processor"), "processor_class": processor["processor_class"]}
    write_json(out / "preprocessor_config.json", image_processor)
    if layout == "released":
        kept = {k: processor[k] for k in RELEASED_PROCESSOR_KEYS}
        write_json(out / "processor_config.json", kept)
        write_json(out / "chat_template.json", {"chat_template": CHAT_TEMPLATE})
    else:
        (out / "processor_config.json").unlink()
        tokenizer = out / "tokenizer.json"
        text = tokenizer.read_text(encoding="utf-8")
        tokenizer.write_text(text.replace(json.dumps(IMAGE_TOKEN), json.dumps(LLAVA_HF_IMAGE_TOKEN)), encoding="utf-8")
    return out
