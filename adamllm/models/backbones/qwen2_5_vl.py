"""Qwen2-VL and Qwen2.5-VL (e.g. Qwen/Qwen2.5-VL-7B-Instruct): ChatML, a default system turn, 14-px
patches merged 2x2, so a 672x672 picture is 576 image tokens."""

from __future__ import annotations

from adamllm.models.backbones.base import TinyTokenizerSpec
from adamllm.models.backbones.chatml import (
    END_OF_TEXT,
    IM_END,
    QWEN2_SPECIAL_TOKENS,
    QWEN2_SPLIT,
    ChatMLBackbone,
    tiny_image_processor,
    tiny_multimodal_ids,
    tiny_text_ids,
)

# The published Qwen2-VL / Qwen2.5-VL chat template's format (the parts the pipeline uses: string
# or typed content, images in user turns, the default system turn when there is none).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Pixel bounds of the tiny processor: 4 to 64 image tokens of 28x28 px.
TINY_MIN_PIXELS, TINY_MAX_PIXELS = 4 * 28 * 28, 64 * 28 * 28
TINY_VISION = dict(
    depth=2, hidden_size=64, intermediate_size=128, num_heads=2, window_size=56, fullatt_block_indexes=[1]
)


def mrope_section(head_dim: int) -> list[int]:
    """Multimodal RoPE's split of a head's rotary half into temporal, height and width parts: it must
    sum to head_dim / 2 (the published 7B's is [16, 24, 24] for head_dim 128)."""
    half = head_dim // 2
    return [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]


class Qwen25VL(ChatMLBackbone):
    name = "qwen2_5_vl"
    title = "Qwen2.5-VL"
    model_types = ("qwen2_5_vl", "qwen2_vl")
    example = "Qwen/Qwen2.5-VL-7B-Instruct"
    default_base = "Qwen/Qwen2.5-VL-7B-Instruct"
    tiny_tokenizer = TinyTokenizerSpec(QWEN2_SPECIAL_TOKENS, QWEN2_SPLIT, None, IM_END, END_OF_TEXT, CHAT_TEMPLATE)

    def build_tiny(self, tokenizer, text: dict, seed: int):
        import torch
        from transformers import (
            Qwen2_5_VLConfig,
            Qwen2_5_VLForConditionalGeneration,
            Qwen2_5_VLProcessor,
            Qwen2VLVideoProcessor,
        )

        head_dim = text["hidden_size"] // text["num_attention_heads"]
        config = Qwen2_5_VLConfig(
            text_config=dict(
                vocab_size=len(tokenizer),
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope_section(head_dim)},
                tie_word_embeddings=False,
                **tiny_text_ids(tokenizer),
                **text,
            ),
            vision_config=dict(
                patch_size=14,
                spatial_merge_size=2,
                temporal_patch_size=2,
                out_hidden_size=text["hidden_size"],
                **TINY_VISION,
            ),
            tie_word_embeddings=False,
            **tiny_multimodal_ids(tokenizer),
        )
        image_processor = tiny_image_processor(14, TINY_MIN_PIXELS, TINY_MAX_PIXELS)
        processor = Qwen2_5_VLProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=Qwen2VLVideoProcessor(cap_pixels_per_frame=True),
            chat_template=CHAT_TEMPLATE,
        )
        torch.manual_seed(seed)
        return Qwen2_5_VLForConditionalGeneration(config).eval(), processor
