"""`adamllm export OUTPUT_DIR --to DIR`: hand a stage-2 run on as a `datasets` dataset.

    adamllm export exp/biomed --to exp/biomed-hf [--push_to_hub user/biomed-visual-instructions]

DIR is written with `Dataset.save_to_disk` (load it with `datasets.load_from_disk(DIR)`): one row per
record of the post-training file (image_caption_and_synthetic_task.json), with

    syn_id          the record's number in the stage-2 input
    image           the image, as an `Image` feature holding the file's bytes (a PIL image when read)
    image_path      its path in the image folder
    messages        the training conversation, [{"role": "user"|"assistant", "content": ...}]
    caption         the input caption
    Q, precise_A, informative_A   the collected triplet (null without one)
    consistency     the checker's verdict (yes / no / open / invalid; null without a triplet)
    yes_prob        P(Yes) from the logprob verdict (null unless `adamllm filter --mode logprob`)
    synthetic_task  whether `messages` holds the synthetic task
    no_task_reason  why not ("" when it does): the filter's reason, or curation's (duplicate_question, ...)

and a dataset card, DIR/README.md: the counts of every stage, the models used, the columns, and a
`license` field for you to fill in. DIR/export.summary.json holds the export's own counts (records in
= rows + rejected) and DIR/export.rejects.jsonl any record whose image can no longer be used.

Rows are streamed (`Dataset.from_generator`, which writes them to a temporary cache beside DIR in
batches): memory does not grow with the run. The dataset is assembled in a temporary folder beside
DIR and renamed into place at the end, so a failed export leaves no half-written DIR.

`--push_to_hub REPO` then uploads the card (huggingface_hub: create the dataset repo, upload
README.md) and pushes the dataset with one call to the `datasets` API, `Dataset.push_to_hub(REPO)`,
which stores the images' bytes in Parquet files and adds the features and splits to the card.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

from adamllm.core.files import clean_stale_tmp, tmp_path, tmp_pattern
from adamllm.core.images import check_image_unchanged, read_image_bytes, resolve_image_path
from adamllm.core.jsonfiles import read_json_file, read_run_records, write_json
from adamllm.core.records import COLLECTED_QA, CONSISTENCY, LOGPROBS, SYN_ID, RecordError, Rejects, parse_caption_pair
from adamllm.core.run_folder import FILTERED_FILE, FINAL_FILE, STATS_FILE, curation_path, rejects_path
from adamllm.core.stats import check_run_folder, run_image_folder
from adamllm.results.dataset_card import CARD_FILE, ExportSummary, dataset_card
from adamllm.stage2.curate import yes_prob
from adamllm.stage2.format import kept_triplet

log = logging.getLogger(__name__)

SUMMARY_FILE = "export.summary.json"
REJECTS_FILE = "export.rejects.jsonl"
TRIPLET_FIELDS = ("Q", "precise_A", "informative_A")
ROLES = {"human": "user", "gpt": "assistant"}  # LLaVA-style turns, as messages


def features():
    """The dataset's columns (datasets is imported here: `adamllm --help` stays instant)."""
    from datasets import Features, Image, Value

    text = Value("string")
    return Features(
        {
            "syn_id": Value("int64"),
            "image": Image(),
            "image_path": text,
            "messages": [{"role": text, "content": text}],
            "caption": text,
            "Q": text,
            "precise_A": text,
            "informative_A": text,
            "consistency": text,
            "yes_prob": Value("float64"),
            "synthetic_task": Value("bool"),
            "no_task_reason": text,
        }
    )


@dataclass
class ExportArgs:
    output_dir: str  # a finished stage-2 run folder
    to: str  # the dataset folder to write (absent or empty)
    image_folder: str = ""  # default: the one format (else synthesis) ran with, from stats.json
    push_to_hub: str = ""  # a Hub dataset repo id
    private: bool = False

    def __post_init__(self):
        errors = []
        out = Path(self.output_dir)
        missing = [name for name in (FILTERED_FILE, FINAL_FILE, STATS_FILE) if not (out / name).is_file()]
        if missing:
            errors.append(
                f"{self.output_dir} holds no finished stage-2 run (no {', '.join(missing)}); run `adamllm run` (or "
                f"synthesize, filter and format) first"
            )
        to = Path(self.to) if self.to else None
        if to is None:
            errors.append("--to is required: the folder to write the dataset to")
        elif to.exists() and not to.is_dir():
            errors.append(f"--to {self.to} is a file; give a new or empty folder")
        elif to.is_dir() and any(to.iterdir()):
            errors.append(f"--to {self.to} is not empty; give a new or empty folder (nothing was written)")
        if importlib.util.find_spec("datasets") is None:
            errors.append("adamllm export needs the datasets package: pip install 'adamllm[curate]'")
        elif self.push_to_hub:
            errors += check_hub(self.push_to_hub)
        if errors:
            raise ValueError("; ".join(errors))


def check_hub(repo: str) -> list[str]:
    """What stops a push to `repo`, found before any work."""
    from huggingface_hub import get_token
    from huggingface_hub.utils import validate_repo_id

    errors = []
    try:
        validate_repo_id(repo)
    except ValueError as e:
        errors.append(f"--push_to_hub {repo}: not a Hub repo id ({e}); give NAMESPACE/NAME")
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE"):
        errors.append(
            f"--push_to_hub {repo}: HF_HUB_OFFLINE is set, so nothing can be pushed; unset it, or export without "
            f"--push_to_hub"
        )
    elif get_token() is None:
        errors.append(f"--push_to_hub {repo}: no Hugging Face token; log in with `hf auth login` or set HF_TOKEN")
    return errors


# --- reading the run folder -----------------------------------------------------------------------
def _indices(path: Path) -> Iterator[tuple[int, dict]]:
    """(index, row) of a companion file format writes in input order (rejects, curation)."""
    if not path.exists():
        return
    last = -1
    for n, row in enumerate(read_run_records(path)):
        index = row.get("index") if isinstance(row, dict) else None
        if type(index) is not int or index <= last:
            raise ValueError(
                f"{path}: row {n} has index {index!r}; format writes increasing record indices here. Rerun `adamllm "
                f"format`"
            )
        last = index
        yield index, row


def image_folder(args: ExportArgs, stats: dict) -> str:
    """The run's image folder (`run_image_folder`), which must exist: the export copies its images."""
    resolved, source = run_image_folder(Path(args.output_dir), stats, args.image_folder)
    if resolved is None:
        raise ValueError(f"{Path(args.output_dir) / STATS_FILE} records no image folder; pass --image_folder")
    if not resolved.is_dir():
        raise ValueError(
            f"image folder {resolved} ({source}): no such folder; pass the run's image folder with --image_folder"
        )
    return str(resolved)


def check_join(out: Path) -> int:
    """The number of post-training records, proven to match the filtered file less format's rejects
    (how rows are joined with their records); ValueError before any work when they do not."""
    final = out / FINAL_FILE
    filtered = sum(1 for _ in read_run_records(out / FILTERED_FILE))
    rejected = sum(1 for index, _ in _indices(rejects_path(final)) if index < filtered)
    for _ in _indices(curation_path(out / FINAL_FILE)):
        pass  # its order is checked here, before any work
    finals = sum(1 for _ in read_run_records(final))
    if finals != filtered - rejected:
        raise ValueError(
            f"{final} holds {finals} records, but {out / FILTERED_FILE} holds {filtered}, of which format rejected "
            f"{rejected}: "
            "they are not from the same format run; rerun `adamllm format` into this folder, then export"
        )
    return finals


# --- rows -----------------------------------------------------------------------------------------
def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _messages(final: Any) -> list[dict[str, str]]:
    turns = (final.get("messages") or final.get("conversations")) if isinstance(final, dict) else None
    if not isinstance(turns, list):
        return []
    out = []
    for t in turns:
        if isinstance(t, dict):
            role = t.get("role", ROLES.get(t.get("from"), t.get("from")))
            content = t.get("content", t.get("value"))
            out.append({"role": str(role), "content": content if isinstance(content, str) else json.dumps(content)})
    return out


def _final_image(final: Any) -> str:
    if not isinstance(final, dict):
        return ""
    image = final.get("images", final.get("image"))
    image = image[0] if isinstance(image, list) and image else image
    return image if isinstance(image, str) else ""


def _row(record: dict, final: Any, curated: dict | None, folder: str) -> dict:
    pair = parse_caption_pair(record)  # format admitted it, so this holds unless the file was edited since
    image = pair.image
    if Path(_final_image(final)).name != Path(image).name:
        raise ValueError(
            f"the post-training record for syn_id {record.get(SYN_ID)!r} names image {_final_image(final)!r}, its "
            f"filtered record "
            f"{image!r}: the files are not from the same format run; rerun `adamllm format`, then export"
        )
    path = resolve_image_path(folder, image)
    check_image_unchanged(record, path)
    data = read_image_bytes(path)
    qa = record.get(COLLECTED_QA) if isinstance(record.get(COLLECTED_QA), dict) else {}
    triplet, missing = kept_triplet(record)
    reason = curated.get("reason") if curated else ("" if triplet is not None else missing)
    syn_id = record.get(SYN_ID)
    return {
        "syn_id": syn_id if type(syn_id) is int else None,
        "image": {"bytes": data, "path": image},
        "image_path": image,
        "messages": _messages(final),
        "caption": pair.caption,
        **{key: _text(qa.get(key)) for key in TRIPLET_FIELDS},
        "consistency": _text(record.get(CONSISTENCY)),
        "yes_prob": yes_prob(record.get(LOGPROBS)),
        "synthetic_task": not reason,
        "no_task_reason": str(reason),
    }


def generate_rows(out_dir: str, folder: str, rejects: Rejects, summary: ExportSummary):
    """The dataset's rows (a generator for `Dataset.from_generator`, run in this process)."""
    out = Path(out_dir)
    final_path = out / FINAL_FILE
    rejected = _indices(rejects_path(final_path))
    curated = _indices(curation_path(out / FINAL_FILE))
    next_rejected, next_curated = next(rejected, None), next(curated, None)
    finals = read_run_records(final_path)
    no_task: Counter = Counter()
    for index, record in enumerate(read_run_records(out / FILTERED_FILE)):
        while next_rejected is not None and next_rejected[0] < index:
            next_rejected = next(rejected, None)
        if next_rejected is not None and next_rejected[0] == index:
            continue  # format rejected it: it is not in the post-training file
        while next_curated is not None and next_curated[0] < index:
            next_curated = next(curated, None)
        curation = next_curated[1] if next_curated is not None and next_curated[0] == index else None
        final = next(finals, None)
        if final is None:
            raise ValueError(
                f"{final_path} ends before the filtered records it was formatted from; rerun `adamllm format`, then "
                f"export"
            )
        summary.records_in += 1
        try:
            row = _row(record, final, curation, folder)
        except RecordError as e:
            rejects.add(e.reason, e.detail, final, index=index, syn_id=record.get(SYN_ID))
            continue
        summary.rows += 1
        summary.rows_with_synthetic_task += row["synthetic_task"]
        if row["no_task_reason"]:
            no_task[row["no_task_reason"]] += 1
        yield row
    summary.no_task_reasons = dict(no_task)


# --- the export -----------------------------------------------------------------------------------
def run_export(args: ExportArgs) -> ExportSummary:
    """Write DIR (dataset, card, summary, rejects); push it when asked. Checks come first: a bad
    run folder, image folder or join is a ValueError before anything is written."""
    import datasets

    out = Path(args.output_dir)
    stats = read_json_file(out / STATS_FILE)
    if not isinstance(stats, dict):
        raise ValueError(f"{out / STATS_FILE} is not a JSON object of stages")
    check_run_folder(out, stats)
    folder = image_folder(args, stats)
    check_join(out)

    to = Path(args.to)
    to.parent.mkdir(parents=True, exist_ok=True)
    summary = ExportSummary(to=str(to))
    # The staging folder is named for this process (files.tmp_path), so a rerun removes the one a
    # killed export into the same DIR left beside it.
    base = to.parent / f".{to.name}.export"
    clean_stale_tmp(to.parent, (tmp_pattern(base),))
    with staging_folder(tmp_path(base)) as tmp:
        staging = Path(tmp) / "dataset"
        staging.mkdir()
        rejects = Rejects(staging / REJECTS_FILE)
        try:
            dataset = datasets.Dataset.from_generator(
                generate_rows,
                features=features(),
                cache_dir=str(Path(tmp) / "cache"),
                gen_kwargs={"out_dir": str(out), "folder": folder, "rejects": rejects, "summary": summary},
                # a fresh cache per export: the fingerprint only names it (nothing is reused)
                fingerprint=f"adamllm-export-{os.getpid()}-{Path(tmp).name}",
            )
        except datasets.exceptions.DatasetGenerationError as e:
            # datasets wraps what the rows raised: a damaged run folder is our ValueError, a disk error an OSError
            cause = e.__cause__
            if isinstance(cause, (ValueError, OSError)):
                raise cause from None
            raise
        finally:
            rejects.close()
        summary.rejected = dict(rejects.counts)
        dataset.save_to_disk(str(staging))
        del dataset
        (staging / CARD_FILE).write_text(dataset_card(to.name, stats, summary), encoding="utf-8")
        write_json(staging / SUMMARY_FILE, asdict(summary))
        if to.is_dir():
            to.rmdir()  # empty (checked before any work); rename needs the name free
        os.replace(staging, to)
    log.info(
        "export: %d records in, %d rows to %s, %d rejected %s",
        summary.records_in,
        summary.rows,
        to,
        sum(summary.rejected.values()),
        summary.rejected,
    )
    if args.push_to_hub:
        push_to_hub(to, args.push_to_hub, args.private)
        summary.pushed_to = args.push_to_hub
        write_json(to / SUMMARY_FILE, asdict(summary))
    return summary


@contextmanager
def staging_folder(path: Path) -> Iterator[Path]:
    """A new folder, removed with what it holds when the block ends (its dataset renamed out first)."""
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def push_to_hub(dataset_dir: Path, repo: str, private: bool) -> None:
    """Upload the card, then the dataset: `Dataset.push_to_hub`, one call to the datasets API, which
    embeds the images' bytes in Parquet files and adds the features and splits to the card it finds."""
    import datasets
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
    api.upload_file(
        path_or_fileobj=str(dataset_dir / CARD_FILE),
        path_in_repo=CARD_FILE,
        repo_id=repo,
        repo_type="dataset",
        commit_message="Dataset card (adamllm export)",
    )
    datasets.load_from_disk(str(dataset_dir)).push_to_hub(
        repo, private=private, commit_message="Upload dataset (adamllm export)"
    )
