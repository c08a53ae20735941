"""Convert a LLaVA-repo LLaVA-NeXT checkpoint (`LlavaLlamaForCausalLM`) to the llava-hf layout
(`LlavaNextForConditionalGeneration`) that transformers, `adamllm train` and vLLM load.

    adamllm convert-llava Lin-Chen/open-llava-next-llama3-8b exp/open-llava-next-hf
    BASE_MODEL=exp/open-llava-next-hf bash scripts/tune_synthesizer.sh ...   # the paper's base model

The config is mapped field by field, every weight is renamed (none dropped, none invented: a key that
cannot be placed, or one the model needs and the checkpoint lacks, stops the conversion naming it),
the vision tower's config and image processing come from the CLIP model `mm_vision_tower` names (or
`--vision_tower`), which also supplies the tower's weights when the checkpoint does not hold them,
and `<|reserved_special_token_4|>` becomes the image token, as in the released synthesizer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from adamllm.core.jsonfiles import write_json
from adamllm.models.model_io import model_config, read_config

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<|reserved_special_token_4|>"
# LLaVA-repo key prefix -> llava-hf key prefix (the layout transformers saves and vLLM reads).
KEY_MAP = (
    ("model.vision_tower.vision_tower.vision_model.", "vision_tower.vision_model."),
    ("model.mm_projector.0.", "multi_modal_projector.linear_1."),
    ("model.mm_projector.2.", "multi_modal_projector.linear_2."),
    ("model.image_newline", "image_newline"),
    ("model.embed_tokens.", "language_model.model.embed_tokens."),
    ("model.layers.", "language_model.model.layers."),
    ("model.norm.", "language_model.model.norm."),
    ("lm_head.", "language_model.lm_head."),
)
CLIP_PREFIX = "vision_model."  # the hub layout's prefix of a CLIP tower's weights
# Buffers old checkpoints stored that today's models compute from the config (rope_theta).
DERIVED = (".rotary_emb.inv_freq",)
SELECT_FEATURE = {"patch": "default", "cls_patch": "full"}


@dataclass
class ConvertArgs:
    src: str = field(
        metadata={"help": "LLaVA-repo LLaVA-NeXT folder or hub id, e.g. Lin-Chen/open-llava-next-llama3-8b."}
    )
    out: str = field(metadata={"help": "Folder to write the llava-hf checkpoint into (must not hold one already)."})
    vision_tower: str = field(
        default="",
        metadata={
            "help": "CLIP vision model (hub id or folder) for the tower's config, image processing and, when SRC lacks "
            "them, weights; default: the one SRC's mm_vision_tower names."
        },
    )


def convert(args: ConvertArgs) -> Path:
    """Write the converted checkpoint; returns OUT. Raises ValueError naming what cannot be converted."""
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPVisionConfig

    out = Path(args.out)
    if (out / "config.json").exists():
        raise ValueError(f"{out} already holds a model (config.json); choose an empty folder")
    src = _local_folder(args.src)
    config = read_config(src / "config.json")
    check_config(config, args.src)
    tower = args.vision_tower or config["mm_vision_tower"]
    try:
        model_config(tower)
    except ValueError as e:
        where = "--vision_tower" if args.vision_tower else f"{args.src}'s mm_vision_tower"
        raise ValueError(f"{where}: {e}; pass the CLIP vision model with --vision_tower") from None
    vision = CLIPVisionConfig.from_pretrained(tower)
    clip_processor = CLIPImageProcessor.from_pretrained(tower)
    tokenizer = AutoTokenizer.from_pretrained(str(src))
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        raise ValueError(
            f"{args.src}: the tokenizer has no {IMAGE_TOKEN} to serve as the image token (not a Llama-3 tokenizer?)"
        )

    hf_config = llava_next_config(config, vision, tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
    weights = convert_weights(src, tower, hf_config)
    out.mkdir(parents=True, exist_ok=True)
    _save_weights(weights, out)
    hf_config.save_pretrained(out)
    processor(clip_processor, tokenizer, hf_config).save_pretrained(out)
    if (src / "generation_config.json").exists():
        (out / "generation_config.json").write_text(
            (src / "generation_config.json").read_text(encoding="utf-8"), encoding="utf-8"
        )
    write_json(
        out / "conversion.json",
        {"src": args.src, "vision_tower": tower, "image_token": IMAGE_TOKEN, "tensors": len(weights)},
    )
    log.info("converted %s (%d tensors) into %s", args.src, len(weights), out)
    return out


def check_config(config: dict, name: str) -> None:
    """Raise ValueError naming every field of a LLaVA-repo config we cannot convert."""
    required = (
        "mm_vision_tower",
        "mm_projector_type",
        "image_aspect_ratio",
        "image_grid_pinpoints",
        "mm_patch_merge_type",
        "mm_vision_select_layer",
        "mm_vision_select_feature",
    )
    errors = [f"{f} is missing" for f in required if f not in config]
    if config.get("mm_projector_type", "mlp2x_gelu") != "mlp2x_gelu":
        errors.append(
            f"mm_projector_type {config['mm_projector_type']!r}: only mlp2x_gelu (LLaVA-NeXT's projector) converts"
        )
    if config.get("image_aspect_ratio", "anyres") != "anyres":
        errors.append(f"image_aspect_ratio {config['image_aspect_ratio']!r}: LLaVA-NeXT's anyres is needed")
    if config.get("mm_patch_merge_type", "spatial_unpad") != "spatial_unpad":
        errors.append(
            f"mm_patch_merge_type {config['mm_patch_merge_type']!r}: only spatial_unpad (what LlavaNext does) converts"
        )
    if config.get("mm_vision_select_feature", "patch") not in SELECT_FEATURE:
        errors.append(f"mm_vision_select_feature {config['mm_vision_select_feature']!r}: patch or cls_patch")
    if config.get("mm_use_im_start_end"):
        errors.append("mm_use_im_start_end true: image start/end tokens have no llava-hf equivalent")
    if errors:
        raise ValueError(f"{name}: cannot convert this config: " + "; ".join(errors))


def llava_next_config(config: dict, vision, image_token_id: int):
    """The LlavaNextConfig of a LLaVA-repo config, field by field."""
    from transformers import LlamaConfig, LlavaNextConfig

    rope = dict(config.get("rope_scaling") or {"rope_type": "default"})
    rope.setdefault("rope_type", rope.pop("type", "default"))
    rope["rope_theta"] = config.get("rope_theta", 10000.0)
    text = LlamaConfig(
        vocab_size=config["vocab_size"],
        hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"],
        num_hidden_layers=config["num_hidden_layers"],
        num_attention_heads=config["num_attention_heads"],
        num_key_value_heads=config.get("num_key_value_heads", config["num_attention_heads"]),
        max_position_embeddings=config.get("max_position_embeddings", 8192),
        rms_norm_eps=config.get("rms_norm_eps", 1e-5),
        rope_parameters=rope,
        attention_bias=config.get("attention_bias", False),
        bos_token_id=config.get("bos_token_id"),
        eos_token_id=config.get("eos_token_id"),
        pad_token_id=config.get("pad_token_id"),
        tie_word_embeddings=config.get("tie_word_embeddings", False),
    )
    return LlavaNextConfig(
        architectures=["LlavaNextForConditionalGeneration"],  # what vLLM picks its model class by
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        image_grid_pinpoints=[list(p) for p in config["image_grid_pinpoints"]],
        vision_feature_select_strategy=SELECT_FEATURE[config["mm_vision_select_feature"]],
        vision_feature_layer=config["mm_vision_select_layer"],
        image_seq_length=(vision.image_size // vision.patch_size) ** 2,
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        tie_word_embeddings=text.tie_word_embeddings,
    )


def processor(clip_processor, tokenizer, hf_config):
    """The LlavaNextProcessor: CLIP's image processing with the anyres grid, the tokenizer unchanged."""
    from transformers import LlavaNextImageProcessor, LlavaNextProcessor

    image_processor = LlavaNextImageProcessor(
        size=dict(clip_processor.size),
        crop_size=dict(clip_processor.crop_size),
        image_mean=list(clip_processor.image_mean),
        image_std=list(clip_processor.image_std),
        image_grid_pinpoints=hf_config.image_grid_pinpoints,
    )
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=hf_config.vision_config.patch_size,
        vision_feature_select_strategy=hf_config.vision_feature_select_strategy,
        num_additional_image_tokens=1,  # CLIP's class token
        image_token=IMAGE_TOKEN,
    )


def convert_weights(src: Path, tower: str, hf_config) -> dict:
    """Every checkpoint tensor under its llava-hf name; the tower's from `tower` when SRC lacks it."""
    converted, unplaced = {}, []
    for key, tensor in _read_tensors(src):
        if key.endswith(DERIVED):
            continue
        new = rename(key)
        if new is None:
            unplaced.append(key)
        else:
            converted[new] = tensor
    if unplaced:
        raise ValueError(
            f"{src}: {len(unplaced)} weight(s) have no place in LlavaNext: {', '.join(sorted(unplaced)[:20])}"
        )
    if not any(k.startswith("vision_tower.") for k in converted):
        converted.update(_clip_tower_weights(tower))
    expected = _expected_keys(hf_config)
    missing = sorted(expected - set(converted))
    extra = sorted(set(converted) - expected)
    if missing or extra:
        parts = [
            f"missing {', '.join(missing[:20])}" if missing else "",
            f"unexpected {', '.join(extra[:20])}" if extra else "",
        ]
        raise ValueError(
            f"{src}: the weights do not match a LlavaNext of this config: " + "; ".join(p for p in parts if p)
        )
    return converted


def rename(key: str) -> str | None:
    """A LLaVA-repo weight's llava-hf name; None when it has none."""
    for old, new in KEY_MAP:
        if key.startswith(old):
            return new + key[len(old) :]
    return None


def _expected_keys(hf_config) -> set[str]:
    """The tensor names a LlavaNext of this config saves, without building it (meta device)."""
    import torch
    from transformers import LlavaNextForConditionalGeneration

    from adamllm.models.backbones.llava_next import hub_key

    with torch.device("meta"):
        model = LlavaNextForConditionalGeneration(hf_config)
    names = set()
    for key in model.state_dict():
        key = key.removeprefix("model.")
        if key.startswith("language_model."):
            key = "language_model.model." + key[len("language_model.") :]
        elif key == "lm_head.weight":
            key = "language_model.lm_head.weight"
        names.add(hub_key(key))
    return names


def _clip_tower_weights(tower: str) -> dict:
    from transformers import CLIPVisionModel

    model = CLIPVisionModel.from_pretrained(tower)
    # transformers 5 names the tower's own weights without the hub's "vision_model." prefix; older ones with it.
    return {f"vision_tower.{CLIP_PREFIX}{k.removeprefix(CLIP_PREFIX)}": v for k, v in model.state_dict().items()}


def _read_tensors(src: Path):
    """(name, tensor) of every weight file in SRC: safetensors, else `.bin` through weights_only."""
    import torch
    from safetensors import SafetensorError, safe_open

    files = sorted(src.glob("*.safetensors"))
    if files:
        for path in files:
            try:
                with safe_open(str(path), "pt") as f:
                    for key in f.keys():
                        yield key, f.get_tensor(key)
            except SafetensorError as e:
                raise ValueError(_damaged(path, e)) from None
        return
    files = sorted(src.glob("*.bin"))
    if not files:
        raise ValueError(f"{src}: no *.safetensors or *.bin weights")
    for path in files:
        try:
            weights = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle's errors have no common class: KeyError, EOFError, UnpicklingError, ...
            raise ValueError(_damaged(path, e)) from None
        if not isinstance(weights, dict):
            raise ValueError(f"{path} holds a {type(weights).__name__}, not a state dict of weights")
        yield from weights.items()


def _damaged(path: Path, error: Exception) -> str:
    return (
        f"{path} is not a readable weights file ({error or type(error).__name__}): it is truncated or damaged; "
        f"download or copy it again"
    )


def _save_weights(weights: dict, out: Path) -> None:
    from safetensors.torch import save_file

    save_file(
        {k: v.contiguous() for k, v in weights.items()}, str(out / "model.safetensors"), metadata={"format": "pt"}
    )


def _local_folder(name: str) -> Path:
    """SRC as a folder: itself, or its hub snapshot (config, tokenizer, weights)."""
    path = Path(name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"{name} is a folder without config.json, not a checkpoint")
        return path
    model_config(name)  # "no folder X and no hub id X", gated, offline: said before a long download
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.bin", "*.model", "*.txt"]))
