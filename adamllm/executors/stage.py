"""The contract of a model stage (synthesize, filter), and the one batch function every executor runs.

A stage says which records it reads, what its results depend on (its fingerprint), how a record
becomes an engine request (or a reject reason), how a generation becomes an output record, and which
outputs count as kept. Executors (`adamllm.executors`: local shards, a Ray cluster) only decide where
batches run and how their results are stored; `run_batch` is the same everywhere, so every executor
writes the same records.
"""

from __future__ import annotations

import importlib
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol

from adamllm.core.images import image_size, open_image
from adamllm.core.records import RecordError
from adamllm.engines import Engine, Generation, GenParams, Request


class Stage(Protocol):
    """What a model stage implements. `load` runs once per worker, before `prepare` and `finish`."""

    name: str  # "synthesize", "filter": the stats.json entry and the CLI subcommand
    output_file: str  # in OUTPUT_DIR, see adamllm.core.run_folder
    args: Any  # its argument dataclass (engine, batch size, sharding and executor flags)

    def records(self) -> Iterator[tuple[int, Any]]: ...

    def fingerprint(self) -> dict: ...

    def load(self) -> tuple[Engine, GenParams]: ...

    def prepare(self, syn_id: int, record: Any) -> Request:
        """The engine request for a record; raises RecordError (the reject reason) when there is none."""

    def finish(self, syn_id: int, record: Any, generation: Generation) -> dict: ...

    def reject(self, syn_id: int, record: Any, error: RecordError) -> dict: ...

    def kept(self, output: dict) -> bool: ...

    def add_costs(self, stats: dict) -> None:
        """Add what the stage counted while preparing the last batch (beyond engine time and tokens)."""

    # Optional: `image_path(record) -> Path | None`, the image a record's request will carry (None when
    # it has none or is unusable), so executors can decode the next batch's images ahead of time; and
    # `changed(output) -> bool`, whether a finished output went stale (its image was replaced), so a
    # resume redoes it (adamllm.executors.resume.check_resume).


def stage_spec(stage, **overrides) -> dict:
    """A stage as data: what `build_stage` rebuilds it from in another process."""
    return {
        "stage": _class_path(type(stage)),
        "args_class": _class_path(type(stage.args)),
        "args": {**asdict(stage.args), **overrides},
    }


def build_stage(spec: dict):
    """The stage a spec describes, its arguments checked as on the command line."""
    stage_class, args_class = _import_class(spec["stage"]), _import_class(spec["args_class"])
    return stage_class(args_class(**spec["args"]))


def _class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _import_class(path: str) -> type:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass
class Loaded:
    """A stage with its engine loaded: what a worker holds for its whole life."""

    stage: Stage
    engine: Engine
    params: GenParams
    max_batch_pixels: int = 0  # 0: no bound
    decoder: ThreadPoolExecutor | None = None  # decodes images while the engine runs
    # Images of the next batch, decoding since the last part of the previous one went to the engine.
    ahead: dict[Path, Future] = field(default_factory=dict)


def load(stage: Stage) -> Loaded:
    engine, params = stage.load()
    threads = getattr(stage.args, "decode_threads", 0)
    decoder = (
        ThreadPoolExecutor(threads, thread_name_prefix="decode") if threads and hasattr(stage, "image_path") else None
    )
    return Loaded(stage, engine, params, getattr(stage.args, "max_batch_pixels", 0), decoder)


def run_batch(
    loaded: Loaded, batch: list[tuple[int, Any]], stats: dict, upcoming: list[tuple[int, Any]] | None = None
) -> list[dict]:
    """Output records for a batch of (syn_id, record), in the batch's order; costs added to `stats`.

    Images are decoded only for their part of the batch: a batch whose images hold more than
    `max_batch_pixels` goes to the engine in parts, each request with its own image whole, so memory
    stays bounded and what the model sees does not change. The next part's images (or, on the last
    part, the first images of `upcoming`, the executor's next batch) decode in the thread pool while
    the engine runs, so at most two parts' worth of pixels are held at once.
    """
    stage = loaded.stage
    ahead, loaded.ahead = loaded.ahead, {}
    out: dict[int, dict] = {}
    todo = []
    for syn_id, record in batch:
        try:
            todo.append((syn_id, record, stage.prepare(syn_id, record)))
        except RecordError as e:
            out[syn_id] = stage.reject(syn_id, record, e)
    parts = list(_pixel_parts(todo, loaded.max_batch_pixels))
    for k, part in enumerate(parts):
        # This part's images that are not decoding yet, then the next part's (or the next batch's).
        for _, _, request in part + (parts[k + 1] if k + 1 < len(parts) else []):
            _start_decoding(loaded, ahead, request.image_path)
        if k + 1 == len(parts) and upcoming:
            loaded.ahead = _decode_upcoming(loaded, upcoming)
        ready = []
        start = time.monotonic()
        for syn_id, record, request in part:
            try:
                ready.append((syn_id, record, _decoded(request, ahead)))
            except RecordError as e:
                out[syn_id] = stage.reject(syn_id, record, e)
        add(stats, image_wait_s=time.monotonic() - start)
        if not ready:
            continue
        start = time.monotonic()
        generations = loaded.engine.generate([r for _, _, r in ready], loaded.params)
        add(stats, engine_s=time.monotonic() - start)
        for (syn_id, record, request), gen in zip(ready, generations):
            request.image = None  # the part's pixels go as soon as the engine is done with them
            out[syn_id] = stage.finish(syn_id, record, gen)
            add(
                stats,
                prompt_tokens=gen.prompt_tokens,
                cached_prompt_tokens=gen.cached_tokens,
                output_tokens=len(gen.token_ids),
            )
    for future in ahead.values():
        future.cancel()  # images of records that were rejected before the engine
    stage.add_costs(stats)
    return [out[syn_id] for syn_id, _ in batch]


def run_batch_isolating(
    loaded: Loaded, batch: list[tuple[int, Any]], stats: dict, upcoming: list[tuple[int, Any]] | None = None
) -> list[dict]:
    """`run_batch`, but an unexpected error in one record rejects that record (`stage_error`) instead
    of losing the batch: the batch is redone record by record to find it. When every record fails
    alone too, the fault is the worker's (the engine, the machine), not the data: it is raised."""
    try:
        return run_batch(loaded, batch, stats, upcoming)
    except Exception as batch_error:
        if len(batch) == 1:
            raise
        out, failed = [], 0
        for item in batch:
            try:
                out += run_batch(loaded, [item], stats)
            except Exception as e:
                failed += 1
                out.append(loaded.stage.reject(*item, RecordError("stage_error", f"{type(e).__name__}: {e}")))
        if failed == len(batch):
            raise batch_error
        return out


def add(stats: dict, **costs: float) -> None:
    """Accumulate costs into a stats dict (they add up over batches, resumed runs and shards)."""
    for key, value in costs.items():
        stats[key] = stats.get(key, 0) + value


def _start_decoding(loaded: Loaded, ahead: dict, path) -> None:
    if loaded.decoder is not None and path is not None and path not in ahead:
        ahead[path] = loaded.decoder.submit(open_image, path)


def _decode_upcoming(loaded: Loaded, upcoming: list[tuple[int, Any]]) -> dict:
    """Start decoding the images of the next batch's first part, cut as `_pixel_parts` will cut it."""
    ahead: dict = {}
    if loaded.decoder is not None:
        sized = _sized_images(loaded.stage, upcoming)  # lazy: headers are read only up to the cut
        for path, _ in next(_pixel_parts(sized, loaded.max_batch_pixels, pixels=lambda item: item[1]), []):
            _start_decoding(loaded, ahead, path)
    return ahead


def _sized_images(stage: Stage, records: list[tuple[int, Any]]) -> Iterator[tuple[Path, int]]:
    """(path, pixels) of the records' usable images; the others are rejected when their batch runs."""
    for _, record in records:
        if (path := stage.image_path(record)) is None:
            continue
        try:
            width, height = image_size(path)
        except RecordError:
            continue
        yield path, width * height


def _decoded(request: Request, ahead: dict) -> Request:
    if request.image is None and request.image_path is not None:
        future = ahead.pop(request.image_path, None)
        request.image = future.result() if future is not None else open_image(request.image_path)
    return request


def _pixel_parts(items, limit: int, pixels=lambda item: item[2].pixels) -> Iterator[list]:
    """Consecutive parts of `items` whose pixels add up to at most `limit` (one item at least)."""
    part, total = [], 0
    for item in items:
        n = pixels(item)
        if part and limit and total + n > limit:
            yield part
            part, total = [], 0
        part.append(item)
        total += n
    if part:
        yield part
