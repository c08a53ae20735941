"""Loading and saving the models, in the layouts both transformers and vLLM read.

Loading is plain `from_pretrained(repo_id_or_path)`: a hub id (`AdaptLLM/visual-instruction-synthesizer`,
`meta-llama/Meta-Llama-3-8B`) or a local folder work alike.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from adamllm.core.jsonfiles import read_json_file

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


# Tokens a vision tower puts before its patches, by vision_config.model_type (CLIP's class token).
# A processor saved by transformers 4 (the released synthesizer's, llava-hf's of 2024) does not store
# this count as num_additional_image_tokens; today's processor then assumes none, and expands each
# image into one token fewer than the model makes features. vLLM counts from the tower too.
CLASS_TOKENS = {"clip_vision_model": 1, "siglip_vision_model": 0}
# Odd image shapes, besides the model's own grid pinpoints, on which both counts must agree.
PROBE_SIZES = ((1, 1), (640, 80), (80, 640), (1000, 999))


def load_processor(name_or_path: str):
    """Only the processor (tokenizer + image processor): enough to render and count prompts.

    What the processor knows of the model follows from the model's config.json: the class-token count
    always (from the vision tower), the patch size and feature strategy where the saved processor has
    none (llava-hf's checkpoints saved before processor_config.json existed). Raises ValueError, naming
    the setting and its fix, when the processor would still expand an image into another number of
    tokens than the model makes features, or marks images with another token than the model's.
    """
    from transformers import AutoConfig, AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:  # transformers' words for a missing or unreadable tokenizer / processor file
        detail = " ".join(str(e).split())
        raise ValueError(
            f"{name_or_path}: its processor does not load (is its tokenizer saved with it?): {detail}"
        ) from None
    config = AutoConfig.from_pretrained(name_or_path)
    vision = config.vision_config
    if processor.patch_size is None:
        processor.patch_size = vision.patch_size
    if processor.vision_feature_select_strategy is None:
        processor.vision_feature_select_strategy = config.vision_feature_select_strategy
    if vision.model_type in CLASS_TOKENS:
        processor.num_additional_image_tokens = CLASS_TOKENS[vision.model_type]
    if problem := processor_problem(processor, config):
        raise ValueError(f"{name_or_path}: {problem}; {_where_to_fix(name_or_path)}")
    return processor


def check_processor(name_or_path: str, flag: str) -> str:
    """ "" when the synthesizer's processor loads and matches its model (see load_processor), else why
    not, naming `flag`: for the argument checks, before any work. A model that is no LLaVA-NeXT at
    all passes here: check_model says so."""
    try:
        if model_config(name_or_path).get("model_type") not in SYNTHESIZER_TYPES:
            return ""
    except ValueError:
        return ""
    try:
        load_processor(name_or_path)
    except ValueError as e:
        return f"{flag} {e}"
    return ""


def image_token_count(processor, width: int, height: int) -> int:
    """How many tokens the processor's image token expands into for an image of this size."""
    return processor._get_num_multimodal_tokens(image_sizes=[(height, width)]).num_image_tokens[0]


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


def processor_problem(processor, config) -> str:
    """ "" when `processor` marks and expands images as the model of `config` reads them, else what
    differs: the first image size where the counts part, and each setting that differs from the model's."""
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
                f"expands a {width}x{height} image into {tokens} image tokens but the model makes {features} image "
                "features (transformers would fail: 'Image features and image tokens do not match')"
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


def _where_to_fix(name_or_path: str) -> str:
    if Path(name_or_path).expanduser().is_dir():
        return f"edit the files in {name_or_path}"
    return f"edit them in a local copy (`hf download {name_or_path} --local-dir DIR`) and pass DIR instead"


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
        data["weight_map"] = {hub_key(k): v for k, v in data["weight_map"].items()}
        index.write_text(json.dumps(data, indent=2))
    return out


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
