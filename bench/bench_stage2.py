"""Stage-2 throughput (run by hand or by `make bench`).

CPU mode (the default on a machine without CUDA; `--cpu` to insist): the tiny models, per engine.

    .venv/bin/python bench/bench_stage2.py [--num_pairs 300] [--max_new_tokens 64]

Prints a table: pairs/s, output tokens/s, the share of wall time spent inside the engine (the rest is
image loading, prompt building, JSON and fsync), and the filter's prefill tokens computed with and
without prefix caching. Wall time excludes model loading (the "load s" column).

GPU mode (the default with CUDA; `--gpu` to insist): synthesis at the real synthesizer's size, each
row one `adamllm synthesize` process, as a user runs it.

    python3 bench/bench_stage2.py [--layers 32] [--num_pairs 256] [--max_new_tokens 256] [--image_size 672x672]
    python3 bench/bench_stage2.py --model exp/synthesizer              # a real synthesizer folder instead
    python3 bench/bench_stage2.py --compare quantization=,fp8          # one row per value ("" = flag left out)
    python3 bench/bench_stage2.py --max_num_seqs 128 -- --no-prefix_caching   # after --: to adamllm synthesize as is

Without --model it builds a LLaVA-NeXT with random weights and llava-hf/llama3-llava-next-8b-hf's
shapes: Llama-3-8B text layers (--layers of them, 32 in the real model), a CLIP ViT-L/14-336 tower,
the same anyres grid; bf16. The generated pairs have 672x672 pictures (2,928 image tokens each) and
captions of ~300 prompt tokens. The table gives pairs/s, prefill tokens/s (prompt tokens / engine
seconds), decode tokens/s (output tokens / engine seconds) and the share of the compute-bound limit:
prefill FLOPs (2 x LLM parameters x prompt tokens, causal attention, the vision tower and projector
per tile) / (the GPU's dense bf16 peak x engine seconds). Engine seconds hold the decode too, so the
share is a lower bound. Random weights never pick <|end_of_text|> (its logit is pinned at 0): every
output runs to --max_new_tokens, so the decode length is forced. --quantization, --max_num_seqs,
--max_num_batched_tokens and --enforce_eager go to `adamllm synthesize` when given. Without vLLM
installed the rows run `--engine hf` and the table says so. `--small` runs the same path with the
tiny models' shapes, on a CPU too (a plumbing check).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `python3 bench/bench_stage2.py` from a checkout, adamllm not installed

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def handwritten_triplets(pairs_path: Path, out: Path, seed: int = 0) -> Path:
    """syn_task_triplets.jsonl with well-formed preds, so the filter has a triplet per record."""
    from adamllm.core import prompts
    from adamllm.testing import fixtures

    rng = random.Random(seed)
    u, a, e = prompts.header("user"), prompts.EOT + prompts.header("assistant"), prompts.EOT
    rows = []
    for i, record in enumerate(json.loads(pairs_path.read_text())):
        _, q, short, long = rng.choice(fixtures.qa_tasks(fixtures.random_scene(rng)))
        pred = f"{prompts.PRECISE_HINT}\n{q}{a}{short}{e}{u}{prompts.INFORMATIVE_HINT}\n{q}{a}{long}{e}"
        rows.append({**record, "syn_id": i, "pred": pred})
    path = out / "syn_task_triplets.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def timed(fn):
    start = time.monotonic()
    stats = fn()
    return stats, time.monotonic() - start


def cpu_table(args) -> None:
    """CPU mode: the tiny models, synthesis and filter, per engine (the table `make bench` prints)."""
    from adamllm.stage2.filter import FilterArgs, run_filter
    from adamllm.stage2.synthesize import SynthesizeArgs, run_synthesize
    from adamllm.testing.fixtures import make_caption_pairs
    from adamllm.testing.tiny import make_tiny_models

    work = Path(tempfile.mkdtemp(prefix="adamllm-bench-"))
    models = make_tiny_models(work / "tiny")
    pairs = make_caption_pairs(work / "pairs", args.num_pairs)
    rows = []
    for engine in ("vllm", "hf"):
        out = work / f"synth-{engine}"
        stats, total = timed(
            lambda: run_synthesize(
                SynthesizeArgs(
                    model=str(models["synthesizer"]),
                    data_path=str(pairs["data_path"]),
                    image_folder=str(pairs["image_folder"]),
                    output_dir=str(out),
                    engine=engine,
                    max_new_tokens=args.max_new_tokens,
                    batch_size=args.batch_size,
                )
            )
        )
        wall = stats["wall_s"] - stats.get("engine_load_s", 0.0)  # model loading is the "load s" column
        rows.append(
            (
                "synthesize",
                engine,
                "-",
                stats["records_in"],
                wall,
                stats["output_tokens"],
                stats["engine_s"],
                stats.get("engine_load_s", 0.0),
                stats["prompt_tokens"],
                "-",
            )
        )
    triplets = handwritten_triplets(pairs["data_path"], work)
    for engine, caching in (("vllm", True), ("vllm", False), ("hf", False)):
        out = work / f"filter-{engine}-{caching}"
        stats, total = timed(
            lambda: run_filter(
                FilterArgs(
                    model=str(models["checker"]),
                    data_path=str(triplets),
                    output_dir=str(out),
                    engine=engine,
                    batch_size=args.batch_size,
                    prefix_caching=caching,
                )
            )
        )
        wall = stats["wall_s"] - stats.get("engine_load_s", 0.0)
        rows.append(
            (
                "filter",
                engine,
                "on" if caching else "off",
                stats["records_in"],
                wall,
                stats["output_tokens"],
                stats["engine_s"],
                stats.get("engine_load_s", 0.0),
                stats["prompt_tokens"],
                stats["prompt_tokens_computed"],
            )
        )

    header = (
        "stage",
        "engine",
        "prefix cache",
        "pairs",
        "wall s",
        "pairs/s",
        "out tok/s",
        "in engine",
        "load s",
        "prompt tok",
        "prefill computed",
    )
    print(
        f"\nstage-2 benchmark: {args.num_pairs} generated pairs, tiny models, max_new_tokens {args.max_new_tokens}, "
        f"batch {args.batch_size}"
    )
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for stage, engine, cache, n, wall, out_tok, engine_s, load_s, prompt_tok, computed in rows:
        print(
            " | ".join(
                str(x)
                for x in (
                    stage,
                    engine,
                    cache,
                    n,
                    f"{wall:.1f}",
                    f"{n / wall:.1f}",
                    f"{out_tok / wall:.0f}",
                    f"{engine_s / wall:.0%}",
                    f"{load_s:.1f}",
                    prompt_tok,
                    computed,
                )
            )
        )


# ---------------------------------------------------------------------------------------------------
# GPU mode

# The model's shapes, its processor and the GPUs' peaks are bench_stage1.py's: both benchmarks measure
# the same LLaVA-NeXT (llava-hf/llama3-llava-next-8b-hf's layer shapes, or the tiny models' with --small).
PASS_THROUGH = ("quantization", "max_num_seqs", "max_num_batched_tokens", "enforce_eager")
DONE = "bench_model.json"


def bench_stage1():
    sys.path.insert(0, str(REPO / "bench"))
    import bench_stage1

    return bench_stage1


def device_peak(override: float | None) -> tuple[str, float | None]:
    """The device's name and its dense bf16 peak in TFLOP/s (None: unknown, give --peak_tflops)."""
    import torch

    if not torch.cuda.is_available():
        return "CPU", override
    name = torch.cuda.get_device_name(0)
    return name, override or bench_stage1().peak_tflops(name)


def build_random_synthesizer(out: Path, small: bool, layers: int) -> Path:
    """A LLaVA-NeXT with random weights, bench_stage1's shapes and `layers` text layers, saved where
    transformers and vLLM load it (reused when `out` holds the same). bf16 on a GPU, else float32.
    Unlike bench_stage1's, its LM head never picks <|end_of_text|>, so decode lengths are forced."""
    import gc

    import torch

    from adamllm.core.prompts import EOS
    from adamllm.models.model_io import to_vllm_layout
    from adamllm.testing import tiny

    b1 = bench_stage1()
    shapes = b1.small_shapes() if small else b1.EIGHT_B
    key = {"small": small, "layers": layers, "vision_layers": shapes.vision_layers}
    if (out / DONE).exists() and json.loads((out / DONE).read_text()) == key:
        return out
    shutil.rmtree(out, ignore_errors=True)
    tokenizer = tiny.build_tokenizer()  # Llama-3-style, ~3k tokens; the 8B's embedding rows are kept
    cuda = torch.cuda.is_available()
    model = b1.random_model(shapes, layers, shapes.vision_layers, tokenizer, bf16=cuda).eval()
    with torch.no_grad():
        # Logit 0 for <|end_of_text|> and for the rows no token uses: the max over ~3k random logits
        # is positive, so greedy decoding never stops early and never writes an unknown id.
        head = model.get_output_embeddings().weight
        head[len(tokenizer) :] = 0
        head[tokenizer.convert_tokens_to_ids(EOS)] = 0
    model.save_pretrained(out, max_shard_size="2GB")  # small shards: the vLLM-layout rename rewrites only the tower's
    b1.make_processor(shapes, tokenizer).save_pretrained(out)
    to_vllm_layout(out)
    del model, head
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()  # the engine runs in another process and needs the memory
    (out / DONE).write_text(json.dumps(key))
    return out


def make_pairs(out: Path, num_pairs: int, width: int, height: int, caption_words: int) -> dict[str, Path]:
    """adamllm.testing.fixtures' caption pairs, pictures scaled to width x height (an anyres grid size) and
    captions lengthened with filler words, so prompts are as long as real ones."""
    from PIL import Image

    from adamllm.core.jsonfiles import write_json_list
    from adamllm.testing.fixtures import FILLER, make_caption_pairs

    pairs = make_caption_pairs(out, num_pairs)
    rng = random.Random(0)
    records = json.loads(Path(pairs["data_path"]).read_text())
    for record in records:
        path = Path(pairs["image_folder"]) / record["images"][0]
        with Image.open(path) as image:
            image.convert("RGB").resize((width, height), Image.NEAREST).save(path)
        words = " ".join(rng.choices(FILLER, k=caption_words))
        record["messages"][1]["content"] += " " + words.capitalize() + "."
    write_json_list(pairs["data_path"], records)
    return pairs


def prefill_flops(config, width: int, height: int, records: int, prompt_tokens: int) -> tuple[float, int]:
    """(FLOPs of the prefill of `records` prompts holding `prompt_tokens` in all, LLM parameters):
    2 x the LLM layers' parameters per token, causal attention (at the mean prompt length), the LM head
    once per prompt, the vision tower (up to the feature layer) and projector per tile of each image."""
    from transformers.image_processing_utils import select_best_resolution

    t, v = config.text_config, config.vision_config
    h, heads, kv = t.hidden_size, t.num_attention_heads, t.num_key_value_heads
    hd = getattr(t, "head_dim", None) or h // heads
    layer = h * heads * hd * 2 + 2 * h * kv * hd + 3 * h * t.intermediate_size
    llm = t.num_hidden_layers * layer
    mean = prompt_tokens / max(records, 1)
    flops = 2 * llm * prompt_tokens + records * (2 * t.num_hidden_layers * mean**2 * heads * hd + 2 * t.vocab_size * h)
    feature = config.vision_feature_layer
    feature = max(feature) if isinstance(feature, (list, tuple)) else feature
    vision_layers = v.num_hidden_layers + 1 + feature if feature < 0 else feature
    vh, side = v.hidden_size, v.image_size
    per_tile = (side // v.patch_size) ** 2 + 1
    best_h, best_w = select_best_resolution((height, width), config.image_grid_pinpoints)
    tiles = 1 + (best_h // side) * (best_w // side)
    tower = vision_layers * (2 * (4 * vh * vh + 2 * vh * v.intermediate_size) * per_tile + 4 * per_tile**2 * vh)
    projector = 2 * (vh * h + h * h) * (per_tile - 1)
    return flops + records * tiles * (tower + projector), llm


def synthesize_row(args, model: str, pairs: dict, out: Path, engine: str, flags: list[str]) -> dict:
    """One `adamllm synthesize` process; its stats.json entry, or rc and the log's tail when it failed."""
    batch = args.batch_size or (256 if engine == "vllm" else 8)
    cmd = [
        sys.executable,
        "-m",
        "adamllm",
        "synthesize",
        "--model",
        model,
        "--data_path",
        str(pairs["data_path"]),
        "--image_folder",
        str(pairs["image_folder"]),
        "--output_dir",
        str(out),
        "--engine",
        engine,
        "--max_new_tokens",
        str(args.max_new_tokens),
        "--batch_size",
        str(batch),
        "--max_model_len",
        str(args.max_model_len),
        *flags,
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    log = out.with_suffix(".log")
    shutil.rmtree(out, ignore_errors=True)  # a rerun into the same --work would resume, not run
    print("$ " + " ".join(cmd), flush=True)
    start = time.monotonic()
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, env=env).returncode
    total = time.monotonic() - start
    if rc != 0:
        tail = log.read_text(errors="replace")[-3000:]
        print(f"FAILED (exit {rc}): {log}\n{tail}", file=sys.stderr)
        return {"rc": rc, "log": str(log), "process_s": total}
    stats = json.loads((out / "stats.json").read_text())["synthesize"]
    return {**stats, "rc": 0, "log": str(log), "process_s": total, "batch_size": batch}


def row_flags(args) -> list[tuple[str, list[str]]]:
    """(label, flags) per row: the pass-through flags given, one row per --compare value."""
    base = {name: getattr(args, name) for name in PASS_THROUGH if getattr(args, name) is not None}
    variants = [dict(base)]
    if args.compare:
        name, _, values = args.compare.partition("=")
        name = name.replace("-", "_")
        if name not in PASS_THROUGH:
            raise SystemExit(f"--compare {args.compare}: compare one of {', '.join(PASS_THROUGH)} (NAME=V1,V2)")
        variants = [{**base, name: value} for value in values.split(",")]
    rows = []
    for settings in variants:
        flags = [x for name, value in settings.items() if value != "" for x in (f"--{name}", str(value))]
        label = " ".join(f"{name}={value or 'none'}" for name, value in settings.items()) or "defaults"
        rows.append((label, flags))
    return rows


def choose_engine(requested: str, rows: list[tuple[str, list[str]]], has_vllm: bool):
    """(engine, rows, notes): vllm unless asked for hf or not installed (the GPU box may have only
    torch and transformers), then hf, said in the notes, without the vLLM-only flags."""
    engine = "vllm" if requested == "auto" else requested
    notes = []
    if engine == "vllm" and not has_vllm:
        engine = "hf"
        notes.append("vLLM is not installed here: every row ran --engine hf (transformers generate) instead")
    if engine == "hf" and any(flags for _, flags in rows):
        notes.append(
            "the vLLM settings (" + ", ".join(label for label, _ in rows) + ") do not apply to --engine hf: left out"
        )
        rows = [(label, []) for label, _ in rows]
    return engine, rows, notes


def gpu_table(args, extra: list[str]) -> int:
    """GPU mode: the table of synthesis throughput at the synthesizer's real shapes; exit status."""
    from transformers import AutoConfig

    from adamllm.models.model_io import image_token_count, load_processor

    args.layers = args.layers or (bench_stage1().small_shapes().layers if args.small else 32)
    args.num_pairs = args.num_pairs or (16 if args.small else 256)
    args.max_new_tokens = args.max_new_tokens or (16 if args.small else 256)
    width, height = (int(x) for x in (args.image_size or ("112x112" if args.small else "672x672")).lower().split("x"))
    caption_words = (40 if args.small else 200) if args.caption_words is None else args.caption_words

    engine, rows, notes = choose_engine(args.engine, row_flags(args), importlib.util.find_spec("vllm") is not None)

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="adamllm-bench-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    device, peak = device_peak(args.peak_tflops)
    if args.model:
        model, what = args.model, f"{args.model}"
    else:
        start = time.monotonic()
        model = str(
            build_random_synthesizer(
                Path(args.model_dir) if args.model_dir else work / "model", args.small, args.layers
            )
        )
        what = (
            f"random LLaVA-NeXT, {'the tiny models' if args.small else 'llava-hf/llama3-llava-next-8b-hf'}' shapes, "
            f"{args.layers} text layers (built in {time.monotonic() - start:.0f} s)"
        )
    config = AutoConfig.from_pretrained(model)
    image_tokens = image_token_count(load_processor(model), width, height)
    pairs = make_pairs(work / "pairs", args.num_pairs, width, height, caption_words)

    results = []
    for i, (label, flags) in enumerate(rows):
        stats = synthesize_row(args, model, pairs, work / f"synth-{i}", engine, flags + extra)
        results.append({"settings": label, "engine": engine, **stats})

    print(
        f"\nstage-2 synthesis benchmark ({'small: the tiny shapes, a plumbing check' if args.small else 'GPU mode'}): "
        f"{device}"
    )
    print(f"model: {what}")
    print(
        f"input: {args.num_pairs} generated pairs, {width}x{height} pictures ({image_tokens} image tokens each), "
        f"max_new_tokens {args.max_new_tokens}, max_model_len {args.max_model_len}"
    )
    peak_note = f"{peak:g} TFLOP/s" if peak else "unknown: give --peak_tflops"
    print(f"prefill MFU = prefill FLOPs / (dense bf16 peak {peak_note} x engine s); engine s holds the decode too")
    header = (
        "engine",
        "settings",
        "pairs",
        "wall s",
        "pairs/s",
        "prompt tok/pair",
        "prefill tok/s",
        "decode tok/s",
        "prefill MFU",
        "load s",
    )
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    failed = 0
    for r in results:
        if r["rc"] != 0:
            failed += 1
            print(
                " | ".join(
                    [r["engine"], r["settings"], f"FAILED (exit {r['rc']}): {r['log']}"] + [""] * (len(header) - 3)
                )
            )
            continue
        n, engine_s = r["records_out"], max(r["engine_s"], 1e-9)
        wall = r["wall_s"] - r.get("engine_load_s", 0.0)
        flops, params = prefill_flops(config, width, height, n, r["prompt_tokens"])
        r.update(
            prefill_flops=flops,
            llm_layer_params=params,
            prefill_tok_s=r["prompt_tokens"] / engine_s,
            decode_tok_s=r["output_tokens"] / engine_s,
            pairs_s=n / wall if wall > 0 else 0.0,
            prefill_mfu=flops / (peak * 1e12 * engine_s) if peak else None,
        )
        print(
            " | ".join(
                str(x)
                for x in (
                    r["engine"],
                    r["settings"],
                    n,
                    f"{wall:.1f}",
                    f"{r['pairs_s']:.2f}",
                    f"{r['prompt_tokens'] / max(n, 1):.0f}",
                    f"{r['prefill_tok_s']:.0f}",
                    f"{r['decode_tok_s']:.0f}",
                    f"{r['prefill_mfu']:.1%}" if peak else "n/a",
                    f"{r.get('engine_load_s', 0.0):.1f}",
                )
            )
        )
        if r.get("rejected"):
            notes.append(f"{r['settings']}: rejected {r['rejected']}")
        if not args.model and r["output_tokens"] != n * args.max_new_tokens:
            notes.append(f"{r['settings']}: {r['output_tokens']} output tokens, not {n} x {args.max_new_tokens}")
    if not args.model:
        notes.append("random weights: every output runs to max_new_tokens (decode length forced)")
    if any("quantization=fp8" in r["settings"] and r["engine"] == "vllm" for r in results):
        notes.append("fp8 rows are measured against the bf16 peak too; FP8 tensor cores peak at twice that")
    for note in notes:
        print(f"note: {note}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "device": device,
                    "peak_tflops": peak,
                    "model": model,
                    "image_tokens": image_tokens,
                    "num_pairs": args.num_pairs,
                    "max_new_tokens": args.max_new_tokens,
                    "notes": notes,
                    "rows": results,
                },
                indent=2,
            )
        )
    # The random model (16 GB for the 8B in bf16) stays only in a --model_dir; the rest stays in a --work.
    if not args.model and not args.model_dir:
        shutil.rmtree(work / "model", ignore_errors=True)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str], argparse.ArgumentParser]:
    """(args, the flags after `--` for adamllm synthesize, the parser)."""
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--num_pairs", type=int, default=None, help="Pairs (default: 300 CPU mode, 256 GPU mode, 16 --small)."
    )
    parser.add_argument(
        "--max_new_tokens", type=int, default=None, help="Default: 64 CPU mode, 256 GPU mode, 16 --small."
    )
    parser.add_argument(
        "--batch_size",
        type=int,
        default=None,
        help="Records per engine call (default: 64 CPU mode; GPU mode 256 vllm, 8 hf).",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--cpu",
        action="store_true",
        help="CPU mode even with CUDA: the tiny models, both engines, synthesis and filter.",
    )
    mode.add_argument("--gpu", action="store_true", help="GPU mode even without CUDA (the default with CUDA).")
    mode.add_argument(
        "--small", action="store_true", help="GPU mode's path with the tiny models' shapes (runs on a CPU)."
    )
    gpu = parser.add_argument_group("GPU mode")
    gpu.add_argument(
        "--model", default="", help="A synthesizer folder or hub id to benchmark instead of a random 8B-shaped one."
    )
    gpu.add_argument(
        "--layers",
        type=int,
        default=None,
        help="Text layers of the random model (default: 32, the 8B's; 4 with --small).",
    )
    gpu.add_argument(
        "--model_dir",
        default="",
        help="Where to build (and keep, and reuse) the random model; default: a temp folder, removed.",
    )
    gpu.add_argument(
        "--work",
        default="",
        help="Folder for pairs, outputs and each row's log, kept (the random model is not); default: a temp folder, "
        "removed.",
    )
    gpu.add_argument(
        "--image_size",
        default="",
        help="WxH of the pictures (default 672x672, an anyres grid size; 112x112 with --small).",
    )
    gpu.add_argument(
        "--caption_words",
        type=int,
        default=None,
        help="Filler words added to each caption (default 200; 40 with --small).",
    )
    gpu.add_argument(
        "--engine",
        default="auto",
        choices=["auto", "vllm", "hf"],
        help="auto: vllm when installed, else hf (so does vllm).",
    )
    gpu.add_argument("--max_model_len", type=int, default=4096)
    gpu.add_argument(
        "--peak_tflops", type=float, default=None, help="Dense bf16 peak of the GPU, TFLOP/s (default: from its name)."
    )
    for name in PASS_THROUGH:
        gpu.add_argument(f"--{name}", default=None, help=f"Passed to adamllm synthesize as --{name} (vllm rows).")
    gpu.add_argument(
        "--compare", default="", help="NAME=V1,V2,...: one row per value of a pass-through flag (empty: left out)."
    )
    gpu.add_argument("--json", default="", help="Also write the rows to this JSON file.")
    return parser.parse_args(argv), extra, parser


def main() -> None:
    args, extra, parser = parse_args(sys.argv[1:])
    logging.basicConfig(level=logging.WARNING)

    use_gpu = args.gpu or args.small or bool(args.model)
    if not (args.cpu or use_gpu):
        import torch

        use_gpu = torch.cuda.is_available()
    if not use_gpu:
        if extra:
            parser.error("flags after -- are for GPU mode")
        args.num_pairs = args.num_pairs or 300
        args.max_new_tokens = args.max_new_tokens or 64
        args.batch_size = args.batch_size or 64
        cpu_table(args)
        return
    raise SystemExit(gpu_table(args, extra))


if __name__ == "__main__":
    main()
