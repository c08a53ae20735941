"""A worker process of the local executor: one shard of one stage, its arguments given as data.

    python -m adamllm.worker OUTPUT_DIR/shards/syn_task_triplets.worker-001-of-004.json

The spec file holds {"stage": "synthesize" | "filter", "args": {...the stage's argument dataclass...}}
with `shard_index` and `num_shards` set; the parent (adamllm.executors.local) merges afterwards.
"""

from __future__ import annotations

import json
import logging
import sys

from adamllm.shards import Shard


def build_stage(name: str, args: dict):
    """The stage object a spec names, its arguments checked as on the command line."""
    if name == "synthesize":
        from adamllm.synthesize import SynthesizeArgs, SynthesizeStage

        return SynthesizeStage(SynthesizeArgs(**args))
    if name == "filter":
        from adamllm.consistency import FilterArgs, FilterStage

        return FilterStage(FilterArgs(**args))
    raise ValueError(f"unknown stage {name!r}: expected synthesize or filter")


def main(argv: list[str]) -> int:
    from adamllm.executors.local import run_shards

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if len(argv) != 1:
        print("usage: python -m adamllm.worker SPEC.json", file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as fh:
        spec = json.load(fh)
    stage = build_stage(spec["stage"], spec["args"])
    try:
        run_shards(stage, [Shard(stage.args.shard_index, stage.args.num_shards)])
    except KeyboardInterrupt:  # Ctrl-C reaches every worker: the parent says it once for all
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
