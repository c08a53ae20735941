"""A worker process of the local executor: one shard of one stage, its arguments given as data.

    python -m adamllm.executors.worker OUTPUT_DIR/shards/syn_task_triplets.worker-001-of-004.json

The spec file (`adamllm.executors.stage.stage_spec`) holds the stage's class and its argument
dataclass's class as import paths, and the arguments, with `shard_index` and `num_shards` set; the parent
(adamllm.executors.local) merges afterwards. Executors never name a concrete stage: any class
that implements `adamllm.executors.stage.Stage` and takes its argument dataclass runs here.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from adamllm.executors.shards import Shard
from adamllm.executors.stage import build_stage


def main(argv: list[str]) -> int:
    from adamllm.executors import shard_lock
    from adamllm.executors.local import run_shards

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if len(argv) != 1:
        print("usage: python -m adamllm.executors.worker SPEC.json", file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as fh:
        spec = json.load(fh)
    stage = build_stage(spec)
    shard = Shard(stage.args.shard_index, stage.args.num_shards)
    # The parent holds the stage's lock; this holds the shard's, so that a worker left running by a
    # parent that was killed keeps a new run off its shard.
    try:
        with shard_lock(shard.path(Path(stage.args.output_dir), stage.output_file)):
            run_shards(stage, [shard])
    except KeyboardInterrupt:  # Ctrl-C reaches every worker: the parent says it once for all
        return 130
    except RuntimeError as e:  # its shard held by another run: one line, the parent names the shard
        print(f"adamllm worker: failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
