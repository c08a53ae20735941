"""The contract of a backbone family: everything the pipeline needs to know that differs between
multimodal LLM families (LLaVA-NeXT, Qwen2-VL / Qwen2.5-VL, Qwen3-VL).

The method is the same on every family: the caption round, then the precise / informative pairs; no
loss on the caption round, loss on everything after it and on a final end-of-text that is the stop
token. What a family decides is the byte form of that conversation, the stop token, how its output
splits back into turns, how its processor is set up and checked, which parameters are the vision
encoder's, and how a fine-tuned model is saved so that vLLM loads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adamllm.core.parse import TurnMarks
from adamllm.core.prompts import Turn


@dataclass(frozen=True)
class ProcessorOptions:
    """A user's settings for the image processor; 0 keeps the checkpoint's own.

    Only families with dynamic resolution (Qwen) read them: `max_pixels` is the knob between an
    image's detail and its cost in tokens.
    """

    min_pixels: int = 0
    max_pixels: int = 0

    def given(self) -> dict[str, int]:
        return {k: v for k, v in (("min_pixels", self.min_pixels), ("max_pixels", self.max_pixels)) if v}


@dataclass(frozen=True)
class TinyTokenizerSpec:
    """What a family's tiny test tokenizer needs: its special tokens (in the family's id order), the
    pre-tokenizer split pattern, its BOS (None: the family adds none) and the chat template."""

    special_tokens: tuple[str, ...]
    split_pattern: str
    bos: str | None
    eos: str
    pad: str
    chat_template: str | None


class Backbone:
    """One model family. Subclasses set the class attributes and override the methods that differ;
    `adamllm.models.backbones` registers one instance of each."""

    name: str = ""  # the --family value and the registry key
    title: str = ""  # how people write it: "LLaVA-NeXT"
    model_types: tuple[str, ...] = ()  # config.json model_type values this family serves
    example: str = ""  # a hub id of a base (or synthesizer) of this family
    default_base: str = ""  # the base `adamllm train` fine-tunes when none is given
    marks: TurnMarks  # the conversation's turn markers and its end-of-text (the stop token)
    vision_module: str = ""  # the parameter-name part that marks the vision encoder
    projector_modules: tuple[str, ...] = ()  # parameter-name parts of the projector(s), which train with the LLM
    # Whether `--padding_free` can pack its samples into one row (position ids restarting per
    # sample), and whether `--use_liger_kernel` can patch its text model.
    packs: bool = False
    liger: bool = False
    # Per-token inputs of the processor, besides input_ids, that the model's forward needs: cut and
    # padded (with 0) as input_ids are.
    token_keys: tuple[str, ...] = ()

    @property
    def end_of_text(self) -> str:
        return self.marks.end_of_text

    # --- the conversation ---------------------------------------------------------------------
    def prompt(self, processor, caption: str) -> str:
        """The stage-2a prompt: the caption round, then an open user turn the synthesizer writes."""
        raise NotImplementedError

    def training_text(self, processor, turns: list[Turn]) -> str:
        """A stage-1 training sequence: the conversation (the data's image tag in its first user
        turn), then the end-of-text. Its first round and the opening of the second user turn render
        as `prompt` does, so the inference prompt's tokens are the first of the training sequence's."""
        raise NotImplementedError

    # --- the model ----------------------------------------------------------------------------
    def model_class(self):
        """The transformers class of the family's conditional-generation model."""
        raise NotImplementedError

    def load_model(self, name_or_path: str, dtype=None, **kwargs):
        """The model, from the hub or a folder (under ZeRO-3 transformers partitions it while loading)."""
        return self.model_class().from_pretrained(name_or_path, dtype=dtype or "auto", **kwargs)

    def is_vision_param(self, name: str) -> bool:
        """Whether a parameter belongs to the vision encoder (its own learning rate), not the projector."""
        parts = name.split(".")
        return self.vision_module in parts and not any(p in parts for p in self.projector_modules)

    def load_processor(self, name_or_path: str, options: ProcessorOptions = ProcessorOptions()):
        """The processor set up and checked against the model (ValueError naming the fix)."""
        raise NotImplementedError

    def processor_problem(self, processor, config) -> str:
        """ "" when `processor` marks and expands images as the model of `config` reads them."""
        raise NotImplementedError

    # --- training batches ---------------------------------------------------------------------
    def image_inputs(self, encoded) -> dict:
        """One sample's image tensors from the processor's output (batch of one)."""
        raise NotImplementedError

    def collate_images(self, items: list[dict]) -> dict:
        """The image tensors of a batch of samples, as the model's forward takes them."""
        raise NotImplementedError

    def save_for_vllm(self, out_dir: Path) -> Path:
        """Rewrite a folder saved by transformers so that vLLM loads it too (idempotent)."""
        return out_dir

    # --- tiny models for tests ----------------------------------------------------------------
    tiny_tokenizer: TinyTokenizerSpec

    def build_tiny(self, tokenizer, text_config: dict, seed: int):
        """A random tiny model of the family and its processor, on `tokenizer`."""
        raise NotImplementedError


def image_token_count(processor, width: int, height: int) -> int:
    """How many tokens the processor's image token expands into for an image of this size."""
    return processor._get_num_multimodal_tokens(image_sizes=[(height, width)]).num_image_tokens[0]


def where_to_fix(name_or_path: str) -> str:
    """Where a user edits a model's processor files: the folder itself, or a local copy of a hub repo."""
    if Path(name_or_path).expanduser().is_dir():
        return f"edit the files in {name_or_path}"
    return f"edit them in a local copy (`hf download {name_or_path} --local-dir DIR`) and pass DIR instead"


def auto_processor(name_or_path: str):
    """AutoProcessor's processor; a missing or unreadable file is a ValueError naming the model."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:  # transformers' words for a missing or unreadable tokenizer / processor file
        detail = " ".join(str(e).split())
        raise ValueError(
            f"{name_or_path}: its processor does not load (is its tokenizer saved with it?): {detail}"
        ) from None
