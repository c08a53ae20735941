"""Loading and saving the models, in the layouts both transformers and vLLM read.

Loading is plain `from_pretrained(repo_id_or_path)`: a hub id (`AdaptLLM/visual-instruction-synthesizer`,
`meta-llama/Meta-Llama-3-8B`) or a local folder work alike.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from adamllm.formats import read_json_file

# What each role needs, by config.json's model_type: the synthesizer is a LLaVA-NeXT, the checker a
# text LLM. Telling them apart up front turns swapped arguments into a message, not a traceback.
SYNTHESIZER_TYPES = ("llava_next",)
MULTIMODAL_TYPES = ("llava", "llava_next", "llava_llama", "llava_onevision", "mllama", "qwen2_vl", "qwen2_5_vl")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def model_config(name_or_path: str) -> dict:
    """The config.json of a model folder or hub id, without loading any weight.

    Raises ValueError saying what is wrong: "no folder X and no hub id X", a folder that is no saved
    model, a gated or unreachable hub repo.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise ValueError(f"{name_or_path} is a folder without config.json, not a saved model")
        return read_config(config)
    if path.exists():
        raise ValueError(f"{name_or_path} is a file; give a model folder or a hub id")
    if not HUB_ID.fullmatch(name_or_path) or name_or_path.endswith((".json", ".safetensors", ".bin")):
        raise ValueError(f"no folder {name_or_path} and no hub id {name_or_path}")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        config = hf_hub_download(name_or_path, "config.json")
    except GatedRepoError:
        raise ValueError(f"hub id {name_or_path} is gated: accept its licence on its hub page, then `hf auth login`") from None
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise ValueError(f"no folder {name_or_path} and no hub id {name_or_path}") from None
    except LocalEntryNotFoundError:  # before its base class EntryNotFoundError
        raise ValueError(
            f"no folder {name_or_path}, and hub id {name_or_path} is not in the local cache while the hub "
            "cannot be reached (HF_HUB_OFFLINE is set, or no network)"
        ) from None
    except EntryNotFoundError:
        raise ValueError(f"hub id {name_or_path} has no config.json: not a transformers model") from None
    return read_config(Path(config))


def read_config(path: Path) -> dict:
    """A model's config.json; damage is a ValueError naming the file (not a decoder's bare words)."""
    return read_json_file(path, dict, "a JSON object of model settings", "it is damaged: save or download the model again")


def check_model(name_or_path: str, role: str, flag: str) -> str:
    """"" when `name_or_path` can serve as `role` ("synthesizer" or "checker"), else why not, naming `flag`."""
    try:
        model_type = model_config(name_or_path).get("model_type", "")
    except ValueError as e:
        return f"{flag} {name_or_path}: {e}"
    if role == "synthesizer" and model_type not in SYNTHESIZER_TYPES:
        hint = " (a LLaVA-repo checkpoint: convert it first with `adamllm convert-llava`)" if model_type == "llava_llama" else ""
        text = " It looks like a text LLM: did you swap the synthesizer and the checker?" if model_type not in MULTIMODAL_TYPES else ""
        return (
            f"{flag} {name_or_path} is a {model_type or 'model without model_type'}, not a LLaVA-NeXT "
            f"(model_type llava_next, e.g. AdaptLLM/visual-instruction-synthesizer){hint}.{text}"
        )
    if role == "checker" and model_type in MULTIMODAL_TYPES:
        return (
            f"{flag} {name_or_path} is a multimodal {model_type}; the checker is a text LLM such as "
            "meta-llama/Meta-Llama-3-8B. Did you swap the synthesizer and the checker?"
        )
    return ""


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

    from adamllm.files import tmp_path

    with safe_open(str(shard), "pt") as f:
        metadata = f.metadata()
        keys = list(f.keys())
        if all(_hub_key(k) == k for k in keys):
            return
        tensors = {_hub_key(k): f.get_tensor(k) for k in keys}
    tmp = tmp_path(shard)
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        tmp.replace(shard)
    finally:
        tmp.unlink(missing_ok=True)
