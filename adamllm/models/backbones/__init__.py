"""The backbone families a synthesizer can be made of, registered in one place.

A family is chosen from the model's config.json `model_type`; everything that differs between
families lives in its module (adamllm/models/backbones/<family>.py), so a new family is one new
file plus its line here.
"""

from __future__ import annotations

from adamllm.core.parse import parse_pairs
from adamllm.models.backbones.base import Backbone, ProcessorOptions
from adamllm.models.backbones.llava_next import LlavaNext
from adamllm.models.backbones.qwen2_5_vl import Qwen25VL
from adamllm.models.backbones.qwen3_vl import Qwen3VL

BACKBONES: dict[str, Backbone] = {b.name: b for b in (LlavaNext(), Qwen25VL(), Qwen3VL())}
FAMILIES = tuple(BACKBONES)
SYNTHESIZER_TYPES = tuple(t for b in BACKBONES.values() for t in b.model_types)
DEFAULT_FAMILY = "llava_next"

__all__ = ["BACKBONES", "DEFAULT_FAMILY", "FAMILIES", "SYNTHESIZER_TYPES", "Backbone", "ProcessorOptions"]


def backbone_named(name: str) -> Backbone:
    """The family of a --family value; ValueError naming the known ones."""
    if name not in BACKBONES:
        raise ValueError(f"--family {name}: choose one of {', '.join(FAMILIES)}")
    return BACKBONES[name]


def backbone_of_type(model_type: str) -> Backbone | None:
    """The family serving a config.json model_type, or None."""
    return next((b for b in BACKBONES.values() if model_type in b.model_types), None)


def supported() -> str:
    """The families and their model types, for messages."""
    return "; ".join(
        f"{b.title} (model_type {' / '.join(b.model_types)}, e.g. {b.example})" for b in BACKBONES.values()
    )


def split_pairs(pred: str) -> list[tuple[str, str]]:
    """The (question, answer) pairs of a synthesizer's output, whichever family wrote it: the family
    whose turn end the text holds. An output holding none has no finished turn in any family."""
    for backbone in BACKBONES.values():
        if backbone.marks.turn_end.rstrip() in pred:
            return parse_pairs(pred, backbone.marks)
    return []
