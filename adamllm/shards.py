"""Shard files: how a stage's results are stored while it runs, survive a kill, and merge.

Record `syn_id` i belongs to shard i % K. Each shard appends its finished records to its own JSONL
file, flushed and fsynced per batch, in `syn_id` order; a rerun reads what is there (dropping a line
cut short by a crash), skips those records, and goes on. A shard that finishes writes a `.done`
marker with its counts; once all K markers exist the shard files merge, in `syn_id` order, into the
stage's output. The executors (`adamllm.executors`) decide where shards run; this module is only
about the files (named in `adamllm.run_folder`).
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from adamllm import run_folder
from adamllm.files import atomic_write, file_sha256
from adamllm.formats import SYN_ID, json_line, read_jsonl, write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shard:
    index: int = 0
    count: int = 1

    def owns(self, syn_id: int) -> bool:
        return syn_id % self.count == self.index

    def path(self, out_dir: Path, stage_file: str) -> Path:
        return run_folder.shard_path(out_dir, stage_file, self.index, self.count)


done_marker = run_folder.done_marker
stats_file = run_folder.shard_stats_path


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
    if any(a >= b for a, b in zip(ids, ids[1:])):
        _sort_runs(path)
        ids.sort()
    return ids


def _sort_runs(path: Path) -> None:
    """Merge a shard file's runs of increasing syn_ids into one. A resume that redid records (see
    `drop_changed`) appended them after later ones; the merge needs each shard file in order."""
    runs, start, offset, last = [], 0, 0, None
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                syn_id = json.loads(line)[SYN_ID]
                if last is not None and syn_id <= last:
                    runs.append((start, offset))
                    start = offset
                last = syn_id
            offset += len(line)
    runs.append((start, offset))

    def read(lo: int, hi: int) -> Iterator[tuple[int, str]]:
        with open(path, "rb") as fh:
            fh.seek(lo)
            while fh.tell() < hi:
                line = fh.readline()
                if line.strip():
                    yield json.loads(line)[SYN_ID], line.decode("utf-8")

    with atomic_write(path) as out:
        for _, line in heapq.merge(*(read(lo, hi) for lo, hi in runs), key=lambda item: item[0]):
            out.write(line)


def drop_changed(stage, path: Path) -> int:
    """Remove from a shard file the finished records the stage says are stale (`stage.changed`: the
    image a synthesized record was made from was replaced since), so a resume redoes them."""
    changed = getattr(stage, "changed", None)
    if changed is None or not path.exists():
        return 0
    with open(path, "rb") as fh:
        stale = {r[SYN_ID] for r in (json.loads(line) for line in fh if line.endswith(b"\n") and line.strip()) if changed(r)}
    if stale:
        log.info("%s: redoing %d finished records whose image changed since they were made", path, len(stale))
        with open(path, "rb") as fh, atomic_write(path) as out:
            for line in fh:
                if line.endswith(b"\n") and line.strip() and json.loads(line)[SYN_ID] not in stale:
                    out.write(line.decode("utf-8"))
    return len(stale)


class ShardWriter:
    """Appends finished records durably: after `write`, a kill -9 loses none of them."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "a", encoding="utf-8")

    def write(self, records: Iterable[dict]) -> None:
        self.write_lines(json_line(r) for r in records)

    def write_lines(self, lines: Iterable[str]) -> None:
        """Records already serialized (one JSON text each, as `json_line` makes them)."""
        self._fh.write("".join(line + "\n" for line in lines))
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


# Argument fields that cannot change an output record, and why. Every other field of a stage's
# argument dataclass is in its fingerprint (`stage_fingerprint`): a flag added later is in it by
# default, so a resume with another value of it starts over instead of mixing outputs.
NOT_FINGERPRINTED = {
    "data_path": "the input file is fingerprinted itself: its resolved path, size and sha256",
    "prompt_file": "its text is fingerprinted instead (prompt_sha256): the file may move",
    "output_dir": "where the records go, not what they hold",
    "overwrite": "whether to start over, not what is written",
    "num_shards": "which records run together; each shard count has its own fingerprint file",
    "shard_index": "which shard this process runs",
    "shard_timeout_s": "when a worker is ended; a record is written whole or not at all",
    "executor": "local and Ray run the same batch function into the same shard file",
    "ray_address": "where Ray runs",
    "num_workers": "how many Ray actors run",
    "batch_size": "records per engine call: the same outputs (tests/test_stage2.py, docs/gpu.md)",
    "max_batch_pixels": "a batch goes to the engine in parts, each image whole: the same outputs (tests/test_hostile_stages.py)",
    "decode_threads": "who decodes the images, not how",
    "prefix_caching": "docs/gpu.md: identical outputs with and without",
    "mm_processor_cache_gb": "a cache of processed images: an image is processed the same either way",
}


def stage_fingerprint(args, **extra) -> dict:
    """What a model stage's results depend on: its input file (`args.data_path`) and every field of
    its argument dataclass but those in NOT_FINGERPRINTED, with `extra` values (a prompt's hash)."""
    settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.name not in NOT_FINGERPRINTED}
    return input_fingerprint(args.data_path, **settings, **extra)


def input_fingerprint(path: str | Path, **settings) -> dict:
    """What a stage's results depend on: its input file (path, size, a hash of all its bytes) and
    the settings that change the output (model, limits, prompt).

    The whole file is hashed, streamed: an edit anywhere, even one that keeps the size, is seen.
    """
    p = Path(path)
    return {"input": str(p.resolve()), "size": p.stat().st_size, "sha256": file_sha256(p), **settings}


def check_resume(stage, count: int, indices: Iterable[int]) -> None:
    """Before a stage runs shards `indices` of `count`: start over what was made for other input or
    settings (`check_fingerprint`), and redo what this process's shards hold that went stale."""
    out_dir = Path(stage.args.output_dir)
    check_fingerprint(out_dir, stage.output_file, count, stage.fingerprint(), stage.args.overwrite)
    for index in indices:
        drop_changed(stage, Shard(index, count).path(out_dir, stage.output_file))


def _complete_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(line.endswith(b"\n") for line in fh)


def check_fingerprint(out_dir: Path, stage_file: str, count: int, fingerprint: dict, overwrite: bool = False) -> None:
    """Refuse to resume shards written for other input or settings: their records would leak in.

    Shards that hold no finished record yet (a run that failed before its first batch, say on a
    wrong model name) are simply started over; `overwrite` starts over whatever they hold.
    """
    stem = run_folder.stem(stage_file)
    folder = run_folder.shards_dir(out_dir)
    path = run_folder.fingerprint_path(out_dir, stage_file, count)
    if path.exists():
        old = json.loads(path.read_text())
        changed = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
        if changed:
            finished = sum(_complete_lines(p) for p in run_folder.stage_shard_files(out_dir, stage_file))
            if finished and not overwrite:
                raise ValueError(
                    f"{folder} holds {finished} {stem} records written for another input or other settings "
                    f"(changed: {', '.join(changed)}). To start this stage over, pass --overwrite or delete "
                    f"{folder}/{stem}.* ; or use a new --output_dir"
                )
            for old_file in run_folder.stage_work_files(out_dir, stage_file):
                old_file.unlink()
            log.info("%s: starting %s over (%d finished records of other settings deleted)", folder, stem, finished)
    write_json(path, fingerprint)
