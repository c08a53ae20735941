"""Shard files: how a stage's results are stored while it runs, survive a kill, and merge.

Record `syn_id` i belongs to shard i % K. Each shard appends its finished records to its own JSONL
file, flushed and fsynced per batch, in `syn_id` order; a rerun reads what is there (dropping a line
cut short by a crash), skips those records, and goes on. A shard that finishes writes a `.done`
marker with its counts; once all K markers exist the shard files merge, in `syn_id` order, into the
stage's output. The executors (`adamllm.executors`) decide where shards run; this module is only
about the files (named in `adamllm.core.run_folder`).
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from adamllm.core import run_folder
from adamllm.core.files import atomic_write, file_sha256
from adamllm.core.records import SYN_ID
from adamllm.core.jsonfiles import json_line, read_jsonl, write_json

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

    Reads line by line: a shard of millions of records never sits in memory. Raises ValueError
    naming the file and line when a complete line is not a record, or holds a syn_id again or out
    of order (two runs that wrote one shard at once, before runs were locked).
    """
    if not path.exists():
        return []
    ids = []
    good = 0  # bytes up to the end of the last complete line
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, 1):
            if not line.endswith(b"\n"):
                break
            good += len(line)
            if not line.strip():
                continue
            syn_id = _line_syn_id(line)
            if syn_id is None:
                raise ValueError(f"{path}: line {number} is not a record with an integer syn_id")
            ids.append(syn_id)
    size = path.stat().st_size
    if good < size:
        log.warning("%s: dropping an unfinished last line (%d bytes) left by an interrupted run", path, size - good)
        with open(path, "r+b") as fh:
            fh.truncate(good)
    if any(a >= b for a, b in zip(ids, ids[1:])):
        # Records out of order are a resume's redone records (`drop_changed`), appended after later
        # ones: sorted here. A syn_id twice is never that: two runs wrote the file (before locks).
        ids.sort()
        if (twice := next((a for a, b in zip(ids, ids[1:]) if a == b), None)) is not None:
            raise ValueError(_twice(path, twice))
        _sort_runs(path)
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


def _line_syn_id(line: bytes) -> int | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    syn_id = record.get(SYN_ID) if isinstance(record, dict) else None
    return syn_id if isinstance(syn_id, int) and not isinstance(syn_id, bool) else None


def _twice(path: Path, syn_id: int) -> str:
    """A shard file holding a record twice: where."""
    with open(path, "rb") as fh:
        lines = [n for n, line in enumerate(fh, 1) if _line_syn_id(line) == syn_id][:2]
    return _repeat(path, syn_id, lines[1], syn_id)


def _repeat(path: Path, syn_id: int, number: int, previous: int) -> str:
    """A shard line whose syn_id is not above the one before: a duplicate (say where the first copy
    is) or out of order."""
    with open(path, "rb") as fh:
        first = next((n for n, line in enumerate(fh, 1) if n < number and _line_syn_id(line) == syn_id), None)
    if first is not None:
        what = f"syn_id {syn_id} is on lines {first} and {number}: a record written twice (two runs into one folder?)"
    else:
        what = f"syn_id {syn_id} on line {number} comes after syn_id {previous}: out of order"
    return f"{path}: {what}"


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


class ShardRun:
    """One run of a shard file, the loop both executors share: the done marker removed, the file
    recovered and the shard's costs so far loaded; each finished batch appended durably with its
    costs added and the `.stats.json` rewritten; the done marker written, with the record count,
    once every record is in. Where batches run, and how their costs arrive, is the executor's."""

    def __init__(self, path: Path):
        self.path = path
        self.marker = done_marker(path)
        self.marker.unlink(missing_ok=True)  # a rerun of a finished shard: recounted by `finish`
        self.done = set(recover(path))
        self.stats_path = stats_file(path)
        # Costs accumulate across resumed runs; the executor adds a batch's to `stats` before `append`.
        self.stats: dict = json.loads(self.stats_path.read_text()) if self.stats_path.exists() else {}
        self.kept = self.rejected = 0
        self._writer: ShardWriter | None = None

    @contextmanager
    def writing(self) -> Iterator[ShardRun]:
        """The shard file open for `append` (created if missing), closed however the loop ends."""
        self._writer = ShardWriter(self.path)
        try:
            yield self
        finally:
            self._writer.close()
            self._writer = None

    def append(self, lines: Iterable[str], kept: int, start: float, **extra) -> None:
        """Append a finished batch (its records serialized, `kept` of them kept), add the wall time
        since `start` (time.monotonic) and rewrite the stats file, with `extra` keys after the costs."""
        lines = list(lines)
        self._writer.write_lines(lines)
        self.stats["wall_s"] = self.stats.get("wall_s", 0.0) + time.monotonic() - start
        self.save_stats(**extra)
        self.kept, self.rejected = self.kept + kept, self.rejected + len(lines) - kept

    def save_stats(self, **extra) -> None:
        write_json(self.stats_path, {**self.stats, **extra})

    def finish(self) -> Path:
        """Mark the shard done with the number of records its file holds."""
        write_json(self.marker, {"records": len(recover(self.path))})
        return self.path


def batches(records: Iterator[tuple[int, dict]], size: int) -> Iterator[list[tuple[int, dict]]]:
    batch = []
    for item in records:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def merge_shards(out_dir: Path, stage_file: str, count: int, output: Path, input_ids: Iterable[int] | None = None,
                 stage: str = "stage") -> dict | None:
    """Merge the K shard files into `output` once every shard is done; return their summed stats.

    Returns None (and merges nothing) while a shard is still missing. Raises RuntimeError, writing
    nothing, if the merged ids are not exactly the ids the shards reported, or (given `input_ids`,
    the syn_ids of the stage's input in order) not exactly one record per input record.
    """
    shards = [Shard(i, count).path(out_dir, stage_file) for i in range(count)]
    markers = [done_marker(p) for p in shards]
    if not all(m.exists() for m in markers):
        return None
    expected = sum(json.loads(m.read_text())["records"] for m in markers)
    stats = [json.loads(stats_file(p).read_text()) for p in shards if stats_file(p).exists()]
    seen = 0

    def merged(out) -> Iterator[int]:
        nonlocal seen
        last = (-1, None, 0)  # syn_id, shard file, line
        for syn_id, path, number, record in heapq.merge(*map(_numbered_records, shards)):
            if syn_id <= last[0]:
                if path == last[1]:
                    raise RuntimeError(f"{_repeat(path, syn_id, number, last[0])}; {RESTART}")
                raise RuntimeError(f"syn_id {syn_id} is in two shards, {last[1]} (line {last[2]}) and {path} (line {number}); {RESTART}")
            last = (syn_id, path, number)
            out.write(json_line(record) + "\n")
            seen += 1
            yield syn_id

    with atomic_write(output) as out:
        if input_ids is None:
            for _ in merged(out):
                pass
        elif problem := _unmatched(merged(out), input_ids):
            raise RuntimeError(
                f"{stage}: the shards in {run_folder.shards_dir(out_dir)} do not hold one record per input record "
                f"({problem}); every input record must give one record of {output}, kept or rejected, so nothing "
                f"was written; {RESTART}"
            )
        if seen != expected:
            raise RuntimeError(f"{output}: the shards hold {seen} records but reported {expected}; rerun the stage to repair")
    return sum_stats(stats)


RESTART = "rerun the stage with --overwrite to start it over"


def _numbered_records(path: Path) -> Iterator[tuple[int, Path, int, dict]]:
    """(syn_id, file, line number, record) of a shard file's records, for merging and naming lines."""
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                record = json.loads(line)
                yield record[SYN_ID], path, number, record


def _unmatched(ids: Iterable[int], input_ids: Iterable[int]) -> str:
    """How two increasing syn_id streams, the output's and the input's, differ ('' when alike).

    Walked side by side: memory does not grow with the input."""
    n_in = n_out = 0
    unmatched = {"in": [0], "out": [0]}  # per side: how many ids only it has, then the first few
    tagged = heapq.merge(((i, "out") for i in ids), ((i, "in") for i in input_ids))
    for syn_id, group in itertools.groupby(tagged, key=lambda t: t[0]):
        sides = [side for _, side in group]
        n_in, n_out = n_in + sides.count("in"), n_out + sides.count("out")
        if len(set(sides)) == 1:
            only = unmatched[sides[0]]
            only[0] += 1
            if len(only) <= 5:
                only.append(syn_id)
    said = []
    for side, what in (("in", "input records have none"), ("out", "records are of no input record")):
        count, *first = unmatched[side]
        if count:
            said.append(f"{count} {what}, syn_id {', '.join(map(str, first))}{' ...' if count > len(first) else ''}")
    return f"{n_out} records for {n_in} input records: {'; '.join(said)}" if said else ""


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
    "batch_size": "records per engine call: the same outputs (tests/stage2/test_run.py, docs/gpu.md)",
    "max_batch_pixels": "a batch goes to the engine in parts, each image whole: the same outputs (tests/end_to_end/test_hostile_stages.py)",
    "decode_threads": "who decodes the images, not how",
    "prefix_caching": "docs/gpu.md: identical outputs with and without",
    "mm_processor_cache_gb": "a cache of processed images: an image is processed the same either way",
}


def stage_fingerprint(args, **extra) -> dict:
    """What a model stage's results depend on: its input file (`args.data_path`) and every field of
    its argument dataclass but those in NOT_FINGERPRINTED, with `extra` values (a prompt's hash)."""
    settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.name not in NOT_FINGERPRINTED}
    return input_fingerprint(args.data_path, **settings, **extra)


def check_shards(out_dir: Path, stage_file: str, shards: list[Shard], input_ids: Iterable[int], overwrite: bool = False) -> None:
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
            _refuse_or_restart(path, f"{path}: syn_id {min(ids)} is not in the stage's input (a record of another input)", overwrite)


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
