"""LLaVA-NeXT with a Llama-3 text model: the paper's synthesizer (AdaptLLM/visual-instruction-synthesizer).

Its conversation is the Llama-3 LLaVA one of adamllm.core.prompts, byte for byte the release's. The
processor's anyres grid makes 2,929 image tokens of a 672x672 picture; a processor saved by
transformers 4 is repaired from the model's config.json, or refused naming the setting to fix.
"""

from __future__ import annotations

import json
from pathlib import Path

from adamllm.core import prompts
from adamllm.core.parse import LLAMA3_MARKS
from adamllm.core.prompts import Turn
from adamllm.models.backbones.base import (
    Backbone,
    ProcessorOptions,
    TinyTokenizerSpec,
    auto_processor,
    image_token_count,
    where_to_fix,
)

# Tokens a vision tower puts before its patches, by vision_config.model_type (CLIP's class token).
# A processor saved by transformers 4 (the released synthesizer's, llava-hf's of 2024) does not store
# this count as num_additional_image_tokens; today's processor then assumes none, and expands each
# image into one token fewer than the model makes features. vLLM counts from the tower too.
CLASS_TOKENS = {"clip_vision_model": 1, "siglip_vision_model": 0}
# Odd image shapes, besides the model's own grid pinpoints, on which both counts must agree.
PROBE_SIZES = ((1, 1), (640, 80), (80, 640), (1000, 999))
VISION_PREFIX = "vision_tower."
VISION_HUB_PREFIX = "vision_tower.vision_model."

# Llama-3's pre-tokenizer split pattern, and its special tokens in their order (128000...).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# The released synthesizer's image token.
TINY_IMAGE_TOKEN = "<|reserved_special_token_4|>"
LLAMA3_SPECIAL_TOKENS = (
    prompts.BOS,
    prompts.EOS,
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|reserved_special_token_2|>",
    "<|reserved_special_token_3|>",
    prompts.START_HEADER,
    prompts.END_HEADER,
    TINY_IMAGE_TOKEN,
    prompts.EOT,
) + tuple(f"<|reserved_special_token_{i}|>" for i in range(5, 12))
TINY_IMAGE_SIZE, TINY_PATCH_SIZE = 56, 14
TINY_GRID_PINPOINTS = [[56, 112], [112, 56], [112, 112]]
TINY_VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, projection_dim=64)


class LlavaNext(Backbone):
    name = "llava_next"
    title = "LLaVA-NeXT"
    model_types = ("llava_next",)
    example = "AdaptLLM/visual-instruction-synthesizer"
    default_base = "llava-hf/llama3-llava-next-8b-hf"
    marks = LLAMA3_MARKS
    vision_module = "vision_tower"
    projector_modules = ("multi_modal_projector",)
    packs = True
    liger = True  # a Llama text model: adamllm.stage1.speed patches it by hand
    # The pipeline renders its prompts itself: no chat template is needed.
    tiny_tokenizer = TinyTokenizerSpec(LLAMA3_SPECIAL_TOKENS, LLAMA3_SPLIT, prompts.BOS, prompts.EOS, prompts.EOS, None)

    def prompt(self, processor, caption: str) -> str:
        return prompts.synthesizer_prompt(caption, processor.image_token)

    def training_text(self, processor, turns: list[Turn]) -> str:
        return prompts.training_text(turns, processor.image_token)

    def model_class(self):
        from transformers import LlavaNextForConditionalGeneration

        return LlavaNextForConditionalGeneration

    def load_processor(self, name_or_path: str, options: ProcessorOptions = ProcessorOptions()):
        """What the processor knows of the model follows from the model's config.json: the class-token
        count always (from the vision tower), the patch size and feature strategy where the saved
        processor has none (llava-hf's checkpoints saved before processor_config.json existed). Raises
        ValueError, naming the setting and its fix, when the processor would still expand an image into
        another number of tokens than the model makes features, or marks images with another token than
        the model's. The anyres grid has no pixel options: `options` must be empty."""
        from transformers import AutoConfig

        if options.given():
            raise ValueError(
                f"{name_or_path} is a {self.title}: its anyres grid takes no --min_pixels / --max_pixels "
                "(they set a Qwen-VL processor)"
            )
        processor = auto_processor(name_or_path)
        config = AutoConfig.from_pretrained(name_or_path)
        vision = config.vision_config
        if processor.patch_size is None:
            processor.patch_size = vision.patch_size
        if processor.vision_feature_select_strategy is None:
            processor.vision_feature_select_strategy = config.vision_feature_select_strategy
        if vision.model_type in CLASS_TOKENS:
            processor.num_additional_image_tokens = CLASS_TOKENS[vision.model_type]
        if problem := self.processor_problem(processor, config):
            raise ValueError(f"{name_or_path}: {problem}; {where_to_fix(name_or_path)}")
        return processor

    def processor_problem(self, processor, config) -> str:
        """The first image size where the processor's token count and the model's feature count part,
        and each setting that differs from the model's; or a wrong image token."""
        vision = config.vision_config
        image_processor = processor.image_processor
        token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
        if token_id != config.image_token_id:
            model_token = processor.tokenizer.convert_ids_to_tokens(config.image_token_id)
            known = f"token id {token_id}" if token_id is not None else "not a token of its tokenizer"
            return (
                f"its processor marks images with {processor.image_token!r} ({known}) but the model "
                f"reads token {config.image_token_id} (config.json image_token_index); "
                f'set "image_token": {json.dumps(model_token)} in processor_config.json'
            )
        size = image_processor.size
        settings = [  # (name, the processor's, the model's, where the model says so)
            ("patch_size", processor.patch_size, vision.patch_size, "config.json vision_config.patch_size"),
            (
                "vision_feature_select_strategy",
                processor.vision_feature_select_strategy,
                config.vision_feature_select_strategy,
                "config.json",
            ),
            (
                "size",
                size.shortest_edge or min(size.height, size.width),
                vision.image_size,
                "config.json vision_config.image_size",
            ),
            (
                "image_grid_pinpoints",
                [list(p) for p in image_processor.image_grid_pinpoints],
                [list(p) for p in config.image_grid_pinpoints],
                "config.json",
            ),
        ]
        for width, height in [(w, h) for h, w in config.image_grid_pinpoints] + list(PROBE_SIZES):
            features = image_feature_count(config, width, height, processor.num_additional_image_tokens)
            try:
                tokens = image_token_count(processor, width, height)
            except (ArithmeticError, TypeError, ValueError) as e:  # tiles larger than every grid pinpoint
                seen = (
                    f"cannot expand a {width}x{height} image ({type(e).__name__}: {e}), where the model makes "
                    f"{features} image features"
                )
            else:
                if tokens == features:
                    continue
                seen = (
                    f"expands a {width}x{height} image into {tokens} image tokens but the model makes {features} "
                    "image features (transformers would fail: 'Image features and image tokens do not match')"
                )
            differ = [
                f"{name} {ours} where the model has {theirs} ({where})"
                for name, ours, theirs, where in settings
                if ours != theirs
            ]
            return (
                f"its processor {seen}; the processor has {'; '.join(differ) or 'settings its model does not share'}. "
                "Set the model's values in processor_config.json (patch_size, vision_feature_select_strategy; size "
                "and image_grid_pinpoints under its image_processor, or in preprocessor_config.json)"
            )
        return ""

    def image_inputs(self, encoded) -> dict:
        return {"pixel_values": encoded["pixel_values"][0], "image_sizes": encoded["image_sizes"][0]}

    def collate_images(self, items: list[dict]) -> dict:
        """Images padded to the most tiles of the batch: the model drops the padding by image_sizes."""
        import torch

        tiles = max(x["pixel_values"].shape[0] for x in items)
        pixel_values = torch.zeros(
            (len(items), tiles, *items[0]["pixel_values"].shape[1:]), dtype=items[0]["pixel_values"].dtype
        )
        for row, x in enumerate(items):
            pixel_values[row, : x["pixel_values"].shape[0]] = x["pixel_values"]
        return {"pixel_values": pixel_values, "image_sizes": torch.stack([x["image_sizes"] for x in items])}

    def save_for_vllm(self, out_dir: Path) -> Path:
        """transformers 5.x writes the CLIP tower as `vision_tower.embeddings.*`; vLLM expects the hub
        layout `vision_tower.vision_model.*` and refuses the former. transformers reads both, so the
        saved keys are renamed to the hub layout."""
        out = Path(out_dir)
        for shard in sorted(out.glob("*.safetensors")):
            _rename_vision_keys(shard)
        index = out / "model.safetensors.index.json"
        if index.exists():
            data = json.loads(index.read_text())
            data["weight_map"] = {hub_key(k): v for k, v in data["weight_map"].items()}
            index.write_text(json.dumps(data, indent=2))
        return out

    def build_tiny(self, tokenizer, text: dict, seed: int):
        """A random tiny LLaVA-NeXT (CLIP tower, Llama text model) and its processor."""
        import torch
        from transformers import (
            CLIPVisionConfig,
            LlamaConfig,
            LlavaNextConfig,
            LlavaNextForConditionalGeneration,
            LlavaNextProcessor,
        )
        from transformers.models.llava_next import LlavaNextImageProcessor

        image_processor = LlavaNextImageProcessor(
            size={"shortest_edge": TINY_IMAGE_SIZE},
            crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
            image_grid_pinpoints=TINY_GRID_PINPOINTS,
        )
        processor = LlavaNextProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=TINY_PATCH_SIZE,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,  # CLIP's class token, dropped by the "default" strategy
            image_token=TINY_IMAGE_TOKEN,
        )
        config = LlavaNextConfig(
            vision_config=CLIPVisionConfig(image_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE, **TINY_VISION),
            text_config=LlamaConfig(
                vocab_size=len(tokenizer),
                rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                tie_word_embeddings=False,
                **text,
            ),
            image_token_index=tokenizer.convert_tokens_to_ids(TINY_IMAGE_TOKEN),
            image_grid_pinpoints=TINY_GRID_PINPOINTS,
            vision_feature_select_strategy="default",
            vision_feature_layer=-2,
            image_seq_length=(TINY_IMAGE_SIZE // TINY_PATCH_SIZE) ** 2,
        )
        torch.manual_seed(seed)
        return LlavaNextForConditionalGeneration(config).eval(), processor


def image_feature_count(config, width: int, height: int, class_tokens: int) -> int:
    """How many features the LLaVA-NeXT model of `config` makes for an image of this size: the base
    tile's, then the grid of tiles unpadded to the image's shape with a newline per row, by the
    model's own grid and unpadding code (run on an empty tensor)."""
    import torch
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

    vision = config.vision_config
    side = vision.image_size // vision.patch_size
    base = side * side + class_tokens - (config.vision_feature_select_strategy == "default")
    rows, cols = get_anyres_image_grid_shape((height, width), config.image_grid_pinpoints, vision.image_size)
    grid = unpad_image(torch.empty(0, rows * side, cols * side), (height, width))
    return base + grid.shape[1] * (grid.shape[2] + 1)


def hub_key(key: str) -> str:
    """A weight name as the hub's llava-hf checkpoints spell it (the vision tower under its hub prefix)."""
    if key.startswith(VISION_PREFIX) and not key.startswith(VISION_HUB_PREFIX):
        return VISION_HUB_PREFIX + key[len(VISION_PREFIX) :]
    return key


def _rename_vision_keys(shard: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    from adamllm.core.files import tmp_path

    with safe_open(str(shard), "pt") as f:
        metadata = f.metadata()
        keys = list(f.keys())
        if all(hub_key(k) == k for k in keys):
            return
        tensors = {hub_key(k): f.get_tensor(k) for k in keys}
    tmp = tmp_path(shard)
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        tmp.replace(shard)
    finally:
        tmp.unlink(missing_ok=True)
