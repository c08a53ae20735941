"""Executors run a model stage (`adamllm.stage.Stage`) over its records and leave its merged output
in OUTPUT_DIR; they differ only in where batches run:

- `local`: this machine; one worker process per GPU in CUDA_VISIBLE_DEVICES, or one shard of many
  (`--num_shards K --shard_index I`) for a cluster scheduler over a shared file system;

Both write the same shard files (`adamllm.shards`) and so resume, refuse to mix runs and merge alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

EXECUTORS = ("local",)


@dataclass
class ExecutorArgs:
    """Where and how a model stage runs: the flags every sharded stage takes."""

    num_shards: int = field(default=1, metadata={"help": "Split the records into K shards (record i in shard i % K)."})
    shard_index: int = field(default=-1, metadata={"help": "Run only shard I (a worker, or a cluster job); -1: one worker per GPU in CUDA_VISIBLE_DEVICES, else every shard here."})
    shard_timeout_s: float = field(default=0.0, metadata={"help": "End worker processes still running after this many seconds (0: no limit)."})
    overwrite: bool = field(default=False, metadata={"help": "When OUTPUT_DIR/shards holds this stage's results for another input or other settings, delete them and start the stage over (results for the same input and settings are always resumed)."})


def check_executor_args(args: ExecutorArgs) -> list[str]:
    """Errors in the executor flags, for an argument dataclass's __post_init__ to report together."""
    errors = []
    if args.num_shards < 1:
        errors.append(f"--num_shards {args.num_shards}: must be >= 1")
    if args.shard_index >= args.num_shards:
        errors.append(f"--shard_index {args.shard_index}: must be < --num_shards {args.num_shards}")
    return errors


def run_stage(stage) -> dict | None:
    """Run (or resume) a stage and merge its shards; their summed costs, or None while other shards
    (cluster jobs) have yet to finish."""
    from adamllm.executors.local import run_local

    return run_local(stage)
