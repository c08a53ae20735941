"""What the choice of backbone costs in stage 2: image tokens per picture, prompt tokens per pair and
pairs/s through `adamllm synthesize --engine vllm`, and how --max_pixels moves them.

    python bench/bench_backbones.py [--pairs 48] [--max_new_tokens 64] [--work exp/bench_backbones]

Table 1 needs no model: each family's image tokens for a spread of real aspect ratios, under the
published processor settings (LLaVA-NeXT-8B's anyres grid of 336-px tiles; Qwen2-VL / Qwen2.5-VL
14-px patches merged 2x2 within [3,136, 12,845,056] px, as their Instruct checkpoints ship, and at the
1,003,520 px their model cards suggest; Qwen3-VL 16-px patches merged 2x2 within [65,536, 16,777,216]).

Table 2 runs tiny synthesizers of each family with the same text model (adamllm.testing.tiny.TEXT)
on the same generated 672x672 pairs: LLaVA-NeXT with the 8B's image geometry (336-px tiles, its grid
pinpoints), the Qwen ones with the published pixel bounds passed as --min_pixels / --max_pixels. On a
CPU the tiny vision towers cost little, so pairs/s follows the prompt length: prefill-bound, as the
8B models are on a GPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIZES = [(672, 672), (512, 384), (1024, 768), (1280, 720), (720, 1280), (1920, 1080), (800, 200), (336, 336)]
# (label, min_pixels, max_pixels) of the Qwen rows.
QWEN25_PUBLISHED = (3136, 12845056)
QWEN25_CARD = (3136, 1003520)
QWEN3_PUBLISHED = (65536, 16777216)


def sibling(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parent / f"{name}.py")
    module = sys.modules[name] = importlib.util.module_from_spec(spec)  # dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


def eight_b_geometry():
    """bench_stage1's shapes with the tiny text and vision layers and the 8B's image geometry."""
    from dataclasses import replace

    b1 = sibling("bench_stage1")
    return b1, replace(b1.small_shapes(), image_size=336, patch_size=14, grid=b1.EIGHT_B.grid, picture=672)


def qwen_processor(folder: Path, bounds: tuple[int, int]):
    from adamllm.models.backbones import ProcessorOptions
    from adamllm.models.model_io import load_processor

    return load_processor(str(folder), ProcessorOptions(*bounds))


def build_models(work: Path) -> dict[str, Path]:
    """The three tiny synthesizers (reused when already built)."""
    from adamllm.models.model_io import save_synthesizer
    from adamllm.testing import tiny

    folders = {}
    for family in ("qwen2_5_vl", "qwen3_vl"):
        folder = work / family / "synthesizer"
        if not (folder / "config.json").exists():
            tiny.make_tiny_models(work / family, family=family)
        folders[family] = folder
    folder = work / "llava_next_8b_geometry"
    if not (folder / "config.json").exists():
        b1, shapes = eight_b_geometry()
        tokenizer = tiny.build_tokenizer()
        model = b1.random_model(shapes, shapes.layers, shapes.vision_layers, tokenizer, bf16=False).eval()
        save_synthesizer(model, b1.make_processor(shapes, tokenizer), folder)
    folders["llava_next"] = folder
    return folders


def token_table(models: dict[str, Path]) -> list[dict]:
    from adamllm.models.model_io import image_token_count, load_processor

    processors = {
        "LLaVA-NeXT-8B (anyres, 336-px tiles)": load_processor(str(models["llava_next"])),
        "Qwen2.5-VL, as shipped (max 12.8 MP)": qwen_processor(models["qwen2_5_vl"], QWEN25_PUBLISHED),
        "Qwen2.5-VL, max_pixels 1,003,520": qwen_processor(models["qwen2_5_vl"], QWEN25_CARD),
        "Qwen3-VL, as shipped (max 16.8 MP)": qwen_processor(models["qwen3_vl"], QWEN3_PUBLISHED),
    }
    return [
        {"setting": name, **{f"{w}x{h}": image_token_count(p, w, h) for w, h in SIZES}}
        for name, p in processors.items()
    ]


def throughput_rows(args, models: dict[str, Path]) -> list[dict]:
    from adamllm.models.model_io import image_token_count, load_processor

    b2 = sibling("bench_stage2")
    pairs = b2.make_pairs(args.work / "pairs", args.pairs, 672, 672, caption_words=60)
    rows = [
        ("LLaVA-NeXT (8B image geometry)", "llava_next", None),
        ("Qwen2.5-VL, as shipped", "qwen2_5_vl", QWEN25_PUBLISHED),
        ("Qwen2.5-VL, --max_pixels 200704", "qwen2_5_vl", (3136, 200704)),
        ("Qwen2.5-VL, --max_pixels 50176", "qwen2_5_vl", (3136, 50176)),
        ("Qwen3-VL, as shipped", "qwen3_vl", QWEN3_PUBLISHED),
        ("Qwen3-VL, --max_pixels 262144", "qwen3_vl", (65536, 262144)),
    ]
    out = []
    for label, family, bounds in rows:
        flags = [] if bounds is None else ["--min_pixels", str(bounds[0]), "--max_pixels", str(bounds[1])]
        run = argparse.Namespace(batch_size=args.pairs, max_new_tokens=args.max_new_tokens, max_model_len=4096)
        stats = b2.synthesize_row(run, str(models[family]), pairs, args.work / f"run_{len(out)}", "vllm", flags)
        if stats["rc"] != 0:
            out.append({"backbone": label, "failed": stats["log"]})
            continue
        processor = load_processor(str(models[family])) if bounds is None else qwen_processor(models[family], bounds)
        records = stats["records_out"]
        out.append(
            {
                "backbone": label,
                "image_tokens_per_pair": image_token_count(processor, 672, 672),
                "prompt_tokens_per_pair": round(stats["prompt_tokens"] / records),
                "pairs_per_s": round(records / stats["engine_s"], 2),
                "engine_s": round(stats["engine_s"], 1),
            }
        )
    return out


def print_table(rows: list[dict]) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys}
    print(" | ".join(k.ljust(widths[k]) for k in keys))
    print("-+-".join("-" * widths[k] for k in keys))
    for r in rows:
        print(" | ".join(str(r.get(k, "")).ljust(widths[k]) for k in keys))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=48, help="Generated 672x672 pairs (default 48).")
    parser.add_argument("--max_new_tokens", type=int, default=64, help="Tokens written per pair (default 64).")
    parser.add_argument("--work", type=Path, default=REPO / "exp" / "bench_backbones", help="Working folder.")
    parser.add_argument("--tokens_only", action="store_true", help="Only table 1 (no synthesis).")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    models = build_models(args.work)
    tokens = token_table(models)
    print("\nImage tokens per picture, published processor settings")
    print_table(tokens)
    result = {"image_tokens": tokens}
    if not args.tokens_only:
        result["synthesis"] = throughput_rows(args, models)
        print(f"\nStage 2 on {args.pairs} generated 672x672 pairs, tiny synthesizers (same text model), vllm")
        print_table(result["synthesis"])
    (args.work / "results.json").write_text(json.dumps(result, indent=2))
    print(f"\nresults: {args.work / 'results.json'}")


if __name__ == "__main__":
    main()
