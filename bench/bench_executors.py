"""Synthesis through the local executor and through Ray on the same input (run by hand or by `make bench`).

    .venv/bin/python bench/bench_executors.py [--sizes 1000 10000] [--engine hf] [--max_new_tokens 4]

Each run is `adamllm synthesize` in its own process, as a user starts it; the table gives records/s
over the whole command (engine loading and, for Ray, starting a local Ray instance included), and
the driver's peak resident memory, sampled every 50 ms: the driver streams the input, so it should
not grow with the number of records. Ray runs 2 actors on this machine; the local executor one
process. Short outputs keep the model's share small, so the table shows the executors' own costs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil


def run(cmd: list[str], env: dict) -> tuple[float, int]:
    """Wall seconds and the peak RSS of the command's own process (not of its children)."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watched, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    if proc.wait() != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr.read()[-3000:]}")
    return time.monotonic() - start, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--engine", default="hf", choices=["hf", "vllm"])
    parser.add_argument("--max_new_tokens", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=64)
    args = parser.parse_args()

    from adamllm.testing.fixtures import make_caption_pairs
    from adamllm.testing.tiny import make_tiny_models

    work = Path(tempfile.mkdtemp(prefix="adamllm-bench-executors-"))
    models = make_tiny_models(work / "tiny")
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        VLLM_CPU_KVCACHE_SPACE="1",
        VLLM_ENABLE_V1_MULTIPROCESSING="0",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
    )
    rows = []
    for size in args.sizes:
        pairs = make_caption_pairs(work / f"pairs-{size}", size)
        for executor, extra in (("local", []), ("ray", ["--executor", "ray", "--num_workers", "2"])):
            out = work / f"out-{size}-{executor}"
            cmd = [
                sys.executable,
                "-m",
                "adamllm",
                "synthesize",
                "--model",
                str(models["synthesizer"]),
                "--data_path",
                str(pairs["data_path"]),
                "--image_folder",
                str(pairs["image_folder"]),
                "--output_dir",
                str(out),
                "--engine",
                args.engine,
                "--max_new_tokens",
                str(args.max_new_tokens),
                "--batch_size",
                str(args.batch_size),
                *extra,
            ]
            wall, peak = run(cmd, env)
            rows.append((size, executor, wall, peak))
        same = (work / f"out-{size}-local" / "syn_task_triplets.jsonl").read_bytes() == (
            work / f"out-{size}-ray" / "syn_task_triplets.jsonl"
        ).read_bytes()
        rows.append((size, "identical files", same, None))

    print(
        f"\nexecutor benchmark: tiny synthesizer, engine {args.engine}, max_new_tokens {args.max_new_tokens}, batch "
        f"{args.batch_size}"
    )
    print("records | executor | wall s | records/s | driver peak RSS MiB")
    print("--- | --- | --- | --- | ---")
    for size, executor, wall, peak in rows:
        if peak is None:
            print(f"{size} | {executor} | {wall} | | ")
        else:
            print(f"{size} | {executor} | {wall:.1f} | {size / wall:.1f} | {peak / 2**20:.0f}")


if __name__ == "__main__":
    main()
