"""What the Qwen-VL families share: a ChatML conversation rendered by the checkpoint's own chat
template, an image placeholder the processor expands into one token per merged patch, and
dynamic resolution bounded by `min_pixels` / `max_pixels`.

The conversation is exactly what the base checkpoint's chat template renders for the same turns, so
a synthesizer fine-tuned from an Instruct model sees its native format. Templates only open
assistant turns, so the stage-2 prompt's open user turn is cut from a rendered user turn holding a
sentinel. Every turn ends with `<|im_end|>` and the synthesizer writes several turns, so the
training sequence ends with `<|endoftext|>` after the last one, and inference stops there.
"""

from __future__ import annotations

from adamllm.core.parse import TurnMarks
from adamllm.core.prompts import ASSISTANT, CAPTION_HINT, IMAGE_TAG, INFORMATIVE_HINT, USER, Turn, caption_turns
from adamllm.models.backbones.base import (
    Backbone,
    ProcessorOptions,
    auto_processor,
    where_to_fix,
)

IM_START, IM_END, END_OF_TEXT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
VISION_START, VISION_END, IMAGE_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"
# What the published templates write for an image inside a user turn.
IMAGE_PLACEHOLDER = VISION_START + IMAGE_PAD + VISION_END
CHATML_MARKS = TurnMarks(IM_END + "\n", f"{IM_START}{USER}\n", f"{IM_START}{ASSISTANT}\n", END_OF_TEXT)
# Stands for the open user turn's text while rendering; private-use characters no template alters.
SENTINEL = "\ue000open user turn\ue000"
# The Qwen2 tokenizer's special tokens in their id order (151643...), as the tiny tokenizers have them.
QWEN2_SPECIAL_TOKENS = (
    END_OF_TEXT,
    IM_START,
    IM_END,
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    VISION_START,
    VISION_END,
    "<|vision_pad|>",
    IMAGE_PAD,
    "<|video_pad|>",
)
# The Qwen2 tokenizer's pre-tokenizer split pattern (digits one by one, unlike Llama-3's triples).
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def messages(turns: list[Turn]) -> list[dict]:
    """The turns as chat-template messages: a turn holding the data's image tag gets an image item
    first (where the published templates put it), then its text without the tag and its newline."""
    out = []
    for turn in turns:
        content = []
        text = turn.text
        if IMAGE_TAG in text:
            content.append({"type": "image"})
            text = text.replace(IMAGE_TAG + "\n" if IMAGE_TAG + "\n" in text else IMAGE_TAG, "", 1)
        content.append({"type": "text", "text": text})
        out.append({"role": turn.role, "content": content})
    return out


def chat_template(processor) -> str | None:
    return getattr(processor, "chat_template", None) or getattr(processor.tokenizer, "chat_template", None)


class ChatMLBackbone(Backbone):
    """A Qwen-VL family; subclasses name the model types, classes and tiny shapes."""

    marks = CHATML_MARKS
    vision_module = "visual"
    # visual.merger, the patch merger, plays LLaVA's projector; Qwen3-VL adds one merger per DeepStack layer.
    projector_modules = ("merger", "deepstack_merger_list")
    # Its 3-D multimodal positions are computed from each whole sequence and its image grid: a packed
    # row with restarting 1-D position ids would give every sample but the first wrong positions.
    packs = False
    token_keys = ("mm_token_type_ids",)  # which tokens are image tokens: the M-RoPE positions follow them

    def render(self, processor, turns: list[Turn]) -> str:
        """The turns as the checkpoint's chat template renders them."""
        return processor.tokenizer.apply_chat_template(
            messages(turns), chat_template=chat_template(processor), tokenize=False
        )

    def open_user_turn(self, processor, turns: list[Turn]) -> str:
        text = self.render(processor, turns + [Turn(USER, SENTINEL)])
        return text[: text.index(SENTINEL)]

    def prompt(self, processor, caption: str) -> str:
        return self.open_user_turn(processor, caption_turns(caption, IMAGE_TAG))

    def training_text(self, processor, turns: list[Turn]) -> str:
        return self.render(processor, turns) + self.end_of_text

    def load_processor(self, name_or_path: str, options: ProcessorOptions = ProcessorOptions()):
        """The processor with `options` applied to its pixel bounds, checked against the model's
        config.json and its chat template (ValueError naming the fix)."""
        from transformers import AutoConfig

        processor = auto_processor(name_or_path)
        if options.given():
            size = dict(processor.image_processor.size)
            size["shortest_edge"] = options.min_pixels or size["shortest_edge"]
            size["longest_edge"] = options.max_pixels or size["longest_edge"]
            if size["shortest_edge"] > size["longest_edge"]:
                raise ValueError(
                    f"--min_pixels {size['shortest_edge']} is above --max_pixels {size['longest_edge']} "
                    f"(the processor of {name_or_path} bounds images to [min_pixels, max_pixels])"
                )
            processor.image_processor.size = size
        if problem := self.processor_problem(processor, AutoConfig.from_pretrained(name_or_path)):
            raise ValueError(f"{name_or_path}: {problem}; {where_to_fix(name_or_path)}")
        return processor

    def processor_problem(self, processor, config) -> str:
        tokenizer = processor.tokenizer
        for name, token, model_id in (
            ("image_token_id", IMAGE_PAD, config.image_token_id),
            ("vision_start_token_id", VISION_START, config.vision_start_token_id),
        ):
            if tokenizer.convert_tokens_to_ids(token) != model_id:
                return (
                    f"its tokenizer gives {token} the id {tokenizer.convert_tokens_to_ids(token)} but the model "
                    f"reads {model_id} (config.json {name}): the tokenizer is not the model's"
                )
        if processor.image_token != IMAGE_PAD:
            return f'its processor marks images with {processor.image_token!r}; set "image_token": "{IMAGE_PAD}"'
        vision, image_processor = config.vision_config, processor.image_processor
        for name, ours, theirs in (
            ("patch_size", image_processor.patch_size, vision.patch_size),
            ("merge_size", image_processor.merge_size, vision.spatial_merge_size),
            ("temporal_patch_size", image_processor.temporal_patch_size, vision.temporal_patch_size),
        ):
            if ours != theirs:
                return (
                    f"its image processor has {name} {ours} where the model has {theirs} (config.json vision_config); "
                    f"set {name} {theirs} in its processor_config.json (or preprocessor_config.json)"
                )
        return self.template_problem(processor)

    def template_problem(self, processor) -> str:
        """ "" when the chat template renders the pipeline's conversation as the method needs it: the
        image placeholder in the first user turn, the turn marks, and the stage-2 prompt as the first
        characters of the training sequence."""
        fix = (
            f"the {self.title} synthesizer renders its conversation with the base checkpoint's chat template; "
            f"copy chat_template.jinja (or chat_template.json) from the {self.title} Instruct model it was made from "
            f"(e.g. {self.example})"
        )
        if not chat_template(processor):
            return f"it has no chat template: {fix}"
        turns = caption_turns("A caption.", IMAGE_TAG) + [
            Turn(USER, f"{INFORMATIVE_HINT}\nA question?"),
            Turn(ASSISTANT, "An answer."),
        ]
        try:
            prompt, text = self.prompt(processor, "A caption."), self.training_text(processor, turns)
        except Exception as e:  # a template that raises on these turns: jinja's errors have no common base
            return f"its chat template fails on a plain conversation ({type(e).__name__}: {e}): {fix}"
        expected = f"{IMAGE_PLACEHOLDER}{CAPTION_HINT}{IM_END}\n{IM_START}{ASSISTANT}\nA caption.{IM_END}\n"
        if expected not in prompt or not prompt.endswith(CHATML_MARKS.user_header) or not text.startswith(prompt):
            return f"its chat template does not render ChatML turns with {IMAGE_PLACEHOLDER} in the user turn: {fix}"
        return ""

    def image_inputs(self, encoded) -> dict:
        return {"pixel_values": encoded["pixel_values"], "image_grid_thw": encoded["image_grid_thw"][0]}

    def collate_images(self, items: list[dict]) -> dict:
        """The patches of every image in one tensor, in sample order, with each image's grid: the model
        scatters their features into the image tokens in reading order."""
        import torch

        return {
            "pixel_values": torch.cat([x["pixel_values"] for x in items]),
            "image_grid_thw": torch.stack([x["image_grid_thw"] for x in items]),
        }

    def model_class(self):
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText


# --- the tiny models' shared parts ------------------------------------------------------------------
def tiny_text_ids(tokenizer) -> dict[str, int]:
    """The text config's special ids, as the Instruct checkpoints set them."""
    end, im_end = tokenizer.convert_tokens_to_ids(END_OF_TEXT), tokenizer.convert_tokens_to_ids(IM_END)
    return {"bos_token_id": end, "eos_token_id": im_end, "pad_token_id": end}


def tiny_multimodal_ids(tokenizer) -> dict[str, int]:
    """The model config's image and video token ids."""
    ids = tokenizer.convert_tokens_to_ids
    return {
        "image_token_id": ids(IMAGE_PAD),
        "video_token_id": ids("<|video_pad|>"),
        "vision_start_token_id": ids(VISION_START),
        "vision_end_token_id": ids(VISION_END),
    }


def tiny_image_processor(patch_size: int, min_pixels: int, max_pixels: int):
    from transformers import Qwen2VLImageProcessor

    return Qwen2VLImageProcessor(
        size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
        patch_size=patch_size,
        merge_size=2,
        temporal_patch_size=2,
    )
