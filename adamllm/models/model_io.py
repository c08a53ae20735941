"""Loading and saving the models, in the layouts both transformers and vLLM read.

Loading is plain `from_pretrained(repo_id_or_path)`: a hub id (`AdaptLLM/visual-instruction-synthesizer`,
`meta-llama/Meta-Llama-3-8B`) or a local folder work alike. What differs between synthesizer families
is theirs (adamllm.models.backbones); this module picks the family from config.json.
"""

from __future__ import annotations

import re
from pathlib import Path

from adamllm.core.jsonfiles import read_json_file
from adamllm.models.backbones import (
    SYNTHESIZER_TYPES,
    Backbone,
    ProcessorOptions,
    backbone_of_type,
    supported,
)
from adamllm.models.backbones.base import image_token_count

__all__ = ["image_token_count"]

# What each role needs, by config.json's model_type: the synthesizer is a multimodal model of a
# supported family, the checker a text LLM. Telling them apart up front turns swapped arguments into
# a message, not a traceback.
MULTIMODAL_TYPES = SYNTHESIZER_TYPES + (
    "llava",
    "llava_llama",
    "llava_onevision",
    "mllama",
    "gemma3",
    "idefics3",
    "smolvlm",
    "internvl",
    "qwen3_vl_moe",
    "mistral3",
)
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
        raise ValueError(
            f"hub id {name_or_path} is gated: accept its licence on its hub page, then `hf auth login`"
        ) from None
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
    return read_json_file(
        path, dict, "a JSON object of model settings", "it is damaged: save or download the model again"
    )


def check_model(name_or_path: str, role: str, flag: str) -> str:
    """ "" when `name_or_path` can serve as `role` ("synthesizer" or "checker"), else why not, naming `flag`."""
    try:
        model_type = model_config(name_or_path).get("model_type", "")
    except ValueError as e:
        return f"{flag} {name_or_path}: {e}"
    if role == "synthesizer" and model_type not in SYNTHESIZER_TYPES:
        hint = (
            " (a LLaVA-repo checkpoint: convert it first with `adamllm convert-llava`)"
            if model_type == "llava_llama"
            else ""
        )
        text = (
            " It looks like a text LLM: did you swap the synthesizer and the checker?"
            if model_type not in MULTIMODAL_TYPES
            else ""
        )
        return (
            f"{flag} {name_or_path} is a {model_type or 'model without model_type'}, not a synthesizer family this "
            f"toolkit knows: {supported()}{hint}.{text}"
        )
    if role == "checker" and model_type in MULTIMODAL_TYPES:
        return (
            f"{flag} {name_or_path} is a multimodal {model_type}; the checker is a text LLM such as "
            "meta-llama/Meta-Llama-3-8B. Did you swap the synthesizer and the checker?"
        )
    return ""


def backbone_for(name_or_path: str) -> Backbone:
    """The family of a synthesizer (or base) model, from its config.json; ValueError naming the known ones."""
    model_type = model_config(name_or_path).get("model_type", "")
    backbone = backbone_of_type(model_type)
    if backbone is None:
        raise ValueError(f"{name_or_path} is a {model_type or 'model without model_type'}; supported: {supported()}")
    return backbone


def load_synthesizer(name_or_path: str, dtype=None, options: ProcessorOptions = ProcessorOptions(), **kwargs):
    """A synthesizer and its processor, from the hub or a folder."""
    return load_synthesizer_model(name_or_path, dtype, **kwargs), load_processor(name_or_path, options)


def load_synthesizer_model(name_or_path: str, dtype=None, **kwargs):
    """Only the model (under DeepSpeed ZeRO-3 transformers partitions it while loading)."""
    return backbone_for(name_or_path).load_model(name_or_path, dtype, **kwargs)


def load_processor(name_or_path: str, options: ProcessorOptions = ProcessorOptions()):
    """Only the processor (tokenizer + image processor): enough to render and count prompts. Set up
    and checked against the model by its family (ValueError naming the setting and its fix)."""
    return backbone_for(name_or_path).load_processor(name_or_path, options)


def check_processor(name_or_path: str, flag: str, options: ProcessorOptions = ProcessorOptions()) -> str:
    """ "" when the synthesizer's processor loads and matches its model (see load_processor), else why
    not, naming `flag`: for the argument checks, before any work. A model of no known family passes
    here: check_model says so."""
    try:
        if model_config(name_or_path).get("model_type") not in SYNTHESIZER_TYPES:
            return ""
    except ValueError:
        return ""
    try:
        load_processor(name_or_path, options)
    except ValueError as e:
        return f"{flag} {e}"
    return ""


def save_synthesizer(model, processor, out_dir: str | Path) -> Path:
    """Save model, processor and tokenizer so that transformers and vLLM both load the folder."""
    out = Path(out_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return to_vllm_layout(out)


def to_vllm_layout(out_dir: str | Path) -> Path:
    """Rewrite a saved synthesizer as its family needs for vLLM to load it (idempotent)."""
    return backbone_for(str(out_dir)).save_for_vllm(Path(out_dir))
