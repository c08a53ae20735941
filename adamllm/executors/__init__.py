"""Executors run a model stage (`adamllm.stage.Stage`) over its records and leave its merged output
in OUTPUT_DIR; they differ only in where batches run:

- `local`: this machine; one worker process per GPU in CUDA_VISIBLE_DEVICES, or one shard of many
  (`--num_shards K --shard_index I`) for a cluster scheduler over a shared file system;
- `ray`: a pool of Ray actors, one per GPU of a Ray cluster (or of this machine), fed by Ray Data.

Both write the same shard files (`adamllm.shards`) and so resume, refuse to mix runs and merge alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

EXECUTORS = ("local", "ray")


@dataclass
class ExecutorArgs:
    """Where and how a model stage runs: the flags every sharded stage takes."""

    num_shards: int = field(default=1, metadata={"help": "Split the records into K shards (record i in shard i % K)."})
    shard_index: int = field(default=-1, metadata={"help": "Run only shard I (a worker, or a cluster job); -1: one worker per GPU in CUDA_VISIBLE_DEVICES, else every shard here."})
    shard_timeout_s: float = field(default=0.0, metadata={"help": "End worker processes still running after this many seconds (0: no limit)."})
    overwrite: bool = field(default=False, metadata={"help": "When OUTPUT_DIR/shards holds this stage's results for another input or other settings, delete them and start the stage over (results for the same input and settings are always resumed)."})
    executor: str = field(default="local", metadata={"help": "local: this machine (one worker per GPU in CUDA_VISIBLE_DEVICES); ray: Ray actors on a Ray cluster, or on a local Ray instance.", "choices": list(EXECUTORS)})
    ray_address: str = field(default="", metadata={"help": "Ray: the cluster to join (auto, host:6379, ray://host:10001); empty: start a local Ray instance with this machine's CPUs and GPUs."})
    num_workers: int = field(default=0, metadata={"help": "Ray: actors (engine copies) to run; 0: one per GPU of the cluster, or 1 without GPUs."})


def check_executor_args(args: ExecutorArgs) -> list[str]:
    """Errors in the executor flags, for an argument dataclass's __post_init__ to report together."""
    errors = []
    if args.num_shards < 1:
        errors.append(f"--num_shards {args.num_shards}: must be >= 1")
    if args.shard_index >= args.num_shards:
        errors.append(f"--shard_index {args.shard_index}: must be < --num_shards {args.num_shards}")
    if args.executor not in EXECUTORS:
        errors.append(f"--executor {args.executor}: choose one of {', '.join(EXECUTORS)}")
    if args.executor == "ray" and (args.num_shards != 1 or args.shard_index >= 0):
        errors.append("--executor ray spreads the records over its actors itself: leave out --num_shards and --shard_index")
    if args.executor != "ray" and (args.ray_address or args.num_workers):
        errors.append("--ray_address and --num_workers go with --executor ray")
    if args.num_workers < 0:
        errors.append(f"--num_workers {args.num_workers}: must be >= 0")
    return errors


def run_stage(stage) -> dict | None:
    """Run (or resume) a stage and merge its shards; their summed costs, or None while other shards
    (cluster jobs) have yet to finish."""
    if stage.args.executor == "ray":
        return _run_on_ray(stage)
    from adamllm.executors.local import run_local

    return run_local(stage)


def _run_on_ray(stage) -> dict:
    """Ray writes the shard file an unsharded local run writes: the two resume each other's work."""
    from adamllm.executors.ray_executor import run_ray
    from adamllm.files import clean_stale_tmp
    from adamllm.shards import check_resume, merge_shards

    out_dir = Path(stage.args.output_dir)
    clean_stale_tmp(out_dir)
    check_resume(stage, 1, [0])
    run_ray(stage)
    return merge_shards(out_dir, stage.output_file, 1, out_dir / stage.output_file)
