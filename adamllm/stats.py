"""OUTPUT_DIR/stats.json: counts, times and tokens of every stage of a stage-2 run, and the
arguments each stage ran with (so a run can be repeated from its own output folder)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from adamllm.formats import read_json_file, write_json
from adamllm.run_folder import STATS_FILE


def read_stats(path: str | Path) -> dict:
    """stats.json as {stage: entry}; damage (not JSON, or not an object of stages) is a ValueError
    naming the file and the fix."""
    return read_json_file(
        path, dict, "a JSON object of stages",
        "repair it, or move it away and rerun each stage's command (a finished stage resumes at once and writes its entry again)",
    )


def update_stats(out_dir: str | Path, stage: str, stats: dict, args=None) -> Path:
    """Set one stage's entry of OUTPUT_DIR/stats.json, keeping the other stages'."""
    path = Path(out_dir) / STATS_FILE
    data = read_stats(path) if path.exists() else {}
    entry = dict(stats)
    if args is not None:
        entry["args"] = dataclasses.asdict(args)
    data[stage] = entry
    write_json(path, data)
    return path
