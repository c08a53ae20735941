"""Stage-2 throughput on the tiny models, per engine (run by hand or by `make bench`).

    .venv/bin/python bench/bench_stage2.py [--num_pairs 300] [--max_new_tokens 64]

Prints a table: pairs/s, output tokens/s, the share of wall time spent inside the engine (the rest is
image loading, prompt building, JSON and fsync), and the filter's prefill tokens computed with and
without prefix caching. Wall time excludes model loading (the "load s" column).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def handwritten_triplets(pairs_path: Path, out: Path, seed: int = 0) -> Path:
    """syn_task_triplets.jsonl with well-formed preds, so the filter has a triplet per record."""
    from adamllm import fixtures, prompts

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_pairs", type=int, default=300)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=64)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from adamllm.consistency import FilterArgs, run_filter
    from adamllm.fixtures import make_caption_pairs
    from adamllm.synthesize import SynthesizeArgs, run_synthesize
    from adamllm.tiny import make_tiny_models

    work = Path(tempfile.mkdtemp(prefix="adamllm-bench-"))
    models = make_tiny_models(work / "tiny")
    pairs = make_caption_pairs(work / "pairs", args.num_pairs)
    rows = []
    for engine in ("vllm", "hf"):
        out = work / f"synth-{engine}"
        stats, total = timed(lambda: run_synthesize(SynthesizeArgs(
            model=str(models["synthesizer"]), data_path=str(pairs["data_path"]), image_folder=str(pairs["image_folder"]),
            output_dir=str(out), engine=engine, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)))
        wall = stats["wall_s"] - stats.get("engine_load_s", 0.0)  # model loading is the "load s" column
        rows.append(("synthesize", engine, "-", stats["records_in"], wall, stats["output_tokens"], stats["engine_s"], stats.get("engine_load_s", 0.0), stats["prompt_tokens"], "-"))
    triplets = handwritten_triplets(pairs["data_path"], work)
    for engine, caching in (("vllm", True), ("vllm", False), ("hf", False)):
        out = work / f"filter-{engine}-{caching}"
        stats, total = timed(lambda: run_filter(FilterArgs(
            model=str(models["checker"]), data_path=str(triplets), output_dir=str(out), engine=engine,
            batch_size=args.batch_size, prefix_caching=caching)))
        wall = stats["wall_s"] - stats.get("engine_load_s", 0.0)
        rows.append(("filter", engine, "on" if caching else "off", stats["records_in"], wall, stats["output_tokens"], stats["engine_s"], stats.get("engine_load_s", 0.0), stats["prompt_tokens"], stats["prompt_tokens_computed"]))

    header = ("stage", "engine", "prefix cache", "pairs", "wall s", "pairs/s", "out tok/s", "in engine", "load s", "prompt tok", "prefill computed")
    print(f"\nstage-2 benchmark: {args.num_pairs} generated pairs, tiny models, max_new_tokens {args.max_new_tokens}, batch {args.batch_size}")
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for stage, engine, cache, n, wall, out_tok, engine_s, load_s, prompt_tok, computed in rows:
        print(" | ".join(str(x) for x in (
            stage, engine, cache, n, f"{wall:.1f}", f"{n / wall:.1f}", f"{out_tok / wall:.0f}",
            f"{engine_s / wall:.0%}", f"{load_s:.1f}", prompt_tok, computed)))


if __name__ == "__main__":
    main()
