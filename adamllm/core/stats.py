"""OUTPUT_DIR/stats.json: counts, times and tokens of every stage of a stage-2 run, the arguments
each stage ran with (so a run can be repeated from its own output folder), and what each stage was
made from (its `provenance`: the path, size and sha256 of the file it read and of the file it
wrote), so that a later stage, the report and the export can refuse a folder whose files do not
come from one another."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from adamllm.core.files import file_sha256
from adamllm.core.images import trusted_image_folder
from adamllm.core.jsonfiles import read_json_file, write_json
from adamllm.core.run_folder import FILTERED_FILE, FINAL_FILE, STATS_FILE, TRIPLETS_FILE, fingerprint_files

PROVENANCE = "provenance"
# The stages of a run folder in order, each with the file it writes there (the next one's input).
CHAIN = (("synthesize", TRIPLETS_FILE), ("filter", FILTERED_FILE), ("format", FINAL_FILE))
STAGES = [stage for stage, _ in CHAIN]


def read_stats(path: str | Path) -> dict:
    """stats.json as {stage: entry}; damage (not JSON, or not an object of stages) is a ValueError
    naming the file and the fix."""
    return read_json_file(
        path,
        dict,
        "a JSON object of stages",
        "repair it, or move it away and rerun each stage's command (a finished stage resumes at once and writes its "
        "entry again)",
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


def provenance(fingerprint: dict, output: Path, digest) -> dict:
    """A model stage's provenance: its input as its resume fingerprint hashed it, and its output as
    `digest` hashed it while the stage counted it."""
    source = {"path": fingerprint["input"], "size": fingerprint["size"], "sha256": fingerprint["sha256"]}
    return {"input": source, "output": file_record(output, digest.hexdigest())}


def file_record(path: str | Path, sha256: str, final_path: str | Path | None = None) -> dict:
    """Path, size and sha256 of a file; `final_path` names a temp file by the path it is renamed to."""
    path = Path(path)
    return {"path": str(Path(final_path or path).resolve()), "size": path.stat().st_size, "sha256": sha256}


def _recorded(stats: dict, stage: str) -> dict | None:
    """A stage's recorded input and output sha256, or None when it recorded none (a run folder
    written by hand, or before stages recorded them: nothing to check)."""
    entry = stats.get(stage)
    record = entry.get(PROVENANCE) if isinstance(entry, dict) else None
    try:
        found = {side: record[side]["sha256"] for side in ("input", "output")}
    except (TypeError, KeyError):
        return None
    return found if all(isinstance(v, str) for v in found.values()) else None


def chain_problem(out_dir: Path, stats: dict, observed: dict[str, str], upto: str = "") -> str:
    """ "" when the run folder's stages chain, else which files are stale and the fix.

    Each stage (before `upto`, or all) must have read what the stage before it last wrote, and each
    file in `observed` ({file name: its sha256 now}) must be what its stage wrote.
    """
    before = None
    for i, (stage, name) in enumerate(CHAIN[: STAGES.index(upto) if upto else None]):
        record = _recorded(stats, stage)
        if record is None:
            before = None
            continue
        if before is not None and record["input"] != before["output"]:
            return _stale(
                out_dir,
                i,
                upto,
                f"`adamllm {stage}` read another {CHAIN[i - 1][1]} than the one `adamllm {STAGES[i - 1]}` last wrote",
            )
        if name in observed and observed[name] != record["output"]:
            return _stale(
                out_dir, i, upto, f"{name} is not the file `adamllm {stage}` wrote (it was edited or replaced since)"
            )
        before = record
    return ""


def _stale(out_dir: Path, first: int, upto: str, why: str) -> str:
    """The message for a folder whose files from stage `first` on (up to `upto`) are stale."""
    last = STAGES.index(upto) if upto else len(STAGES)
    stale = [str(out_dir / name) for _, name in CHAIN[first:last] if (out_dir / name).exists()]
    todo = [f"`adamllm {stage}{' --overwrite' if stage != 'format' else ''}`" for stage in STAGES[first : last + 1]]
    return (
        f"{out_dir} does not hold one run: {why}, so {', '.join(stale) or 'its later files'} "
        f"{'is' if len(stale) == 1 else 'are'} stale "
        f"({STATS_FILE} records what each stage read and wrote). Rerun {', then '.join(todo)} into {out_dir}, "
        "or `adamllm run` with --overwrite"
    )


def check_made_from(data_path: str | Path, sha256: str, stage: str) -> None:
    """Before `stage` reads `data_path` (whose sha256 is given): when that is the file the stage
    before it writes in a run folder, the folder's stages up to it must chain and the file be the
    one its stage wrote; ValueError naming the stale files and the fix otherwise."""
    path = Path(data_path).resolve()
    name = CHAIN[STAGES.index(stage) - 1][1]
    stats_path = path.parent / STATS_FILE
    if path.name != name or not stats_path.is_file():
        return
    try:
        stats = read_json_file(stats_path)
    except ValueError:
        return  # a damaged stats.json says nothing of where files came from; writing it reports it
    if isinstance(stats, dict) and (problem := chain_problem(path.parent, stats, {name: sha256}, upto=stage)):
        raise ValueError(problem)


def check_run_folder(out_dir: Path, stats: dict) -> None:
    """For the report and the export: the run folder's stages chain, and its filtered and final
    files are the ones their stages wrote (each hashed once, streamed); ValueError otherwise."""
    observed = {name: file_sha256(out_dir / name) for name in (FILTERED_FILE, FINAL_FILE) if (out_dir / name).is_file()}
    if problem := chain_problem(out_dir, stats, observed):
        raise ValueError(problem)


def run_image_folder(out_dir: Path, stats: dict, given: str = "") -> tuple[Path | None, str]:
    """A run folder's image folder (resolved) and where it came from; None when none is known.

    `given` (--image_folder) wins; else the folder format checked the images in, else synthesis's,
    from stats.json. stats.json is easy to edit, so a folder read from it must agree with the one
    synthesis recorded beside its shards (the newest fingerprint: one left from a run with another
    shard count may name an older folder). A filesystem root is refused either way: it would let a
    report or an export take any image file on the disk.
    """
    folder, source = given, "--image_folder"
    for stage in ("format", "synthesize"):
        if not folder:
            args = stats.get(stage, {}).get("args") if isinstance(stats.get(stage), dict) else None
            folder = args.get("image_folder") if isinstance(args, dict) else None
            source = f"the {stage} args in {STATS_FILE}"
    if not isinstance(folder, str) or not folder:
        return None, f"{STATS_FILE} records no image folder"
    resolved = trusted_image_folder(folder, source)
    recorded = None if given else _recorded_image_folder(out_dir)
    if recorded and Path(recorded[1]).resolve() != resolved:
        relative = (
            ""
            if Path(folder).is_absolute()
            else f" (here: {resolved}, a relative folder being read from the current directory)"
        )
        raise ValueError(
            f"{out_dir / STATS_FILE} says the images are in {folder}{relative}, but {recorded[0]} records that "
            f"synthesis "
            f"read them from {recorded[1]}; pass the run's image folder with --image_folder"
        )
    return resolved, source


def _recorded_image_folder(out_dir: Path) -> tuple[Path, str] | None:
    """(fingerprint file, image folder) as the last synthesis recorded it beside its shards."""
    paths = [p for p in fingerprint_files(out_dir, TRIPLETS_FILE) if p.is_file()]
    if not paths:
        return None
    path = max(paths, key=lambda p: p.stat().st_mtime_ns)
    fingerprint = read_json_file(path)
    folder = fingerprint.get("image_folder") if isinstance(fingerprint, dict) else None
    return (path, folder) if isinstance(folder, str) and folder else None
