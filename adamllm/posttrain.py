"""Stage 2c: turn filtered triplets into single-stage post-training data.

    adamllm format --data_path OUT/filtered_task_pairs.jsonl --image_folder IMAGES \
        --output OUT/image_caption_and_synthetic_task.json

Each record becomes one conversation holding the image's caption task and, when its triplet passed
the consistency filter, the synthetic task; a seeded coin per record puts the caption task first or
last. Seeds are per record (the run seed and the record's `syn_id`), so the output does not depend
on how the input was sharded or ordered.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from adamllm import run_folder
from adamllm.formats import (
    COLLECTED_QA,
    CONSISTENCY,
    PRED,
    SYN_ID,
    STYLES,
    RecordError,
    Rejects,
    assistant_message,
    dataset_info_entry,
    iter_input_records,
    llava_record,
    parse_caption_pair,
    sharegpt_record,
    update_dataset_info,
    user_message,
    write_json,
    write_json_list,
)
from adamllm.images import check_image, resolve_image_path
from adamllm.parse import Triplet
from adamllm.prompts import CAPTION_HINT, COT_TEMPLATES, INDICATORS, QA_TEMPLATES, fill_task, strip_special_tokens

log = logging.getLogger(__name__)

# How the answer of a kept triplet is built (spec, stage 2c).
INFORMATIVE_ONLY = "informative"  # its last sentence already concludes
INFORMATIVE_THEN_PRECISE = "informative+precise"  # the precise answer concludes
CHAIN_OF_THOUGHT = "chain_of_thought"  # reasoning, then the precise answer as the final answer


def answer_kind(triplet: Triplet) -> str:
    """Which of the three answer forms a triplet gets, by the indicator-word rule."""
    last_sentence = triplet.informative_A.split(". ")[-1].lower()
    if any(word in last_sentence for word in INDICATORS):
        return INFORMATIVE_ONLY
    if any(word in triplet.precise_A.lower() for word in INDICATORS):
        return INFORMATIVE_THEN_PRECISE
    return CHAIN_OF_THOUGHT


def synthetic_task(triplet: Triplet, rng: random.Random) -> tuple[str, str, str]:
    """The synthetic task worded by a template the RNG picks: (user text, assistant text, kind)."""
    kind = answer_kind(triplet)
    if kind == CHAIN_OF_THOUGHT:
        template = rng.choice(COT_TEMPLATES)
        user, assistant = fill_task(template, triplet.Q, triplet.precise_A, reasoning=triplet.informative_A)
    else:
        answer = triplet.informative_A
        if kind == INFORMATIVE_THEN_PRECISE:
            answer = f"{triplet.informative_A} {triplet.precise_A}"
        user, assistant = fill_task(rng.choice(QA_TEMPLATES), triplet.Q, answer)
    return user, assistant, kind


def record_rng(seed: int, syn_id: int) -> random.Random:
    """The RNG of one record: the same choices for a record in every run, shard and order."""
    return random.Random(f"adamllm-format:{seed}:{syn_id}")


def kept_triplet(record: dict) -> tuple[Triplet | None, str]:
    """The record's triplet if the filter kept it, else None and the reason it has no task."""
    if record.get(PRED) is None and record.get(COLLECTED_QA) is None:
        return None, "synthesis_failed"
    qa = record.get(COLLECTED_QA)
    if qa is None:
        return None, "no_triplet"
    if not isinstance(qa, dict) or not all(isinstance(qa.get(k), str) and qa[k].strip() for k in ("Q", "precise_A", "informative_A")):
        return None, "bad_collected_QA"
    verdict = record.get(CONSISTENCY)
    if verdict != "yes":
        return None, f"consistency_{verdict if verdict and isinstance(verdict, str) else 'missing'}"
    clean = {k: strip_special_tokens(qa[k])[0].strip() for k in ("Q", "precise_A", "informative_A")}
    if not all(clean.values()):
        return None, "bad_collected_QA"
    return Triplet(**clean), ""


@dataclass
class FormatArgs:
    data_path: str = field(metadata={"help": "filtered_task_pairs.jsonl written by `adamllm filter` (or any file of records with the stage-2 fields)."})
    image_folder: str = field(metadata={"help": "Folder the records' image paths are relative to."})
    output: str = field(metadata={"help": "The post-training JSON file to write, e.g. OUT/image_caption_and_synthetic_task.json."})
    train_on_syn_only: bool = field(default=False, metadata={"help": "Keep only records with a kept synthetic task, without their caption task."})
    style: str = field(default="llamafactory", metadata={"help": "llamafactory: ShareGPT messages + images (paths relative to the output file); llava: LLaVA conversations (paths relative to the image folder).", "choices": list(STYLES)})
    seed: int = field(default=42, metadata={"help": "Seed of the per-record template choice and caption placement."})

    def __post_init__(self):
        errors = []
        if not Path(self.data_path).is_file():
            errors.append(f"--data_path {self.data_path}: no such file")
        if not Path(self.image_folder).is_dir():
            errors.append(f"--image_folder {self.image_folder}: no such folder")
        if self.style not in STYLES:
            errors.append(f"--style {self.style}: choose llamafactory or llava")
        if errors:
            raise ValueError("; ".join(errors))


@dataclass
class FormatSummary:
    records_in: int = 0
    records_out: int = 0
    rejected: dict = field(default_factory=dict)
    synthetic_tasks: int = 0
    answer_kinds: dict = field(default_factory=dict)
    no_synthetic_task: dict = field(default_factory=dict)  # records without a kept task, by reason
    caption_task_first: int = 0
    special_tokens_stripped: int = 0
    output: str = ""
    rejects_file: str = ""


def record_syn_id(record: dict, index: int, seen: set[int]) -> int:
    """The record's syn_id (its index in a file without them); RecordError when unusable or repeated."""
    syn_id = record.get(SYN_ID, index)
    if not isinstance(syn_id, int) or isinstance(syn_id, bool) or syn_id < 0:
        raise RecordError("bad_schema", f"syn_id {syn_id!r} is not a record number (an integer >= 0)")
    if syn_id in seen:
        raise RecordError("duplicate_syn_id", f"syn_id {syn_id} was already formatted from an earlier record; this repeat is left out")
    seen.add(syn_id)
    return syn_id


def build_record(record: dict, index: int, args: FormatArgs, out_dir: Path, summary: FormatSummary, seen: set[int]) -> dict | None:
    """One post-training record, or None when the record has nothing to train on (syn-only mode)."""
    pair = parse_caption_pair(record)
    check_image(resolve_image_path(args.image_folder, pair.image))
    syn_id = record_syn_id(record, index, seen)
    summary.special_tokens_stripped += pair.stripped_special_tokens
    rng = record_rng(args.seed, syn_id)

    triplet, missing = kept_triplet(record)
    tasks = []
    if triplet is not None:
        user, assistant, kind = synthetic_task(triplet, rng)
        tasks.append((user, assistant))
        summary.synthetic_tasks += 1
        summary.answer_kinds[kind] = summary.answer_kinds.get(kind, 0) + 1
    else:
        summary.no_synthetic_task[missing] = summary.no_synthetic_task.get(missing, 0) + 1
        if args.train_on_syn_only:
            raise RecordError(missing, "no kept synthetic task, and --train_on_syn_only drops the caption task")
    if not args.train_on_syn_only:
        caption_task = (pair.instruction or CAPTION_HINT, pair.caption)
        if rng.random() < 0.5:
            tasks.insert(0, caption_task)
            summary.caption_task_first += 1
        else:
            tasks.append(caption_task)

    messages = []
    for i, (user, assistant) in enumerate(tasks):
        messages += [user_message(user, with_image=i == 0), assistant_message(assistant)]
    if args.style == "llava":
        return llava_record(str(syn_id), messages, pair.image)
    image = os.path.relpath(Path(args.image_folder).absolute() / pair.image, out_dir.absolute())
    return sharegpt_record(messages, image)


def run_format(args: FormatArgs) -> FormatSummary:
    """Write the post-training file, its rejects, its summary and its `dataset_info.json` entry."""
    output = Path(args.output)
    out_dir = output.parent
    stem = run_folder.stem(output.name)
    rejects = Rejects(run_folder.rejects_path(output))
    summary = FormatSummary(output=str(output))
    seen: set[int] = set()  # syn_ids formatted so far: a few bytes each, even for millions of records

    def records():
        for index, record in enumerate(tqdm(iter_input_records(args.data_path), desc="format", unit="rec")):
            summary.records_in += 1
            try:
                built = build_record(record, index, args, out_dir, summary, seen)
            except RecordError as e:
                rejects.add(e.reason, e.detail, record, index=index)
                continue
            yield built

    try:
        summary.records_out = write_json_list(output, records())
    finally:
        rejects.close()
    summary.rejected = dict(rejects.counts)
    summary.rejects_file = str(rejects.path) if rejects.total else ""
    update_dataset_info(out_dir, stem, dataset_info_entry(output.name, args.style))
    write_json(run_folder.summary_path(output), asdict(summary))
    log.info(
        "format: %d records in, %d written (%d with a synthetic task), %d rejected %s",
        summary.records_in, summary.records_out, summary.synthetic_tasks, rejects.total, summary.rejected,
    )
    return summary
