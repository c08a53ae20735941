"""The local executor: shards run in this process, or one worker process per GPU.

    CUDA_VISIBLE_DEVICES=0,1,2,3 adamllm synthesize ...          # one worker per GPU, then merge
    adamllm synthesize ... --num_shards 64 --shard_index 7        # one shard (a cluster job)

Workers start as `python -m adamllm.executors.worker SPEC.json`, their stage and arguments written as data.
The parent waits for them (ending stragglers past --shard_timeout_s); `adamllm.executors.run_stage`
locks, checks and merges.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from adamllm.core import run_folder
from adamllm.core.jsonfiles import json_line, write_json
from adamllm.executors.shards import Shard, ShardRun, batches
from adamllm.executors.stage import Stage, load, run_batch_isolating, stage_spec

log = logging.getLogger(__name__)


def visible_devices() -> list[str]:
    """The ids in CUDA_VISIBLE_DEVICES (any ids, not only 0..N-1); empty when unset."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    return [d.strip() for d in value.split(",") if d.strip()]


def plan(args) -> tuple[list[Shard], list[str]]:
    """Which shards this process runs, or the devices to launch one worker each on.

    - `--shard_index I`: shard I of `--num_shards` only (a launched worker, or a cluster job);
    - several ids in CUDA_VISIBLE_DEVICES: one worker process per device, as in the paper;
    - otherwise every shard, one after another, in this process (one engine load).
    """
    if args.shard_index >= 0:
        return [Shard(args.shard_index, args.num_shards)], []
    devices = visible_devices()
    if len(devices) > 1 and args.num_shards in (1, len(devices)):
        return [], devices
    return [Shard(i, args.num_shards) for i in range(args.num_shards)], []


def run_shards(stage: Stage, shards: list[Shard]) -> None:
    """Run shards one after another in this process; the engine loads on the first batch with work,
    so a rerun of finished shards only merges."""
    from tqdm import tqdm

    sizes = Counter(i % shards[0].count for i, _ in stage.records())
    loaded = None

    def process(batch, stats, upcoming):
        nonlocal loaded
        if loaded is None:
            start = time.monotonic()
            loaded = load(stage)
            stats["engine_load_s"] = stats.get("engine_load_s", 0.0) + time.monotonic() - start
        return run_batch_isolating(loaded, batch, stats, upcoming)

    for shard in shards:
        desc = f"{stage.name} shard {shard.index + 1}/{shard.count}"
        with tqdm(total=sizes[shard.index], desc=desc, unit="rec", dynamic_ncols=True) as bar:
            run_shard(stage, shard, process, bar)


def run_shard(stage: Stage, shard: Shard, process, progress) -> Path:
    """Process this shard's records not yet done, batch by batch, appending each batch durably.

    `process(batch, stats, upcoming)` returns the output records and adds its costs (engine time,
    tokens) to `stats`, which accumulate across resumed runs in the shard's `.stats.json`; `upcoming`
    is the next batch (None for the last), whose images may start decoding meanwhile.
    """
    run = ShardRun(shard.path(Path(stage.args.output_dir), stage.output_file))
    progress.update(len(run.done))
    with run.writing():
        todo = ((i, r) for i, r in stage.records() if shard.owns(i) and i not in run.done)
        pending = batches(todo, stage.args.batch_size)
        upcoming = next(pending, None)
        while upcoming is not None:
            batch, upcoming = upcoming, next(pending, None)
            start = time.monotonic()
            out = process(batch, run.stats, upcoming)
            run.append(map(json_line, out), sum(map(stage.kept, out)), start)
            progress.set_postfix(kept=run.kept, rejected=run.rejected, resumed=len(run.done), refresh=False)
            progress.update(len(batch))
    return run.finish()


def launch_workers(stage: Stage, devices: list[str], timeout_s: float | None) -> None:
    """One worker process per device, each seeing only its device and running its own shard.

    Waits for all; ends stragglers past `timeout_s`; raises RuntimeError naming every failed shard.
    """
    count = len(devices)
    procs = []
    for index, device in enumerate(devices):
        spec = run_folder.worker_spec_path(stage.args.output_dir, stage.output_file, index, count)
        write_json(spec, stage_spec(stage, num_shards=count, shard_index=index))
        cmd = [sys.executable, "-m", "adamllm.executors.worker", str(spec)]
        log.info("%s shard %d/%d on device %s: %s", stage.name, index, count, device, " ".join(cmd))
        procs.append(subprocess.Popen(cmd, env=dict(os.environ, CUDA_VISIBLE_DEVICES=device)))
    deadline = time.monotonic() + timeout_s if timeout_s else None
    failed = []
    for index, proc in enumerate(procs):
        try:
            left = None if deadline is None else max(1.0, deadline - time.monotonic())
            code = proc.wait(timeout=left)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = "timed out"
        if code != 0:
            failed.append(f"shard {index} (device {devices[index]}): exit {code}")
    if failed:
        raise RuntimeError("; ".join(failed) + ". Rerun the same command: finished records are kept and skipped.")
