"""Builders tests in several folders share: run folders written by hand, handwritten synthesizer
outputs, a LLaVA-repo checkpoint made from the tiny synthesizer, damaged images."""

import io
import json
import math
import shutil
from pathlib import Path

from PIL import Image

from adamllm.core import prompts

FINAL = "image_caption_and_synthetic_task.json"


def logprobs_for(p_yes):
    """Yes / No / Open log-probabilities whose softmax gives Yes the probability `p_yes`."""
    return {"yes": math.log(p_yes), "no": math.log((1 - p_yes) * 0.8), "open": math.log((1 - p_yes) * 0.2)}


def make_run(root, questions, verdicts=None, p_yes=None, stats=True):
    """A stage-2 run folder by hand: record i asks questions[i] about its own image.

    verdicts[i] defaults to "yes"; p_yes[i] (when given) adds logprob-mode log-probabilities."""
    images, out = root / "images", root / "out"
    images.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, question in enumerate(questions):
        Image.new("RGB", (8 + i % 5, 6), (10 * i % 256, 100, 200)).save(images / f"im{i}.png")
        verdict = verdicts[i] if verdicts else "yes"
        row = {
            "images": [f"im{i}.png"],
            "messages": [
                {"role": "user", "content": "<image>\nDescribe the image."},
                {"role": "assistant", "content": f"Caption {i}."},
            ],
            "syn_id": i,
            "pred": "raw",
            "collected_QA": {"Q": question, "precise_A": f"P{i}", "informative_A": f"Long answer {i}."},
            "consistency": verdict,
        }
        if p_yes is not None and p_yes[i] is not None:
            row["consistency_logprobs"] = logprobs_for(p_yes[i])
        rows.append(row)
    write_rows(out, rows)
    if stats:
        (out / "stats.json").write_text(
            json.dumps(
                {
                    "synthesize": {
                        "records_in": len(rows),
                        "records_out": len(rows),
                        "rejected": {},
                        "args": {"model": "AdaptLLM/visual-instruction-synthesizer", "image_folder": str(images)},
                    },
                    "filter": {
                        "records_in": len(rows),
                        "records_out": sum(r["consistency"] == "yes" for r in rows),
                        "rejected": {},
                        "pass_rate": 0.5,
                        "args": {"model": "meta-llama/Meta-Llama-3-8B", "mode": "logprob" if p_yes else "generate"},
                    },
                }
            )
        )
    return {"images": images, "out": out, "data": out / "filtered_task_pairs.jsonl", "final": out / FINAL}


def write_rows(out, rows):
    (out / "filtered_task_pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


SAME = [
    "What is shown in the image?",
    "what is shown in the image",
    "WHAT  is shown, in the image!",
    "What is shown in the image ?",
]

# Near-duplicate questions: which pairs share enough words at --near_threshold 0.8.
NEAR = [
    "What is the main subject of this image?",  # a group: 7 of 8 words shared
    "what is the main subject of the image",
    "What is the main subject in this picture?",  # 6 of 10 words with the first: another group
    "Is the dog bigger than the cat?",
    "Is the cat bigger than the dog?",  # the same words in another order
    "How many plates are on the table?",
]


U = "<|start_header_id|>user<|end_header_id|>\n\n"


A = "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"


E = "<|eot_id|>"


def caption_pairs_of(records: list[dict], path: Path) -> Path:
    """Stage 2's input made of merged seed records: each one's image and caption, in the round the
    synthesizer was trained on. Written to `path`."""
    pairs = [
        {
            "images": [r["image"]],
            "messages": [
                {"role": "user", "content": "<image>\nDescribe the image."},
                {"role": "assistant", "content": r["conversations"][1]["value"]},
            ],
        }
        for r in records
    ]
    path.write_text(json.dumps(pairs))
    return path


def trained_pairs(records: list[dict]) -> list[list[tuple[str, str]]]:
    """The (question, answer) pairs each merged seed record trains after its caption round."""
    return [list(zip(t[::2], t[1::2])) for t in ([x["value"] for x in r["conversations"][2:]] for r in records)]


def handwritten(tmp_path, marks=None):
    """Four synthesize records: two with a triplet, one without, one rejected. `marks` (a
    TurnMarks) writes the preds in another family's turn format than Llama-3's."""
    u, a, e = (
        (U, A, E) if marks is None else (marks.user_header, marks.turn_end + marks.assistant_header, marks.turn_end)
    )
    preds = [
        f"{prompts.PRECISE_HINT}\nHow many?{a}3{e}{u}{prompts.INFORMATIVE_HINT}\nHow many?{a}I count three, so 3.{e}",
        f"{prompts.INFORMATIVE_HINT}\nWhat dish?{a}It is ramen.{e}{u}{prompts.PRECISE_HINT}\nWhat "
        f"dish?{a}Ramen{e}{u}{prompts.PRECISE_HINT}\nHot?{a}Ye",
        f"{prompts.PRECISE_HINT}\nOnly precise?{a}Yes{e}",
        None,
    ]
    records = [
        {
            "images": ["x.png"],
            "messages": [],
            "syn_id": i,
            "pred": p,
            **({"error": {"reason": "image_missing", "detail": "-"}} if p is None else {}),
        }
        for i, p in enumerate(preds)
    ]
    path = tmp_path / "syn_task_triplets.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# llava-hf prefix -> the LLaVA repository's (written here on its own, not taken from the converter).
TO_LLAVA_REPO = {
    "language_model.model.": "model.",
    "language_model.lm_head.": "lm_head.",
    "multi_modal_projector.linear_1.": "model.mm_projector.0.",
    "multi_modal_projector.linear_2.": "model.mm_projector.2.",
    "image_newline": "model.image_newline",
    "vision_tower.vision_model.": "model.vision_tower.vision_tower.vision_model.",
}


def hf_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def llava_repo_key(key: str) -> str:
    prefix = next(p for p in TO_LLAVA_REPO if key.startswith(p))
    return TO_LLAVA_REPO[prefix] + key[len(prefix) :]


def make_llava_repo_checkpoint(
    synthesizer: Path, out: Path, with_tower=True, bin_weights=False, config_edit=None, weights_edit=None
) -> Path:
    """A LLaVA-repo LLaVA-NeXT (LlavaLlamaForCausalLM) holding the tiny synthesizer's weights, and the
    CLIP folder its mm_vision_tower names."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    hf = json.loads((synthesizer / "config.json").read_text())
    weights = hf_weights(synthesizer)
    clip = out / "clip"
    tower = CLIPVisionModel(
        CLIPVisionConfig(
            **{k: v for k, v in hf["vision_config"].items() if k not in ("model_type", "transformers_version")}
        )
    )
    prefix = "vision_tower.vision_model."
    tower.load_state_dict({k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)})
    tower.save_pretrained(clip)
    size = hf["vision_config"]["image_size"]
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(clip)

    src = out / "llava-repo"
    src.mkdir(parents=True)
    text = hf["text_config"]
    config = {
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava_llama",
        **{
            k: text[k]
            for k in (
                "vocab_size",
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
                "num_key_value_heads",
                "max_position_embeddings",
                "rms_norm_eps",
                "bos_token_id",
                "eos_token_id",
                "pad_token_id",
                "tie_word_embeddings",
            )
        },
        "rope_theta": text["rope_parameters"]["rope_theta"],
        "rope_scaling": None,
        "mm_vision_tower": str(clip),
        "mm_projector_type": "mlp2x_gelu",
        "mm_hidden_size": hf["vision_config"]["hidden_size"],
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "image_aspect_ratio": "anyres",
        "image_grid_pinpoints": hf["image_grid_pinpoints"],
        "mm_patch_merge_type": "spatial_unpad",
        "mm_use_im_start_end": False,
    }
    (config_edit or (lambda c: None))(config)
    (src / "config.json").write_text(json.dumps(config))
    repo = {llava_repo_key(k): v for k, v in weights.items() if with_tower or not k.startswith("vision_tower.")}
    repo["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(4)  # old checkpoints stored it
    (weights_edit or (lambda w: None))(repo)
    if bin_weights:
        torch.save(repo, src / "pytorch_model.bin")
    else:
        save_file(repo, str(src / "model.safetensors"))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(synthesizer / name, src / name)
    return src


def truncated_jpeg(path: Path) -> Path:
    buf = io.BytesIO()
    Image.effect_noise((128, 128), 60).convert("RGB").save(buf, "JPEG")
    data = buf.getvalue()
    path.write_bytes(data[: len(data) * 2 // 3])  # header intact, data cut short: verify() passes it
    return path


def filtered_rows(folder: Path, n: int) -> list[dict]:
    rows = []
    for i in range(n):
        Image.new("RGB", (16, 16), (i * 20, 0, 0)).save(folder / f"img{i}.png")
        rows.append(
            {
                "images": [f"img{i}.png"],
                "messages": [
                    {"role": "user", "content": "<image>\nDescribe the image."},
                    {"role": "assistant", "content": f"caption {i}"},
                ],
                "syn_id": i,
                "pred": "...",
                "consistency": "yes",
                "collected_QA": {"Q": f"q{i}?", "precise_A": "a", "informative_A": "so the answer is a"},
            }
        )
    return rows
