"""The names of the files every stage writes: one place, so that no stage, executor or report spells
them on its own.

A stage-2 output folder (OUTPUT_DIR) holds:

    syn_task_triplets.jsonl            stage 2a, one record per input record (+ .rejects.jsonl)
    filtered_task_pairs.jsonl          stage 2b (+ .rejects.jsonl: the records it could not judge)
    image_caption_and_synthetic_task.json   stage 2c (+ .rejects.jsonl, .summary.json, dataset_info.json,
                                       and .curation.jsonl when --dedup / --min_yes_prob removed a task)
    prompts.jsonl                      synthesize --dry_run (+ .rejects.jsonl)
    stats.json                         counts, times and tokens of every stage, and what each read and wrote
    report.html                        adamllm report
    shards/                            work in progress of the model stages:
        <stem>.<I>-of-<K>.jsonl            finished records of shard I of K, in syn_id order
        <stem>.<I>-of-<K>.done             its count, once the shard is complete
        <stem>.<I>-of-<K>.stats.json       its costs (engine time, tokens), over resumed runs
        <stem>.input-of-<K>.json           the fingerprint of the input and settings they were made from
        <stem>.worker-<I>-of-<K>.json      a worker's stage and arguments, as data (local executor)
        run.lock, <stem>.lock, <stem>.<I>-of-<K>.lock, <stem>.merge.lock
                                           while `adamllm run`, a stage, a shard, a merge writes
"""

from __future__ import annotations

from pathlib import Path

TRIPLETS_FILE = "syn_task_triplets.jsonl"
FILTERED_FILE = "filtered_task_pairs.jsonl"
FINAL_FILE = "image_caption_and_synthetic_task.json"
PROMPTS_FILE = "prompts.jsonl"
STATS_FILE = "stats.json"
DATASET_INFO_FILE = "dataset_info.json"  # beside format's output: LLaMA-Factory's list of datasets
REPORT_FILE = "report.html"
SHARDS_DIR = "shards"


def stem(file_name: str) -> str:
    """A file's name without its .jsonl / .json ending: what its companion files are named after."""
    return file_name.removesuffix(".jsonl").removesuffix(".json")


def rejects_path(output: str | Path) -> Path:
    """The rejects file beside an output file (`x.jsonl` -> `x.rejects.jsonl`)."""
    output = Path(output)
    return output.with_name(f"{stem(output.name)}.rejects.jsonl")


def curation_path(output: str | Path) -> Path:
    """The records whose synthetic task curation removed, beside format's output
    (`x.json` -> `x.curation.jsonl`; `adamllm format --dedup / --min_yes_prob`)."""
    output = Path(output)
    return output.with_name(f"{stem(output.name)}.curation.jsonl")


def summary_path(output: str | Path) -> Path:
    """The summary beside an output file (`x.json` -> `x.summary.json`)."""
    output = Path(output)
    return output.with_name(f"{stem(output.name)}.summary.json")


def shards_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / SHARDS_DIR


def shard_path(out_dir: str | Path, stage_file: str, index: int, count: int) -> Path:
    return shards_dir(out_dir) / f"{stem(stage_file)}.{index:03d}-of-{count:03d}.jsonl"


def done_marker(shard: Path) -> Path:
    return shard.with_suffix(".done")


def shard_stats_path(shard: Path) -> Path:
    return shard.with_suffix(".stats.json")


def fingerprint_path(out_dir: str | Path, stage_file: str, count: int) -> Path:
    return shards_dir(out_dir) / f"{stem(stage_file)}.input-of-{count:03d}.json"


def worker_spec_path(out_dir: str | Path, stage_file: str, index: int, count: int) -> Path:
    return shards_dir(out_dir) / f"{stem(stage_file)}.worker-{index:03d}-of-{count:03d}.json"


def run_lock_path(out_dir: str | Path) -> Path:
    """Held by `adamllm run` for all its stages."""
    return shards_dir(out_dir) / "run.lock"


def stage_lock_path(out_dir: str | Path, stage_file: str) -> Path:
    """Held by every run of a stage: exclusive for a whole run, shared by cluster shards."""
    return shards_dir(out_dir) / f"{stem(stage_file)}.lock"


def shard_lock_path(shard: Path) -> Path:
    return shard.with_suffix(".lock")


def merge_lock_path(out_dir: str | Path, stage_file: str) -> Path:
    return shards_dir(out_dir) / f"{stem(stage_file)}.merge.lock"


def output_lock_path(output: str | Path) -> Path:
    """Held while a stage without shards (format, merge-seed) writes `output`."""
    output = Path(output)
    return output.with_name(f"{output.name}.lock")


def fingerprint_files(out_dir: str | Path, stage_file: str) -> list[Path]:
    """A stage's fingerprint files, whatever their shard count."""
    return sorted(shards_dir(out_dir).glob(f"{stem(stage_file)}.input-of-*.json"))


def stage_work_files(out_dir: str | Path, stage_file: str) -> list[Path]:
    """Every file one stage keeps in shards/ (to start that stage over), but its locks: they stay
    with the runs holding them."""
    return sorted(p for p in shards_dir(out_dir).glob(f"{stem(stage_file)}.*") if p.suffix != ".lock")


def stage_shard_files(out_dir: str | Path, stage_file: str) -> list[Path]:
    """The shard files of one stage, whatever their shard count."""
    return sorted(shards_dir(out_dir).glob(f"{stem(stage_file)}.*-of-*.jsonl"))
