"""Resuming a stage: what its results depend on (`stage_fingerprint`), and the checks before a run
resumes its shard files (`check_resume`): shards made for other input or settings start over,
shard files that cannot be resumed as they stand are refused, finished records gone stale are redone.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Iterable

from adamllm.core import run_folder
from adamllm.core.files import atomic_write, file_sha256
from adamllm.core.jsonfiles import write_json
from adamllm.core.records import SYN_ID
from adamllm.executors.shards import Shard, done_marker, recover, stats_file

log = logging.getLogger(__name__)


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
    "batch_size": "records per engine call: the same outputs (tests/stage2/test_run.py, docs/gpu.md)",
    "max_batch_pixels": "a batch goes to the engine in parts, each image whole: the same outputs "
    "(tests/end_to_end/test_hostile_stages.py)",
    "decode_threads": "who decodes the images, not how",
    "prefix_caching": "docs/gpu.md: identical outputs with and without",
    "mm_processor_cache_gb": "a cache of processed images: an image is processed the same either way",
}


def stage_fingerprint(args, **extra) -> dict:
    """What a model stage's results depend on: its input file (`args.data_path`) and every field of
    its argument dataclass but those in NOT_FINGERPRINTED, with `extra` values (a prompt's hash)."""
    settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.name not in NOT_FINGERPRINTED}
    return input_fingerprint(args.data_path, **settings, **extra)


def check_shards(
    out_dir: Path, stage_file: str, shards: list[Shard], input_ids: Iterable[int], overwrite: bool = False
) -> None:
    """Refuse shard files that a run cannot resume as they stand, naming the file, the syn_id and the
    line: a line that is no record, a syn_id twice or out of order, a record of another shard or of
    no input record. With `overwrite` such a shard is started over instead.

    `input_ids`: the stage's input syn_ids, streamed once for all the shards.
    """
    held: dict[int, set[int]] = {}  # shard index: the syn_ids its file holds
    for shard in shards:
        path = shard.path(out_dir, stage_file)
        try:
            ids = recover(path)
        except ValueError as e:
            _refuse_or_restart(shard.path(out_dir, stage_file), str(e), overwrite)
            continue
        foreign = next((i for i in ids if not shard.owns(i)), None)
        if foreign is not None:
            _refuse_or_restart(path, f"{path}: syn_id {foreign} belongs to shard {foreign % shard.count}", overwrite)
            continue
        if ids:
            held[shard.index] = set(ids)
    if not held:
        return  # nothing to resume: the input need not be read
    count = shards[0].count
    for syn_id in input_ids:
        if (ids := held.get(syn_id % count)) is not None:
            ids.discard(syn_id)
    for index, ids in held.items():
        if ids:
            path = Shard(index, count).path(out_dir, stage_file)
            _refuse_or_restart(
                path, f"{path}: syn_id {min(ids)} is not in the stage's input (a record of another input)", overwrite
            )


def _refuse_or_restart(path: Path, problem: str, overwrite: bool) -> None:
    if not overwrite:
        raise ValueError(f"{problem}. Rerun with --overwrite to redo this shard's records, or delete {path}")
    for own in (path, done_marker(path), stats_file(path)):
        own.unlink(missing_ok=True)
    log.warning("%s; --overwrite: starting this shard over", problem)


def input_fingerprint(path: str | Path, **settings) -> dict:
    """What a stage's results depend on: its input file (path, size, a hash of all its bytes) and
    the settings that change the output (model, limits, prompt).

    The whole file is hashed, streamed: an edit anywhere, even one that keeps the size, is seen.
    """
    p = Path(path)
    return {"input": str(p.resolve()), "size": p.stat().st_size, "sha256": file_sha256(p), **settings}


def check_resume(stage, shards: list[Shard], input_ids: Iterable[int]) -> None:
    """Before a stage runs `shards`: start over what was made for other input or settings
    (`check_fingerprint`), refuse (or with --overwrite redo) shard files that cannot be resumed as
    they stand (`check_shards`), and redo the finished records that went stale (`drop_changed`)."""
    args = stage.args
    out_dir = Path(args.output_dir)
    check_fingerprint(out_dir, stage.output_file, shards[0].count, stage.fingerprint(), args.overwrite)
    check_shards(out_dir, stage.output_file, shards, input_ids, args.overwrite)
    for shard in shards:
        drop_changed(stage, shard.path(out_dir, stage.output_file))


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


def drop_changed(stage, path: Path) -> int:
    """Remove from a shard file the finished records the stage says are stale (`stage.changed`: the
    image a synthesized record was made from was replaced since), so a resume redoes them."""
    changed = getattr(stage, "changed", None)
    if changed is None or not path.exists():
        return 0
    with open(path, "rb") as fh:
        stale = {
            r[SYN_ID] for r in (json.loads(line) for line in fh if line.endswith(b"\n") and line.strip()) if changed(r)
        }
    if stale:
        log.info("%s: redoing %d finished records whose image changed since they were made", path, len(stale))
        with open(path, "rb") as fh, atomic_write(path) as out:
            for line in fh:
                if line.endswith(b"\n") and line.strip() and json.loads(line)[SYN_ID] not in stale:
                    out.write(line.decode("utf-8"))
    return len(stale)
