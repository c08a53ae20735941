"""Sharded, resumable stages: how synthesis and filtering split work, survive a kill, and merge.

Record `syn_id` i belongs to shard i % K. Each shard appends its finished records to its own JSONL
file, flushed and fsynced per batch, in `syn_id` order; a rerun reads what is there (dropping a line
cut short by a crash), skips those records, and goes on. A shard that finishes writes a `.done`
marker with its counts; once all K markers exist the shard files merge, in `syn_id` order, into the
stage's output. The same flags let one machine run one process per GPU, or a cluster scheduler run
shards on many nodes over a shared file system: the last shard to finish merges.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from adamllm.formats import SYN_ID, atomic_write, clean_stale_tmp, json_line, read_jsonl, write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    def owns(self, syn_id: int) -> bool:
        return syn_id % self.count == self.index

    def path(self, out_dir: Path, stage_file: str) -> Path:
        stem = stage_file.removesuffix(".jsonl")
        return Path(out_dir) / "shards" / f"{stem}.{self.index:03d}-of-{self.count:03d}.jsonl"


def done_marker(path: Path) -> Path:
    return path.with_suffix(".done")


def recover(path: Path) -> list[int]:
    """The syn_ids a shard file already holds, after cutting off a last line a kill left unfinished.

    Reads line by line: a shard of millions of records never sits in memory.
    """
    if not path.exists():
        return []
    ids = []
    good = 0  # bytes up to the end of the last complete line
    with open(path, "rb") as fh:
        for line in fh:
            if not line.endswith(b"\n"):
                break
            good += len(line)
            if line.strip():
                ids.append(json.loads(line)[SYN_ID])
    size = path.stat().st_size
    if good < size:
        log.warning("%s: dropping an unfinished last line (%d bytes) left by an interrupted run", path, size - good)
        with open(path, "r+b") as fh:
            fh.truncate(good)
    return ids


class ShardWriter:
    """Appends finished records durably: after `write`, a kill -9 loses none of them."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "a", encoding="utf-8")

    def write(self, records: Iterable[dict]) -> None:
        self._fh.write("".join(json_line(r) + "\n" for r in records))
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


def batches(records: Iterator[tuple[int, dict]], size: int) -> Iterator[list[tuple[int, dict]]]:
    batch = []
    for item in records:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def merge_shards(out_dir: Path, stage_file: str, count: int, output: Path) -> dict | None:
    """Merge the K shard files into `output` once every shard is done; return their summed stats.

    Returns None (and merges nothing) while a shard is still missing. Raises RuntimeError if the
    merged ids are not exactly the ids the shards reported (lost or duplicated records).
    """
    shards = [Shard(i, count).path(out_dir, stage_file) for i in range(count)]
    markers = [done_marker(p) for p in shards]
    if not all(m.exists() for m in markers):
        return None
    expected = sum(json.loads(m.read_text())["records"] for m in markers)
    stats = [json.loads(stats_file(p).read_text()) for p in shards if stats_file(p).exists()]
    seen = 0
    last = -1
    with atomic_write(output) as out:
        for record in heapq.merge(*(read_jsonl(p) for p in shards), key=lambda r: r[SYN_ID]):
            if record[SYN_ID] <= last:
                raise RuntimeError(
                    f"{output}: syn_id {record[SYN_ID]} appears twice or out of order in the shards of {out_dir}/shards; "
                    "the stage's input must hold each syn_id once, in increasing order"
                )
            last = record[SYN_ID]
            out.write(json_line(record) + "\n")
            seen += 1
        if seen != expected:
            raise RuntimeError(f"{output}: the shards hold {seen} records but reported {expected}; rerun the stage to repair")
    return sum_stats(stats)


def sum_stats(stats: list[dict]) -> dict:
    """Costs of several shards added up; `wall_s` becomes the slowest shard's, `shard_wall_s` the sum."""
    total: dict = {}
    for s in stats:
        for key, value in s.items():
            if isinstance(value, dict):
                inner = total.setdefault(key, {})
                for k, v in value.items():
                    inner[k] = inner.get(k, 0) + v
            elif key == "wall_s":
                total[key] = max(total.get(key, 0), value)
                total["shard_wall_s"] = total.get("shard_wall_s", 0) + value
            elif isinstance(value, (int, float)):
                total[key] = total.get(key, 0) + value
    total["shards"] = len(stats)
    return total


def visible_devices() -> list[str]:
    """The ids in CUDA_VISIBLE_DEVICES (any ids, not only 0..N-1); empty when unset."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    return [d.strip() for d in value.split(",") if d.strip()]


def launch_shards(argv: list[str], devices: list[str], timeout_s: float | None) -> None:
    """Run `adamllm ARGV --num_shards K --shard_index I` once per device, each seeing one device.

    Waits for all; ends stragglers past `timeout_s`; raises RuntimeError naming every failed shard.
    """
    count = len(devices)
    procs = []
    for index, device in enumerate(devices):
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=device)
        cmd = [sys.executable, "-m", "adamllm", *argv, "--num_shards", str(count), "--shard_index", str(index)]
        log.info("shard %d/%d on device %s: %s", index, count, device, " ".join(cmd))
        procs.append(subprocess.Popen(cmd, env=env))
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


def stats_file(path: Path) -> Path:
    return path.with_suffix(".stats.json")


def run_shard(
    records: Iterator[tuple[int, dict]],
    out_dir: Path,
    stage_file: str,
    shard: Shard,
    batch_size: int,
    process: Callable[[list[tuple[int, dict]], dict], list[dict]],
    progress,
    kept: Callable[[dict], bool] = lambda record: True,
) -> Path:
    """Process this shard's records not yet done, batch by batch, appending each batch durably.

    `records` yields (syn_id, record) for the whole input; this shard keeps its own. `process(batch,
    stats)` returns the output records and adds its costs (engine time, tokens) to `stats`, which
    accumulate across resumed runs in the shard's `.stats.json`.
    """
    path = shard.path(out_dir, stage_file)
    marker = done_marker(path)
    if marker.exists():
        marker.unlink()  # a rerun of a finished shard: recounted below
    done = set(recover(path))
    stats_path = stats_file(path)
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    progress.update(len(done))
    writer = ShardWriter(path)
    n_kept = n_rejected = 0
    try:
        todo = ((i, r) for i, r in records if shard.owns(i) and i not in done)
        for batch in batches(todo, batch_size):
            start = time.monotonic()
            out = process(batch, stats)
            writer.write(out)
            stats["wall_s"] = stats.get("wall_s", 0.0) + time.monotonic() - start
            write_json(stats_path, stats)
            n = sum(map(kept, out))
            n_kept, n_rejected = n_kept + n, n_rejected + len(out) - n
            progress.set_postfix(kept=n_kept, rejected=n_rejected, resumed=len(done), refresh=False)
            progress.update(len(batch))
    finally:
        writer.close()
    write_json(marker, {"records": len(recover(path))})
    return path


@dataclass
class ShardArgs:
    """The sharding flags every sharded stage takes."""

    num_shards: int = field(default=1, metadata={"help": "Split the records into K shards (record i in shard i % K)."})
    shard_index: int = field(default=-1, metadata={"help": "Run only shard I (a worker, or a cluster job); -1: one worker per GPU in CUDA_VISIBLE_DEVICES, else every shard here."})
    shard_timeout_s: float = field(default=0.0, metadata={"help": "End worker processes still running after this many seconds (0: no limit)."})
    overwrite: bool = field(default=False, metadata={"help": "When OUTPUT_DIR/shards holds this stage's results for another input or other settings, delete them and start the stage over (results for the same input and settings are always resumed)."})


def check_shard_args(args: ShardArgs) -> list[str]:
    """Errors in the sharding flags, for an argument dataclass's __post_init__ to report together."""
    errors = []
    if args.num_shards < 1:
        errors.append(f"--num_shards {args.num_shards}: must be >= 1")
    if args.shard_index >= args.num_shards:
        errors.append(f"--shard_index {args.shard_index}: must be < --num_shards {args.num_shards}")
    return errors


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


def input_fingerprint(path: str | Path, **settings) -> dict:
    """What a stage's results depend on: its input file (path, size, a hash of all its bytes) and
    the settings that change the output (model, limits, prompt).

    The whole file is hashed, streamed: an edit anywhere, even one that keeps the size, is seen.
    """
    p = Path(path)
    digest = hashlib.sha256()
    with open(p, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return {"input": str(p.resolve()), "size": p.stat().st_size, "sha256": digest.hexdigest(), **settings}


def _complete_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(line.endswith(b"\n") for line in fh)


def check_fingerprint(out_dir: Path, stage_file: str, count: int, fingerprint: dict, overwrite: bool = False) -> None:
    """Refuse to resume shards written for other input or settings: their records would leak in.

    Shards that hold no finished record yet (a run that failed before its first batch, say on a
    wrong model name) are simply started over; `overwrite` starts over whatever they hold.
    """
    stem = stage_file.removesuffix(".jsonl")
    folder = Path(out_dir) / "shards"
    path = folder / f"{stem}.input-of-{count:03d}.json"
    if path.exists():
        old = json.loads(path.read_text())
        changed = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
        if changed:
            finished = sum(_complete_lines(p) for p in folder.glob(f"{stem}.*-of-*.jsonl"))
            if finished and not overwrite:
                raise ValueError(
                    f"{folder} holds {finished} {stem} records written for another input or other settings "
                    f"(changed: {', '.join(changed)}). To start this stage over, pass --overwrite or delete "
                    f"{folder}/{stem}.* ; or use a new --output_dir"
                )
            for old_file in folder.glob(f"{stem}.*"):
                old_file.unlink()
            log.info("%s: starting %s over (%d finished records of other settings deleted)", folder, stem, finished)
    write_json(path, fingerprint)


def run_sharded_stage(
    args,
    command: str,
    argv: list[str],
    records: Callable[[], Iterator[tuple[int, dict]]],
    out_dir: Path,
    stage_file: str,
    make_process: Callable[[], Callable],
    fingerprint: dict,
    kept: Callable[[dict], bool] = lambda record: True,
) -> dict | None:
    """Run a stage's shards (here or in worker processes) and merge them; the merged stats or None.

    None means other shards have yet to finish (a cluster job that ran one shard). The engine is
    loaded on the first batch with work, so a rerun of finished shards only merges.
    """
    from tqdm import tqdm

    output = Path(out_dir) / stage_file
    shards, devices = plan(args)
    count = len(devices) or args.num_shards
    clean_stale_tmp(out_dir)
    check_fingerprint(out_dir, stage_file, count, fingerprint, args.overwrite)
    if devices:
        launch_shards([command, *argv], devices, args.shard_timeout_s or None)
        stats = merge_shards(out_dir, stage_file, count, output)
        if stats is None:
            raise RuntimeError(f"{command}: the workers exited but some shard of {out_dir}/shards has no .done marker")
        return stats
    sizes = Counter(i % count for i, _ in records())
    loaded: dict = {}

    def process(batch, stats):
        if "fn" not in loaded:
            start = time.monotonic()
            loaded["fn"] = make_process()
            stats["engine_load_s"] = stats.get("engine_load_s", 0.0) + time.monotonic() - start
        return loaded["fn"](batch, stats)

    for shard in shards:
        with tqdm(total=sizes[shard.index], desc=f"{command} shard {shard.index + 1}/{shard.count}", unit="rec", dynamic_ncols=True) as bar:
            run_shard(records(), out_dir, stage_file, shard, args.batch_size, process, bar, kept)
    return merge_shards(out_dir, stage_file, count, output)
