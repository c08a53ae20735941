"""Loading and saving the models, in the layouts both transformers and vLLM read.

Loading is plain `from_pretrained(repo_id_or_path)`: a hub id (`AdaptLLM/visual-instruction-synthesizer`,
`meta-llama/Meta-Llama-3-8B`) or a local folder work alike.
"""

from __future__ import annotations

import json
from pathlib import Path

VISION_PREFIX = "vision_tower."
VISION_HUB_PREFIX = "vision_tower.vision_model."


def load_synthesizer(name_or_path: str, dtype=None, **kwargs):
    """A LLaVA-NeXT synthesizer and its processor, from the hub or a folder."""
    return load_synthesizer_model(name_or_path, dtype, **kwargs), load_processor(name_or_path)


def load_synthesizer_model(name_or_path: str, dtype=None, **kwargs):
    """Only the LLaVA-NeXT model (under DeepSpeed ZeRO-3 transformers partitions it while loading)."""
    from transformers import LlavaNextForConditionalGeneration

    return LlavaNextForConditionalGeneration.from_pretrained(name_or_path, dtype=dtype or "auto", **kwargs)


def load_processor(name_or_path: str):
    """Only the processor (tokenizer + image processor): enough to render and count prompts."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(name_or_path)


def image_token_count(processor, width: int, height: int) -> int:
    """How many tokens the processor's image token expands into for an image of this size."""
    return processor._get_num_multimodal_tokens(image_sizes=[(height, width)]).num_image_tokens[0]


def save_synthesizer(model, processor, out_dir: str | Path) -> Path:
    """Save model, processor and tokenizer so that transformers and vLLM both load the folder.

    transformers 5.x writes the CLIP tower as `vision_tower.embeddings.*`; vLLM expects the hub
    layout `vision_tower.vision_model.*` and refuses the former. transformers reads both, so the
    saved keys are renamed to the hub layout.
    """
    out = Path(out_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return to_vllm_layout(out)


def to_vllm_layout(out_dir: str | Path) -> Path:
    """Rename a saved LLaVA-NeXT's vision-tower keys to the hub layout vLLM reads (idempotent)."""
    out = Path(out_dir)
    for shard in sorted(out.glob("*.safetensors")):
        _rename_vision_keys(shard)
    index = out / "model.safetensors.index.json"
    if index.exists():
        data = json.loads(index.read_text())
        data["weight_map"] = {_hub_key(k): v for k, v in data["weight_map"].items()}
        index.write_text(json.dumps(data, indent=2))
    return out


def _hub_key(key: str) -> str:
    if key.startswith(VISION_PREFIX) and not key.startswith(VISION_HUB_PREFIX):
        return VISION_HUB_PREFIX + key[len(VISION_PREFIX):]
    return key


def _rename_vision_keys(shard: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(shard), "pt") as f:
        metadata = f.metadata()
        keys = list(f.keys())
        if all(_hub_key(k) == k for k in keys):
            return
        tensors = {_hub_key(k): f.get_tensor(k) for k in keys}
    tmp = shard.with_name(shard.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(shard)
