"""Shard files: how a stage's results are stored while it runs, survive a kill, and merge.

Record `syn_id` i belongs to shard i % K. Each shard appends its finished records to its own JSONL
file, flushed and fsynced per batch, in `syn_id` order; a rerun reads what is there (dropping a line
cut short by a crash), skips those records, and goes on. A shard that finishes writes a `.done`
marker with its counts; once all K markers exist the shard files merge, in `syn_id` order, into the
stage's output. The executors (`adamllm.executors`) decide where shards run; this module is only
about the files (named in `adamllm.core.run_folder`).
"""

from __future__ import annotations

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
from adamllm.core.files import atomic_write
from adamllm.core.jsonfiles import json_line, write_json
from adamllm.core.records import SYN_ID

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
    `adamllm.executors.resume.drop_changed`) appended them after later ones; the merge needs each
    shard file in order."""
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


def merge_shards(
    out_dir: Path,
    stage_file: str,
    count: int,
    output: Path,
    input_ids: Iterable[int] | None = None,
    stage: str = "stage",
) -> dict | None:
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
                raise RuntimeError(
                    f"syn_id {syn_id} is in two shards, {last[1]} (line {last[2]}) and {path} (line {number}); "
                    f"{RESTART}"
                )
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
            raise RuntimeError(
                f"{output}: the shards hold {seen} records but reported {expected}; rerun the stage to repair"
            )
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
