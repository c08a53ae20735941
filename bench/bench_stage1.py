"""Stage-1 training throughput: tokens/s, model FLOPs utilisation and peak memory of `adamllm train`
under DeepSpeed, on a random-weight LLaVA-NeXT with the layer shapes of the 8B synthesizer.

    python bench/bench_stage1.py --zero 2      # one GPU: the issue #10 baseline configuration
    python bench/bench_stage1.py --zero 3 --use_liger_kernel --attn_implementation flash_attention_2 --padding_free
    .venv/bin/python bench/bench_stage1.py --small   # the same path on a CPU, tiny shapes, seconds

The model: Llama-3-8B text layers (hidden 4096, MLP 14336, 32 heads, 8 KV heads, vocab 128256, rope
theta 500000; `--layers` of them) and the CLIP ViT-L/14-336 tower (`--vision_layers` of 24), with the
anyres grid of llava-hf/llama3-llava-next-8b-hf, built from configs (nothing downloaded) with the
Llama-3-style tokenizer of adamllm.testing.tiny, and cached in --work_dir. The data: adamllm.testing.fixtures seed
data merged by `adamllm merge-seed`, its pictures enlarged to 672x672 so each fills the 2x2 grid
(2,928 image tokens) and its captions lengthened to --text_tokens. Training: torchrun running
`adamllm train --deepspeed scripts/zero{2,3}.json --step_timing True`; on a GPU in bf16 with gradient
checkpointing, as scripts/tune_synthesizer.sh trains.

Columns: tokens/s counts every sample token (image and text, no padding) of the steps after
--warmup_steps, over all processes. MFU = model FLOPs / (seconds x processes x peak bf16 dense
FLOPs), model FLOPs = 6 x parameters x tokens (the input embedding, a lookup, left out) + 6 x text
layers x hidden x the sum of each sample's squared length (causal attention, forward and backward);
gradient checkpointing's recomputation is not counted. Peak memory: the largest of the processes'
torch.cuda.max_memory_allocated during training, or peak RSS on a CPU. Model, data and a log of the
training run are kept in --work_dir (the model is reused by the next run of the same shapes), the
numbers in WORK_DIR/results.json.

Issue #10's baseline, one H200, 8 layers (3.1B parameters), batch 4 of ~3,100 tokens, bf16, gradient
checkpointing: ZeRO-2 ~16.7K tokens/s (~28% MFU), ZeRO-3 ~12.5K (~21%), peak 62-67 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout, installed or not

# Dense (no sparsity) bf16 tensor-core peaks in TFLOPs, from the vendors' data sheets; the first
# pattern found in torch.cuda.get_device_name() wins, so the more specific names come first.
PEAK_BF16_TFLOPS = [
    (r"H200 NVL", 835.0),
    (r"H200|GH200", 989.4),
    (r"H100 NVL", 835.0),
    (r"H100 PCIe", 756.0),
    (r"H100|H800", 989.4),
    (r"B200", 2250.0),
    (r"B100", 1750.0),
    (r"A100|A800", 312.0),
    (r"L40S", 362.0),
    (r"L40\b", 181.0),
    (r"\bL4\b", 121.0),
    (r"A10G", 70.0),
    (r"\bA10\b", 125.0),
    (r"RTX 6000 Ada", 364.0),
    (r"A6000", 154.8),
    (r"RTX 4090", 165.2),
    (r"RTX 3090", 71.0),
    (r"MI300X", 1307.4),
    (r"MI250X?", 383.0),
]


@dataclass(frozen=True)
class Shapes:
    """A LLaVA-NeXT's layer shapes and its processor's image grid."""

    text: dict
    vision: dict
    vocab_size: int  # 0: the tokenizer's size
    image_size: int
    patch_size: int
    grid: list
    picture: int  # side of the generated pictures: the 2x2 grid cell, which they then fill
    layers: int
    vision_layers: int


EIGHT_B = Shapes(
    text=dict(
        hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-5
    ),
    vision=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, projection_dim=768),
    vocab_size=128256,
    image_size=336,
    patch_size=14,
    grid=[[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
    picture=672,
    layers=8,
    vision_layers=24,
)


def small_shapes() -> Shapes:
    from adamllm.testing import tiny

    return Shapes(
        text={k: v for k, v in tiny.TEXT.items() if k != "num_hidden_layers"},
        vision={k: v for k, v in tiny.VISION.items() if k != "num_hidden_layers"},
        vocab_size=0,
        image_size=tiny.IMAGE_SIZE,
        patch_size=tiny.PATCH_SIZE,
        grid=tiny.GRID_PINPOINTS,
        picture=2 * tiny.IMAGE_SIZE,
        layers=tiny.TEXT["num_hidden_layers"],
        vision_layers=tiny.VISION["num_hidden_layers"],
    )


@dataclass
class ModelInfo:
    path: str
    params: int
    flop_params: int  # without the input embedding
    text_layers: int
    hidden: int


@dataclass
class Result:
    zero: int
    levers: str
    processes: int
    batch: int
    params: int
    tokens_per_sample: float
    padding: float  # share of the processed positions that were padding
    timed_steps: int
    seconds_per_step: float
    tokens_per_s: float
    mfu: float | None
    peak_memory_gib: float
    device: str
    per_rank_peak_gib: list = field(default_factory=list)
    fallbacks: list = field(default_factory=list)  # levers asked for that could not run, and why


def peak_tflops(device_name: str) -> float | None:
    for pattern, tflops in PEAK_BF16_TFLOPS:
        if re.search(pattern, device_name):
            return tflops
    return None


def make_processor(shapes: Shapes, tokenizer):
    """The LLaVA-NeXT processor of these shapes around the Llama-3-style tokenizer of adamllm.testing.tiny."""
    from transformers import LlavaNextProcessor
    from transformers.models.llava_next import LlavaNextImageProcessor

    from adamllm.testing import tiny

    return LlavaNextProcessor(
        image_processor=LlavaNextImageProcessor(
            size={"shortest_edge": shapes.image_size},
            crop_size={"height": shapes.image_size, "width": shapes.image_size},
            image_grid_pinpoints=shapes.grid,
        ),
        tokenizer=tokenizer,
        patch_size=shapes.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token=tiny.IMAGE_TOKEN,
    )


def model_config(shapes: Shapes, layers: int, vision_layers: int, tokenizer):
    """llama3-llava-next-8b-hf's config with `layers` text and `vision_layers` vision layers."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig

    from adamllm.testing import tiny

    text = LlamaConfig(
        vocab_size=shapes.vocab_size or len(tokenizer),
        num_hidden_layers=layers,
        max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **shapes.text,
    )
    return LlavaNextConfig(
        vision_config=CLIPVisionConfig(
            image_size=shapes.image_size, patch_size=shapes.patch_size, num_hidden_layers=vision_layers, **shapes.vision
        ),
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(tiny.IMAGE_TOKEN),
        image_grid_pinpoints=shapes.grid,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        projector_hidden_act="gelu",
        image_seq_length=(shapes.image_size // shapes.patch_size) ** 2,
    )


def model_info(model, path: Path) -> ModelInfo:
    text = model.config.text_config
    params = sum(p.numel() for p in model.parameters())
    return ModelInfo(
        path=str(path),
        params=params,
        flop_params=params - model.get_input_embeddings().weight.numel(),
        text_layers=text.num_hidden_layers,
        hidden=text.hidden_size,
    )


def random_model(shapes: Shapes, layers: int, vision_layers: int, tokenizer, bf16: bool):
    """A LLaVA-NeXT with these shapes and random weights (seed 0). Built on the GPU when there is one:
    3B random parameters initialise in seconds there."""
    import torch
    from transformers import LlavaNextForConditionalGeneration

    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        return LlavaNextForConditionalGeneration._from_config(
            model_config(shapes, layers, vision_layers, tokenizer), dtype=torch.bfloat16 if bf16 else torch.float32
        )


def build_model(shapes: Shapes, layers: int, vision_layers: int, bf16: bool, folder: Path) -> ModelInfo:
    """A random LLaVA-NeXT with these shapes and its processor, saved (once) in `folder`."""
    info_path = folder / "bench_model.json"
    if info_path.exists():
        return ModelInfo(**json.loads(info_path.read_text()))
    import torch
    import transformers

    from adamllm.models.model_io import save_synthesizer
    from adamllm.testing import tiny

    transformers.utils.logging.disable_progress_bar()  # "Writing model shards": noise in the table's output
    tokenizer = tiny.build_tokenizer()
    model = random_model(shapes, layers, vision_layers, tokenizer, bf16)
    info = model_info(model, folder)
    save_synthesizer(model, make_processor(shapes, tokenizer), folder)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the GPU's memory is the training processes' now
    info_path.write_text(json.dumps(asdict(info)))  # last: its presence means the folder is complete
    return info


def make_data(folder: Path, model: Path, records: int, picture: int, text_tokens: int) -> dict:
    """Seed records merged as `adamllm merge-seed` does, pictures enlarged to fill the anyres grid,
    captions lengthened so that the text of a record is `text_tokens` long on average (from half to
    one and a half times that, so that batches have padding to save, as real seed data does)."""
    from PIL import Image

    from adamllm.core.prompts import training_text
    from adamllm.models.model_io import load_processor
    from adamllm.stage1.merge_seed import MergeSeedArgs, run_merge_seed
    from adamllm.stage1.train_data import conversation_turns
    from adamllm.testing import fixtures

    merged = folder / "train.json"
    done = {"data_path": merged, "image_folder": folder / "seed" / "images", "blank": folder / "blank.png"}
    if merged.exists():
        return done
    seed = fixtures.make_seed_fixtures(folder / "seed", num_images=records * 10 // 9 + 8, seed=0)  # merge keeps 90%
    for path in Path(seed["image_folder"]).iterdir():
        Image.open(path).resize((picture, picture), Image.NEAREST).save(path)
    run_merge_seed(
        MergeSeedArgs(
            caption_path=str(seed["caption"]),
            precise_qa_path=str(seed["precise"]),
            informative_qa_path=str(seed["informative"]),
            output=str(folder / "merged.json"),
            blank_image_path=str(folder / "blank.png"),
            image_folder=str(seed["image_folder"]),
            replace_with_blank_image_percent=0,
        )
    )
    processor = load_processor(str(model))
    rng = random.Random(0)
    data = json.loads((folder / "merged.json").read_text())[:records]
    for record in data:
        target = rng.randint(text_tokens // 2, text_tokens * 3 // 2)
        for _ in range(3):  # words and tokens differ a little: converge in a few rounds
            n = len(processor.tokenizer(training_text(conversation_turns(record), processor.image_token)).input_ids) - 1
            if n >= target:
                break
            caption = record["conversations"][1]
            caption["value"] += " " + " ".join(rng.choices(fixtures.FILLER, k=target - n)) + "."
    merged.write_text(json.dumps(data))  # last: its presence means the folder is complete
    return done


def train(args, model: ModelInfo, data: dict, out: Path, gpu: bool) -> Path:
    """`adamllm train` under torchrun; returns the output folder holding step_timing.rank*.json."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(args.nproc),
        "--master_port",
        str(args.port),
        "-m",
        "adamllm",
        "train",
        "--deepspeed",
        str(ROOT / "scripts" / f"zero{args.zero}.json"),
        "--model_name_or_path",
        model.path,
        "--data_path",
        str(data["data_path"]),
        "--image_folder",
        str(data["image_folder"]),
        "--blank_image_path",
        str(data["blank"]),
        "--output_dir",
        str(out),
        "--max_steps",
        str(args.steps),
        "--per_device_train_batch_size",
        str(args.batch_size),
        "--gradient_accumulation_steps",
        "1",
        "--learning_rate",
        "2e-5",
        "--save_strategy",
        "no",
        "--logging_steps",
        "1",
        "--report_to",
        "none",
        "--disable_tqdm",
        "True",
        "--train_sampling_strategy",
        "group_by_length",  # as scripts/tune_synthesizer.sh
        "--step_timing",
        "True",
        "--attn_implementation",
        args.attn_implementation,
        "--use_liger_kernel",
        str(args.use_liger_kernel),
        "--padding_free",
        str(args.padding_free),
    ]
    if gpu:
        command += [
            "--bf16",
            "True",
            "--tf32",
            "True",
            "--gradient_checkpointing",
            str(args.gradient_checkpointing),
            "--dataloader_num_workers",
            "4",
        ]
    else:
        command += ["--dataloader_num_workers", "0"]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    if not gpu:
        env["OMP_NUM_THREADS"] = "1"  # docs/cpu-stack.md: with two threads per process, steps stall
    log = out.parent / f"{out.name}.log"
    print(f"training: {args.nproc} process(es), ZeRO-{args.zero}, {args.steps} steps; log {log}", flush=True)
    with open(log, "w") as fh:
        code = subprocess.run(command, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    if code:
        tail = log.read_text(errors="replace")[-4000:]
        raise SystemExit(f"bench_stage1: adamllm train failed (exit {code}); the end of {log}:\n{tail}")
    return out


def summarize(args, model: ModelInfo, out: Path, peak: float | None) -> Result:
    ranks = [json.loads(p.read_text()) for p in sorted(out.glob("step_timing.rank*.json"))]
    if len(ranks) != args.nproc or any(len(r["steps"]) <= args.warmup_steps for r in ranks):
        raise SystemExit(
            f"bench_stage1: expected {args.nproc} step_timing files with more than {args.warmup_steps} steps in {out}"
        )
    timed = [r["steps"][args.warmup_steps :] for r in ranks]
    seconds = max(sum(s["seconds"] for s in steps) for steps in timed)  # ranks wait for each other every step
    tokens = sum(s["tokens"] for steps in timed for s in steps)
    padded = sum(s["padded_tokens"] for steps in timed for s in steps)
    samples = sum(s["samples"] for steps in timed for s in steps)
    squares = sum(s["sum_sq_lengths"] for steps in timed for s in steps)
    flops = 6 * model.flop_params * tokens + 6 * model.text_layers * model.hidden * squares
    peaks = [r["peak_memory_bytes"] / 2**30 for r in ranks]
    # What ran, not what was asked: a lever that cannot run here falls back (training_summary.json says why).
    ran = json.loads((out / "training_summary.json").read_text())["speed_levers"]
    levers = [name for name, on in (("liger", ran["liger"]), ("padding-free", ran["padding_free"])) if on]
    return Result(
        zero=args.zero,
        levers=" + ".join([ran["attn_implementation"], *levers]),
        fallbacks=ran["fallbacks"],
        processes=args.nproc,
        batch=args.batch_size,
        params=model.params,
        tokens_per_sample=tokens / samples,
        padding=1 - tokens / padded,
        timed_steps=len(timed[0]),
        seconds_per_step=seconds / len(timed[0]),
        tokens_per_s=tokens / seconds,
        mfu=flops / seconds / (args.nproc * peak * 1e12) if peak else None,
        peak_memory_gib=max(peaks),
        device=ranks[0]["device"],
        per_rank_peak_gib=peaks,
    )


def print_table(result: Result, peak: float | None) -> None:
    header = (
        "ZeRO",
        "attention + levers",
        "processes",
        "batch",
        "params",
        "tokens/sample",
        "padding",
        "timed steps",
        "s/step",
        "tokens/s",
        "MFU",
        "peak memory/rank",
    )
    mfu = f"{result.mfu:.1%}" if result.mfu is not None else "n/a (give --peak_tflops)"
    params = f"{result.params / 1e9:.2f}B" if result.params >= 1e9 else f"{result.params / 1e6:.1f}M"
    row = (
        result.zero,
        result.levers,
        result.processes,
        result.batch,
        params,
        f"{result.tokens_per_sample:.0f}",
        f"{result.padding:.1%}",
        result.timed_steps,
        f"{result.seconds_per_step:.3f}",
        f"{result.tokens_per_s:,.0f}",
        mfu,
        f"{result.peak_memory_gib:.2f} GiB",
    )
    print(f"\nstage-1 benchmark on {result.device} (peak {peak or 'unknown'} bf16 TFLOPs per device)")
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    print(" | ".join(str(x) for x in row))
    for fallback in result.fallbacks:
        print(f"note: {fallback}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zero", type=int, choices=(2, 3), default=2, help="scripts/zero2.json or zero3.json")
    parser.add_argument("--layers", type=int, help="text layers (default 8; --small: 4)")
    parser.add_argument(
        "--vision_layers", type=int, help="vision tower layers (default 24, the whole CLIP ViT-L; --small: 2)"
    )
    parser.add_argument("--batch_size", type=int, help="per process (default 4; --small: 2)")
    parser.add_argument("--steps", type=int, help="optimizer steps (default 20; --small: 6)")
    parser.add_argument("--warmup_steps", type=int, default=2, help="first steps left out of the timing")
    parser.add_argument("--nproc", type=int, help="processes (default 1 GPU; --small: 2 CPU processes)")
    parser.add_argument(
        "--text_tokens", type=int, default=300, help="text tokens per sample (the image adds 2,928 on the 8B grid)"
    )
    parser.add_argument(
        "--peak_tflops", type=float, help="peak dense bf16 TFLOPs per device (default: from the GPU's name)"
    )
    parser.add_argument(
        "--gradient_checkpointing",
        type=lambda s: s.lower() in ("1", "true", "yes"),
        default=True,
        help="on a GPU (default True)",
    )
    parser.add_argument(
        "--use_liger_kernel", action="store_true", help="lever: Liger's kernels and fused linear cross-entropy"
    )
    parser.add_argument(
        "--attn_implementation", default="sdpa", help="lever: sdpa (default), eager or flash_attention_2"
    )
    parser.add_argument("--padding_free", action="store_true", help="lever: micro-batches packed without padding")
    parser.add_argument(
        "--small", action="store_true", help="tiny shapes on the CPU, float32: the same path in seconds"
    )
    parser.add_argument(
        "--work_dir", default=str(ROOT / "exp" / "bench_stage1"), help="model cache, data, logs, results.json"
    )
    parser.add_argument("--keep", action="store_true", help="keep the training output folder")
    parser.add_argument("--port", type=int, default=29531, help="torchrun's master port")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Result:
    args = parse_args(argv)
    import torch

    gpu = torch.cuda.is_available() and not args.small
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed would warn that it guessed so, in every process
    if not gpu and not args.small:
        print("bench_stage1: no CUDA device, so the small CPU version (--small); the 8B shapes need a GPU")
        args.small = True
    shapes = small_shapes() if args.small else EIGHT_B
    args.layers = args.layers or shapes.layers
    args.vision_layers = args.vision_layers or shapes.vision_layers
    args.batch_size = args.batch_size or (2 if args.small else 4)
    args.steps = args.steps or (6 if args.small else 20)
    args.nproc = args.nproc or (1 if gpu else 2)
    peak = args.peak_tflops or (peak_tflops(torch.cuda.get_device_name()) if gpu else None)

    work = Path(args.work_dir)
    kind = "small" if args.small else "8b"
    model_dir = work / f"model-{kind}-L{args.layers}-V{args.vision_layers}-{'bf16' if gpu else 'fp32'}"
    start = time.monotonic()
    model = build_model(shapes, args.layers, args.vision_layers, gpu, model_dir)
    records = args.steps * args.batch_size * args.nproc
    data = make_data(
        work / f"data-{kind}-{records}-{args.text_tokens}", model_dir, records, shapes.picture, args.text_tokens
    )
    print(
        f"model ({model.params / 1e6:,.0f}M parameters) and {records} records ready in "
        f"{time.monotonic() - start:.0f} s",
        flush=True,
    )
    out = work / f"run-zero{args.zero}"
    shutil.rmtree(out, ignore_errors=True)  # never resume: every run times the same steps
    train(args, model, data, out, gpu)
    result = summarize(args, model, out, peak)
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    (work / "results.json").write_text(json.dumps({"args": vars(args), "result": asdict(result)}, indent=1))
    print_table(result, peak)
    return result


if __name__ == "__main__":
    main()
