"""OUTPUT_DIR/stats.json: counts, times and tokens of every stage of a stage-2 run, and the
arguments each stage ran with (so a run can be repeated from its own output folder)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from adamllm.formats import write_json
from adamllm.run_folder import STATS_FILE


def update_stats(out_dir: str | Path, stage: str, stats: dict, args=None) -> Path:
    """Set one stage's entry of OUTPUT_DIR/stats.json, keeping the other stages'."""
    path = Path(out_dir) / STATS_FILE
    data = json.loads(path.read_text()) if path.exists() else {}
    entry = dict(stats)
    if args is not None:
        entry["args"] = dataclasses.asdict(args)
    data[stage] = entry
    write_json(path, data)
    return path
