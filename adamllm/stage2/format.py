"""Stage 2c: turn filtered triplets into single-stage post-training data.

    adamllm format --data_path OUT/filtered_task_pairs.jsonl --image_folder IMAGES \
        --output OUT/image_caption_and_synthetic_task.json

Each record becomes one conversation holding the image's caption task and, when its triplet passed
the consistency filter, the synthetic task; a seeded coin per record puts the caption task first or
last. Seeds are per record (the run seed and the record's `syn_id`), so the output does not depend
on how the input was sharded or ordered.

Beyond the paper, two optional filters remove kept synthetic tasks (`adamllm.stage2.curate`): `--min_yes_prob`
(the checker's confidence, from `--mode logprob`), then `--dedup exact|near` (duplicate questions,
which takes a first pass over the input to choose the kept ones). A record they act on keeps its
caption task; each such record is listed, with why, in OUTPUT's `.curation.jsonl`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from adamllm.core import run_folder
from adamllm.core.files import clean_stale_tmp, file_sha256, hold_lock, replaced_together, tmp_pattern
from adamllm.core.formats import (
    STYLES,
    assistant_message,
    dataset_info_entry,
    llava_record,
    read_dataset_info,
    sharegpt_record,
    update_dataset_info,
    user_message,
)
from adamllm.core.images import check_image, check_image_unchanged, resolve_image_path
from adamllm.core.jsonfiles import iter_input_records, iter_json_records, write_json, write_json_list
from adamllm.core.parse import Triplet
from adamllm.core.prompts import CAPTION_HINT, COT_TEMPLATES, INDICATORS, QA_TEMPLATES, fill_task, strip_special_tokens
from adamllm.core.records import (
    COLLECTED_QA,
    CONSISTENCY,
    LOGPROBS,
    PRED,
    SYN_ID,
    CaptionPair,
    RecordError,
    Rejects,
    parse_caption_pair,
    syn_id_problem,
)
from adamllm.core.stats import check_made_from, file_record, update_stats
from adamllm.stage2.curate import (
    DUPLICATE_QUESTION,
    LOW_YES_PROB,
    NO_YES_PROB,
    CurationArgs,
    check_curation_input,
    curation_summary,
    log_curation,
    yes_prob,
)
from adamllm.stage2.dedup import Deduper

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
    if not isinstance(qa, dict) or not all(
        isinstance(qa.get(k), str) and qa[k].strip() for k in ("Q", "precise_A", "informative_A")
    ):
        return None, "bad_collected_QA"
    verdict = record.get(CONSISTENCY)
    if verdict != "yes":
        return None, f"consistency_{verdict if verdict and isinstance(verdict, str) else 'missing'}"
    clean = {k: strip_special_tokens(qa[k])[0].strip() for k in ("Q", "precise_A", "informative_A")}
    if not all(clean.values()):
        return None, "bad_collected_QA"
    return Triplet(**clean), ""


@dataclass(kw_only=True)
class FormatArgs(CurationArgs):
    data_path: str = field(
        metadata={
            "help": "filtered_task_pairs.jsonl written by `adamllm filter` (or any file of records with the stage-2 "
            "fields)."
        }
    )
    image_folder: str = field(metadata={"help": "Folder the records' image paths are relative to."})
    output: str = field(
        metadata={"help": "The post-training JSON file to write, e.g. OUT/image_caption_and_synthetic_task.json."}
    )
    train_on_syn_only: bool = field(
        default=False, metadata={"help": "Keep only records with a kept synthetic task, without their caption task."}
    )
    style: str = field(
        default="llamafactory",
        metadata={
            "help": "llamafactory: ShareGPT messages + images (paths relative to the output file); llava: LLaVA "
            "conversations (paths relative to the image folder).",
            "choices": list(STYLES),
        },
    )
    seed: int = field(
        default=42,
        metadata={
            "help": "Seed of the per-record template choice and caption placement, and of which duplicates keep their "
            "task (--dedup)."
        },
    )

    def __post_init__(self):
        errors = []
        if not Path(self.data_path).is_file():
            errors.append(f"--data_path {self.data_path}: no such file")
        if not Path(self.image_folder).is_dir():
            errors.append(f"--image_folder {self.image_folder}: no such folder")
        if self.style not in STYLES:
            errors.append(f"--style {self.style}: choose llamafactory or llava")
        errors += self.curation_errors()
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
    extra_turns_dropped: int = 0  # message turns after the caption: the output holds the caption task only
    output: str = ""
    rejects_file: str = ""
    curation: dict = field(default_factory=dict)  # --dedup / --min_yes_prob counts (empty without them)
    provenance: dict = field(default_factory=dict)  # path, size, sha256 of the input read and the output written


def record_syn_id(record: dict, index: int, seen: set[int]) -> int:
    """The record's syn_id (its index in a file without them); RecordError when unusable or repeated."""
    syn_id = record.get(SYN_ID, index)
    if problem := syn_id_problem(syn_id):
        raise RecordError("bad_schema", problem)
    if syn_id in seen:
        raise RecordError(
            "duplicate_syn_id", f"syn_id {syn_id} was already formatted from an earlier record; this repeat is left out"
        )
    seen.add(syn_id)
    return syn_id


@dataclass
class Examined:
    """A usable record as format sees it, before duplicate questions are looked at."""

    pair: CaptionPair
    syn_id: int
    triplet: Triplet | None  # the task to add, None without one
    missing: str  # why there is none ("" with one)
    question: str = ""  # the kept triplet's question, also when --min_yes_prob removed its task
    detail: str = ""  # for a task curation removed: why
    yes_prob: float | None = None  # with --min_yes_prob


def examine(record, index: int, args: FormatArgs, seen: set[int]) -> Examined:
    """Check a record and find its kept task (after --min_yes_prob); RecordError when it is unusable.

    Both passes of `--dedup` call this, so they agree on every record."""
    pair = parse_caption_pair(record)
    image = resolve_image_path(args.image_folder, pair.image)
    check_image(image)
    check_image_unchanged(record, image)
    syn_id = record_syn_id(record, index, seen)
    triplet, missing = kept_triplet(record)
    found = Examined(pair, syn_id, triplet, missing, question=triplet.Q if triplet is not None else "")
    if triplet is not None and args.min_yes_prob > 0:
        found.yes_prob = yes_prob(record.get(LOGPROBS))
        if found.yes_prob is None:
            found.triplet, found.missing = None, NO_YES_PROB
            found.detail = (
                f"no usable {LOGPROBS} (the Yes / No / Open log-probabilities) to check --min_yes_prob against"
            )
        elif found.yes_prob < args.min_yes_prob - 1e-9:  # float noise of the softmax is not below the threshold
            found.triplet, found.missing = None, LOW_YES_PROB
            found.detail = f"P(yes) = {found.yes_prob:.4f}, below --min_yes_prob {args.min_yes_prob}"
    return found


def build_record(
    record: dict,
    index: int,
    args: FormatArgs,
    out_dir: Path,
    summary: FormatSummary,
    seen: set[int],
    deduper: Deduper | None = None,
    curation: Rejects | None = None,
) -> dict | None:
    """One post-training record, or None when the record has nothing to train on (syn-only mode)."""
    found = examine(record, index, args, seen)
    pair, syn_id = found.pair, found.syn_id
    summary.special_tokens_stripped += pair.stripped_special_tokens
    summary.extra_turns_dropped += pair.extra_turns
    rng = record_rng(args.seed, syn_id)

    triplet, missing = found.triplet, found.missing
    if curation is not None:
        if missing in (LOW_YES_PROB, NO_YES_PROB):
            log_curation(curation, index, syn_id, missing, found.detail, found.question, found.yes_prob, None)
        elif triplet is not None and deduper is not None and (kept_by := deduper.decide(syn_id, triplet.Q)) is not None:
            found.detail = (
                f"the question duplicates that of syn_id {kept_by}, whose task is kept (--dedup "
                f"{args.dedup}, --max_per_question {args.max_per_question})"
            )
            log_curation(curation, index, syn_id, DUPLICATE_QUESTION, found.detail, triplet.Q, found.yes_prob, kept_by)
            triplet, missing = None, DUPLICATE_QUESTION
    tasks = []
    if triplet is not None:
        user, assistant, kind = synthetic_task(triplet, rng)
        tasks.append((user, assistant))
        summary.synthetic_tasks += 1
        summary.answer_kinds[kind] = summary.answer_kinds.get(kind, 0) + 1
    else:
        summary.no_synthetic_task[missing] = summary.no_synthetic_task.get(missing, 0) + 1
        if args.train_on_syn_only:
            why = f"{found.detail}; " if found.detail else ""
            raise RecordError(missing, f"{why}no kept synthetic task, and --train_on_syn_only drops the caption task")
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


def scan_questions(args: FormatArgs) -> Deduper:
    """Pass 1 of --dedup: every kept task's question, then the seeded choice of which keep their task."""
    deduper = Deduper(args.dedup, args.max_per_question, args.seed, args.near_threshold, args.near_ngram)
    seen: set[int] = set()
    try:
        for index, record in enumerate(tqdm(iter_json_records(args.data_path), desc="format: questions", unit="rec")):
            try:
                found = examine(record, index, args, seen)
            except RecordError:
                continue  # pass 2 rejects it, with its reason
            if found.triplet is not None:
                deduper.add(found.syn_id, found.triplet.Q)
        deduper.finish()
    except BaseException:
        deduper.close()
        raise
    return deduper


def run_format(args: FormatArgs) -> FormatSummary:
    """Write the post-training file, its rejects, its summary and its `dataset_info.json` entry, and
    when the output is a run folder's final file, the format entry of that folder's stats.json (as
    synthesize and filter write theirs); one run at a time per output (a second is refused, naming
    the first)."""
    start = time.monotonic()
    with hold_lock(run_folder.output_lock_path(args.output), args.output):
        summary = _format(args)
        write_stats_entry(args, summary, time.monotonic() - start)
    return summary


def write_stats_entry(args: FormatArgs, summary: FormatSummary, wall_s: float) -> None:
    """The format entry of the run folder's stats.json, when OUTPUT is that folder's final file (so
    `adamllm report` and `adamllm export` show this run). A hand-damaged stats.json is warned about,
    not raised: the output is written by then."""
    output = Path(args.output)
    stats_path = output.parent / run_folder.STATS_FILE
    if output.name != run_folder.FINAL_FILE or not stats_path.is_file():
        return
    try:
        update_stats(output.parent, "format", {**asdict(summary), "wall_s": wall_s}, args)
    except ValueError as e:
        # On stderr, not the log: the user must see it even when logging is quiet.
        print(f"adamllm format: warning: {stats_path} not updated (the output is written): {e}", file=sys.stderr)


def _format(args: FormatArgs) -> FormatSummary:
    output = Path(args.output)
    out_dir = output.parent
    stem = run_folder.stem(output.name)
    # Every file format writes: replaced together at the end, so that an interrupt or a failure
    # leaves the last run's files as they were, never this output beside that run's summary.
    files = (
        output,
        run_folder.summary_path(output),
        out_dir / run_folder.DATASET_INFO_FILE,
        run_folder.rejects_path(output),
        run_folder.curation_path(output),
    )
    clean_stale_tmp(out_dir, tuple(tmp_pattern(f) for f in files))  # what a killed run of this command left
    read_dataset_info(files[2])  # a damaged one is named before any work
    source = file_record(args.data_path, file_sha256(args.data_path))
    check_made_from(args.data_path, source["sha256"], "format")
    check_curation_input(args, args.data_path)
    deduper = scan_questions(args) if args.dedup != "none" else None
    curating = deduper is not None or args.min_yes_prob > 0
    summary = FormatSummary(output=str(output))
    seen: set[int] = set()  # syn_ids formatted so far: a few bytes each, even for millions of records

    with replaced_together(*files) as (tmp_output, tmp_summary, tmp_info, tmp_rejects, tmp_curation):
        rejects, curation = Rejects(tmp_rejects), Rejects(tmp_curation)  # opened lazily: none without a record

        def records():
            for index, record in enumerate(tqdm(iter_input_records(args.data_path), desc="format", unit="rec")):
                summary.records_in += 1
                try:
                    built = build_record(
                        record, index, args, out_dir, summary, seen, deduper, curation if curating else None
                    )
                except RecordError as e:
                    rejects.add(e.reason, e.detail, record, index=index)
                    continue
                yield built

        digest = hashlib.sha256()
        try:
            summary.records_out = write_json_list(tmp_output, records(), digest)
        finally:
            rejects.close()
            curation.close()
            if deduper is not None:
                deduper.close()
        summary.rejected = dict(rejects.counts)
        summary.rejects_file = str(files[3]) if rejects.total else ""
        summary.curation = curation_summary(args, args.seed, args.output, deduper, summary.synthetic_tasks, curation)
        summary.provenance = {"input": source, "output": file_record(tmp_output, digest.hexdigest(), output)}
        update_dataset_info(out_dir, stem, dataset_info_entry(output.name, args.style), into=tmp_info)
        write_json(tmp_summary, asdict(summary))
    log.info(
        "format: %d records in, %d written (%d with a synthetic task), %d rejected %s%s",
        summary.records_in,
        summary.records_out,
        summary.synthetic_tasks,
        rejects.total,
        summary.rejected,
        f"; curation {dict(curation.counts)}" if curating else "",
    )
    return summary
