"""The Ray executor: a stage's batches run in a pool of Ray actors (one per GPU), on one machine or a
cluster, through Ray Data.

    adamllm run ... --executor ray                          # a local Ray instance with this machine's CPUs/GPUs
    adamllm run ... --executor ray --ray_address auto       # the cluster `ray start --head` started here

The input streams in from read tasks that run on the cluster (the driver only counts records); each
actor loads the engine once and runs the same batch function as the local executor; results come
back in input order (Ray Data's `preserve_order`) and the driver appends them durably to the same
shard file an unsharded local run writes, so a driver killed with `kill -9` resumes from it, and
the merged output is byte-identical to the local executor's. Ray restarts an actor that dies and
retries its batch; a record that fails inside an actor is rejected with its reason.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from ray.data import Datasource

from adamllm.core.jsonfiles import json_line
from adamllm.executors.shards import Shard, ShardRun
from adamllm.executors.stage import Stage, add, build_stage, load, run_batch_isolating, stage_spec

log = logging.getLogger(__name__)

# Environment a driver hands its actors (a local instance inherits it anyway; a cluster does not).
FORWARDED_ENV = ("HF_", "VLLM_", "TOKENIZERS_", "OMP_NUM_THREADS", "TRANSFORMERS_")
LOCAL_OBJECT_STORE_BYTES = 1 << 30  # blocks hold JSON text; the images are decoded inside the actors
MAX_READ_TASKS = 64
ACTOR_START_TIMEOUT_S = 3600


class StageActor:
    """One Ray actor: builds its stage from data, loads the engine once, runs batches.

    Subclassed per run with the stage as data (`adamllm.executors.stage.stage_spec`) as a class
    attribute (`_actor_class`): Ray keeps constructor arguments in its object store, and warns that
    an actor restarted after losing them could not be rebuilt.
    """

    spec: dict = {}

    def __init__(self):
        import ray
        import transformers

        transformers.utils.logging.disable_progress_bar()  # one bar per actor start is noise in the driver's log
        start = time.monotonic()
        self.loaded = load(build_stage(self.spec))
        self.load_s = time.monotonic() - start
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict) -> dict:
        stats: dict = {}
        if self.load_s:
            stats["engine_load_s"], self.load_s = self.load_s, 0.0
        start = time.monotonic()
        items = [(int(i), json.loads(text)) for i, text in zip(batch["syn_id"], batch["record"])]
        out = run_batch_isolating(self.loaded, items, stats)
        stats["wall_s"] = time.monotonic() - start
        stats["nodes"] = [self.node]
        return {
            "syn_id": [i for i, _ in items],
            "output": [json_line(o) for o in out],
            "kept": [self.loaded.stage.kept(o) for o in out],
            # One row per batch carries its costs; the driver adds them up.
            "stats": [json.dumps(stats)] + [""] * (len(out) - 1),
        }


def run_ray(stage: Stage) -> None:
    """Run the stage's records not yet in its shard file through Ray; leaves the shard done."""
    from tqdm import tqdm

    args = stage.args
    run = ShardRun(Shard(0, 1).path(Path(args.output_dir), stage.output_file))
    total, todo = 0, []  # the syn_ids still to do: where the read tasks' slices begin and end
    for syn_id, _ in stage.records():  # streamed: checks the input, keeps no record
        total += 1
        if syn_id not in run.done:
            todo.append(syn_id)
    nodes = set(run.stats.pop("nodes", []))
    if todo:
        _connect(args.ray_address)
        dataset = _dataset(stage, todo, run.done)
        start = time.monotonic()
        with (
            run.writing(),
            tqdm(total=total, initial=len(run.done), desc=f"{stage.name} (ray)", unit="rec", dynamic_ncols=True) as bar,
        ):
            for block in dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=2):
                for row in block["stats"]:
                    if row:
                        costs = json.loads(row)
                        nodes.update(costs.pop("nodes"))
                        costs["worker_wall_s"] = costs.pop("wall_s")
                        add(run.stats, **costs)
                run.append(block["output"], int(block["kept"].sum()), start, nodes=sorted(nodes))
                start = time.monotonic()
                bar.set_postfix(kept=run.kept, resumed=len(run.done), refresh=False)
                bar.update(len(block["output"]))
    run.stats["ray_nodes"] = len(nodes)
    run.save_stats(nodes=sorted(nodes))
    run.finish()


def _connect(address: str) -> None:
    """Join the cluster at `address`, or start a local instance with this machine's CPUs and GPUs."""
    import ray
    from ray.data import DataContext

    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
    # Ray's start-up and per-dataset INFO lines, and the notice that progress bars are off, bury the
    # driver's own progress bar and counts; errors still surface as exceptions.
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    for handler in logging.getLogger("ray").handlers:
        handler.addFilter(lambda record: "Token authentication is enabled" not in record.getMessage())
    if not ray.is_initialized():
        if address:
            ray.init(address=address, runtime_env={"env_vars": env}, logging_level=logging.WARNING)
        else:
            # "local": a new instance even when another Ray runs on this machine (ray.init() would join it).
            ray.init(
                address="local",
                object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                include_dashboard=False,
                logging_level=logging.WARNING,
            )
    context = DataContext.get_current()
    context.execution_options.preserve_order = True  # results in syn_id order: the shard file stays sorted
    context.enable_progress_bars = False  # the driver shows one bar, with counts
    # Start batches once every actor has loaded its engine, so the work spreads over all of them
    # (the first engine up would otherwise take every batch of a short run). Loading an 8B model
    # from the hub can take minutes; the number of workers was checked against the cluster first.
    context.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S


def _dataset(stage: Stage, todo: list[int], done: set[int]):
    """The records not yet done (`todo`: their syn_ids), read on the cluster in slices, mapped by a
    pool of StageActors."""
    import ray

    args = stage.args
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    workers = args.num_workers or gpus or 1
    have = gpus or int(resources.get("CPU", 0))
    if workers > have:
        raise RuntimeError(
            f"--num_workers {workers}: the Ray cluster has {have} {'GPUs' if gpus else 'CPUs'}, one per worker; "
            "lower --num_workers or add nodes"
        )
    n_tasks = max(1, min(MAX_READ_TASKS, len(todo) // args.batch_size + 1))
    source = _RecordSource(stage, todo, done, n_tasks)
    # Reads claim no CPU: with every CPU held by an engine actor they must still run, or, the order
    # of blocks being preserved, the actors would wait for a read that waits for a CPU.
    dataset = ray.data.read_datasource(source, override_num_blocks=n_tasks, num_cpus=0)
    return dataset.map_batches(
        _actor_class(stage),
        batch_size=args.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_gpus=1 if gpus else 0,
        num_cpus=0 if gpus else 1,
    )


def _actor_class(stage: Stage) -> type:
    # The actors run batches; they neither shard nor start executors of their own.
    spec = stage_spec(stage, executor="local", ray_address="", num_workers=0, num_shards=1, shard_index=0)
    return type("StageActor", (StageActor,), {"spec": spec})


class _RecordSource(Datasource):
    """The stage's records not yet done as Ray Data blocks: read task k streams the input and keeps
    the k-th slice of those records, cut by their count, not by syn_id value (an input's syn_ids
    need not be 0..N-1: a subset, a file with lines removed). Records come in increasing syn_id
    order (both stages check it), so a slice is the records from its first syn_id to its last."""

    def __init__(self, stage: Stage, todo: list[int], done: set[int], n_tasks: int):
        self.stage, self.todo, self.done, self.n_tasks = stage, todo, done, n_tasks

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None):
        from ray.data import ReadTask
        from ray.data.block import BlockMetadata

        bounds = [len(self.todo) * k // self.n_tasks for k in range(self.n_tasks + 1)]
        tasks = []
        for lo, hi in zip(bounds, bounds[1:]):
            if hi == lo:
                continue
            first, last = self.todo[lo], self.todo[hi - 1]
            done = {i for i in self.done if first < i < last}  # each task carries only its part
            metadata = BlockMetadata(num_rows=hi - lo, size_bytes=None, exec_stats=None, input_files=None)
            tasks.append(ReadTask(_reader(self.stage, first, last, done), metadata))
        return tasks


def _reader(stage: Stage, first: int, last: int, done: set[int], rows_per_block: int = 256):
    """The records from syn_id `first` to `last` not in `done`."""

    def read():
        import pyarrow as pa

        ids, texts = [], []
        for syn_id, record in stage.records():
            if syn_id > last:
                break
            if syn_id < first or syn_id in done:
                continue
            ids.append(syn_id)
            texts.append(json_line(record))
            if len(ids) == rows_per_block:
                yield pa.table({"syn_id": ids, "record": texts})
                ids, texts = [], []
        if ids:
            yield pa.table({"syn_id": ids, "record": texts})

    return read
