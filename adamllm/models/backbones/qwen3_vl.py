"""Qwen3-VL (e.g. Qwen/Qwen3-VL-8B-Instruct): ChatML without a default system turn, 16-px patches
merged 2x2 (32 px a token), DeepStack features from several vision layers."""

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

# The published Qwen3-VL Instruct chat template's format, without tool calls: a system turn only
# when the conversation has one, images in user turns, typed or string content.
CHAT_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}<|im_start|>system\n"
    "{%- if messages[0].content is string %}{{- messages[0].content }}"
    "{%- else %}{%- for content in messages[0].content %}{%- if 'text' in content %}{{- content.text }}{%- endif %}"
    "{%- endfor %}{%- endif %}<|im_end|>\n{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or message.role == 'assistant' %}"
    "{{- '<|im_start|>' + message.role + '\n' }}"
    "{%- if message.content is string %}{{- message.content }}"
    "{%- else %}{%- for content in message.content %}"
    "{%- if content.type == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif 'text' in content %}{{- content.text }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
# Qwen3's tokenizer adds tool and thinking tokens after Qwen2's.
QWEN3_SPECIAL_TOKENS = QWEN2_SPECIAL_TOKENS + ("<tool_call>", "</tool_call>", "<think>", "</think>")
TINY_MIN_PIXELS, TINY_MAX_PIXELS = 4 * 32 * 32, 64 * 32 * 32
TINY_VISION = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, num_position_embeddings=64)


def mrope_section(head_dim: int) -> list[int]:
    """Interleaved multimodal RoPE's temporal / height / width split of a head's rotary half: it must
    sum to head_dim / 2 (the published 8B's is [24, 20, 20] for head_dim 128)."""
    half = head_dim // 2
    return [half - 2 * (5 * half // 16), 5 * half // 16, 5 * half // 16]


class Qwen3VL(ChatMLBackbone):
    name = "qwen3_vl"
    title = "Qwen3-VL"
    model_types = ("qwen3_vl",)
    example = "Qwen/Qwen3-VL-8B-Instruct"
    default_base = "Qwen/Qwen3-VL-8B-Instruct"
    tiny_tokenizer = TinyTokenizerSpec(QWEN3_SPECIAL_TOKENS, QWEN2_SPLIT, None, IM_END, END_OF_TEXT, CHAT_TEMPLATE)

    def build_tiny(self, tokenizer, text: dict, seed: int):
        import torch
        from transformers import (
            Qwen3VLConfig,
            Qwen3VLForConditionalGeneration,
            Qwen3VLProcessor,
            Qwen3VLVideoProcessor,
        )

        head_dim = text["hidden_size"] // text["num_attention_heads"]
        config = Qwen3VLConfig(
            text_config=dict(
                vocab_size=len(tokenizer),
                head_dim=head_dim,
                rope_parameters={
                    "rope_type": "default",
                    "rope_theta": 5e6,
                    "mrope_section": mrope_section(head_dim),
                    "mrope_interleaved": True,
                },
                tie_word_embeddings=False,
                **tiny_text_ids(tokenizer),
                **text,
            ),
            vision_config=dict(
                patch_size=16,
                spatial_merge_size=2,
                temporal_patch_size=2,
                out_hidden_size=text["hidden_size"],
                deepstack_visual_indexes=[0],
                **TINY_VISION,
            ),
            tie_word_embeddings=False,
            **tiny_multimodal_ids(tokenizer),
        )
        image_processor = tiny_image_processor(16, TINY_MIN_PIXELS, TINY_MAX_PIXELS)
        processor = Qwen3VLProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=Qwen3VLVideoProcessor(),
            chat_template=CHAT_TEMPLATE,
        )
        torch.manual_seed(seed)
        return Qwen3VLForConditionalGeneration(config).eval(), processor
