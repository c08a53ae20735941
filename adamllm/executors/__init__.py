"""Executors run a model stage (`adamllm.executors.stage.Stage`) over its records and leave its merged output
in OUTPUT_DIR; they differ only in where batches run:

- `local`: this machine; one worker process per GPU in CUDA_VISIBLE_DEVICES, or one shard of many
  (`--num_shards K --shard_index I`) for a cluster scheduler over a shared file system;
- `ray`: a pool of Ray actors, one per GPU of a Ray cluster (or of this machine), fed by Ray Data.

Both write the same shard files (`adamllm.executors.shards`) and so resume, refuse to mix runs and merge alike.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from adamllm.core import run_folder

EXECUTORS = ("local", "ray")


@dataclass
class ExecutorArgs:
    """Where and how a model stage runs: the flags every sharded stage takes."""

    num_shards: int = field(default=1, metadata={"help": "Split the records into K shards (record i in shard i % K)."})
    shard_index: int = field(
        default=-1,
        metadata={
            "help": "Run only shard I (a worker, or a cluster job); -1: one worker per GPU in CUDA_VISIBLE_DEVICES, "
            "else every shard here."
        },
    )
    shard_timeout_s: float = field(
        default=0.0, metadata={"help": "End worker processes still running after this many seconds (0: no limit)."}
    )
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "When OUTPUT_DIR/shards holds this stage's results for another input or other settings, delete "
            "them and start the stage over; a shard file that cannot be resumed as it stands (a line written "
            "twice, a torn line, a record of another input) is redone. Sound results for the same input and "
            "settings are always resumed."
        },
    )
    executor: str = field(
        default="local",
        metadata={
            "help": "local: this machine (one worker per GPU in CUDA_VISIBLE_DEVICES); ray: Ray actors on a Ray "
            "cluster, or on a local Ray instance.",
            "choices": list(EXECUTORS),
        },
    )
    ray_address: str = field(
        default="",
        metadata={
            "help": "Ray: the cluster to join (auto, host:6379, ray://host:10001); empty: start a local Ray instance "
            "with this machine's CPUs and GPUs."
        },
    )
    num_workers: int = field(
        default=0,
        metadata={"help": "Ray: actors (engine copies) to run; 0: one per GPU of the cluster, or 1 without GPUs."},
    )


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
        errors.append(
            "--executor ray spreads the records over its actors itself: leave out --num_shards and --shard_index"
        )
    if args.executor != "ray" and (args.ray_address or args.num_workers):
        errors.append("--ray_address and --num_workers go with --executor ray")
    if args.num_workers < 0:
        errors.append(f"--num_workers {args.num_workers}: must be >= 0")
    return errors


def run_stage(stage) -> dict | None:
    """Run (or resume) a stage and merge its shards; their summed costs, or None while other shards
    (cluster jobs) have yet to finish.

    The one place every executor ends: the stage's files are locked for the run (a second run into
    the folder is refused, naming this one), shards that cannot be resumed as they stand are refused
    (or, with --overwrite, redone), and the merge checks one output record per input record.
    """
    from adamllm.core.files import clean_stale_tmp, hold_lock
    from adamllm.executors.resume import check_resume
    from adamllm.executors.shards import Shard, merge_shards

    args = stage.args
    out_dir = Path(args.output_dir)

    def input_ids():
        return (syn_id for syn_id, _ in stage.records())

    with stage_lock(stage):
        if args.executor == "ray":
            shards, devices, count = [Shard(0, 1)], [], 1
        else:
            from adamllm.executors.local import plan

            shards, devices = plan(args)
            count = len(devices) or args.num_shards
        own = shards or [Shard(i, count) for i in range(count)]
        with ExitStack() as workers_off:
            # Workers of a killed parent may still run: their shards are not checked under them.
            for shard in own if devices else []:
                workers_off.enter_context(shard_lock(shard.path(out_dir, stage.output_file)))
            clean_stale_tmp(out_dir)
            check_resume(stage, own, input_ids())
        if args.executor == "ray":
            from adamllm.executors.ray_executor import run_ray

            run_ray(stage)  # Ray writes the shard file an unsharded local run writes: each resumes the other
        else:
            from adamllm.executors.local import launch_workers, run_shards

            if devices:
                launch_workers(stage, devices, args.shard_timeout_s or None)
            else:
                run_shards(stage, shards)
        # Two last cluster shards finishing together merge one after the other.
        with hold_lock(
            run_folder.merge_lock_path(out_dir, stage.output_file), f"{out_dir / stage.output_file}", wait=True
        ):
            stats = merge_shards(
                out_dir, stage.output_file, count, out_dir / stage.output_file, input_ids(), stage.name
            )
    if stats is None and devices:
        raise RuntimeError(
            f"{stage.name}: the workers exited but some shard of {run_folder.shards_dir(out_dir)} has no .done marker"
        )
    return stats


@contextmanager
def stage_lock(stage) -> Iterator[None]:
    """Lock what a stage writes for this run: the whole stage, or for a cluster shard
    (`--shard_index I`) its own shard, beside the other shards of the stage."""
    from adamllm.core.files import hold_lock
    from adamllm.executors.shards import Shard

    args = stage.args
    out_dir = Path(args.output_dir)
    what = f"{out_dir / stage.output_file} (the {stage.name} stage)"
    with ExitStack() as locks:
        if args.executor == "local" and args.shard_index >= 0:
            # The shard's first: a second copy of it is refused before it joins the stage's holders.
            locks.enter_context(shard_lock(Shard(args.shard_index, args.num_shards).path(out_dir, stage.output_file)))
            locks.enter_context(hold_lock(run_folder.stage_lock_path(out_dir, stage.output_file), what, shared=True))
        else:
            locks.enter_context(hold_lock(run_folder.stage_lock_path(out_dir, stage.output_file), what))
        yield


def shard_lock(shard_file: Path):
    """Held by whoever writes one shard file (a cluster shard, a worker of the local executor)."""
    from adamllm.core.files import hold_lock

    return hold_lock(run_folder.shard_lock_path(shard_file), str(shard_file))
