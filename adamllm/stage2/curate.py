"""Curation beyond the paper: duplicate questions and verdict confidence (`adamllm format --dedup`,
`--min_yes_prob`): the flags, the reasons a task is removed, and the lines and summary they write.

The paper keeps every triplet the checker says "Yes" to. Two optional filters act on those kept
triplets; a record whose synthetic task they remove keeps its caption task (it is not a reject):

- duplicate questions: the same question asked of many images keeps at most `max_per_question`
  of them, a seeded choice (`adamllm.stage2.dedup`).
- verdict confidence: the checker's probability of "Yes", the softmax over the Yes / No / Open
  log-probabilities that `adamllm filter --mode logprob` records, must reach a threshold.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from typing import Any

from adamllm.core import run_folder
from adamllm.core.jsonfiles import iter_json_records
from adamllm.core.records import CONSISTENCY, LOGPROBS, Rejects
from adamllm.stage2.dedup import DEFAULT_NEAR_THRESHOLD, NUM_PERM, Deduper

DEDUP_MODES = ("none", "exact", "near")

# Why a record's synthetic task was removed by curation (counted beside the paper's reasons).
DUPLICATE_QUESTION = "duplicate_question"
LOW_YES_PROB = "low_yes_prob"
NO_YES_PROB = "no_yes_prob"  # --min_yes_prob, but this record's log-probabilities are missing or unusable
VERDICT_WORDS = ("yes", "no", "open")


@dataclass
class CurationArgs:
    """Beyond the paper: which kept synthetic tasks `adamllm format` (and `adamllm run`) removes."""

    dedup: str = field(
        default="none",
        metadata={
            "help": (
                "Beyond the paper: remove duplicate synthetic questions. none: keep every kept triplet (the paper); "
                "exact: questions equal once case, whitespace and punctuation are ignored; near: near-duplicates, "
                f"found by MinHash LSH (datasketch, {NUM_PERM} permutations) over the questions' word shingles and "
                "confirmed by the Jaccard similarity of the shingle sets (>= --near_threshold). Each group of "
                "duplicates keeps --max_per_question tasks, a seeded choice (--seed, by syn_id: reruns and shardings "
                "agree); the others lose their synthetic task (the caption task stays), counted as duplicate_question "
                "and listed in OUTPUT's .curation.jsonl. "
                "Takes a first pass over the input; memory grows with the questions kept, not the input."
            ),
            "choices": list(DEDUP_MODES),
        },
    )
    max_per_question: int = field(
        default=1,
        metadata={
            "help": "With --dedup: how many records may keep a task asking the same (exact) or a near-duplicate (near) "
            "question."
        },
    )
    near_threshold: float = field(
        default=DEFAULT_NEAR_THRESHOLD,
        metadata={
            "help": (
                "With --dedup near: the Jaccard similarity of two questions' word shingles at or above which they are "
                "near-duplicates, 0 < T <= 1 (at 0.8 and --near_ngram 1, 'what is the main subject of this image' and "
                "'what is the main subject of the image' are: 7 of 8 words shared)."
            )
        },
    )
    near_ngram: int = field(
        default=1,
        metadata={
            "help": "With --dedup near: words per shingle. 1: a question's set of words; 2 or more: its contiguous "
            "word n-grams (word order counts; stricter on short questions)."
        },
    )
    min_yes_prob: float = field(
        default=0.0,
        metadata={
            "help": (
                "Beyond the paper: keep a synthetic task only when the checker's probability of Yes is at least this, "
                "that is the softmax over the Yes / No / Open log-probabilities `adamllm filter --mode logprob` "
                "records (a word not among the checker's top-20 first tokens counts as 0). 0 turns it off. A yes "
                "verdict already has the largest of the three, so a value <= 1/3 removes nothing. The input must come "
                "from --mode logprob. Tasks removed are counted as low_yes_prob (no_yes_prob for a record whose "
                "log-probabilities are missing) and listed in OUTPUT's .curation.jsonl."
            )
        },
    )

    def curation_errors(self) -> list[str]:
        errors = []
        if self.dedup not in DEDUP_MODES:
            errors.append(f"--dedup {self.dedup}: choose none, exact or near")
        if not isinstance(self.max_per_question, int) or self.max_per_question < 1:
            errors.append(f"--max_per_question {self.max_per_question}: give a whole number >= 1")
        elif self.max_per_question != 1 and self.dedup == "none":
            errors.append(f"--max_per_question {self.max_per_question} acts only with --dedup exact or --dedup near")
        if not (0 < self.near_threshold <= 1):  # NaN fails too
            errors.append(f"--near_threshold {self.near_threshold}: give a Jaccard similarity in (0, 1]")
        elif self.near_threshold != DEFAULT_NEAR_THRESHOLD and self.dedup != "near":
            errors.append(f"--near_threshold {self.near_threshold} acts only with --dedup near")
        if not isinstance(self.near_ngram, int) or self.near_ngram < 1:
            errors.append(f"--near_ngram {self.near_ngram}: give a whole number of words >= 1")
        elif self.near_ngram != 1 and self.dedup != "near":
            errors.append(f"--near_ngram {self.near_ngram} acts only with --dedup near")
        if not (
            isinstance(self.min_yes_prob, (int, float))
            and math.isfinite(self.min_yes_prob)
            and 0 <= self.min_yes_prob <= 1
        ):
            errors.append(
                f"--min_yes_prob {self.min_yes_prob}: give a probability between 0 and 1 (0 turns the check off)"
            )
        if self.dedup == "near" and importlib.util.find_spec("datasketch") is None:
            errors.append(
                "--dedup near needs the datasketch package: pip install 'adamllm[curate]' (or use --dedup exact)"
            )
        return errors


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def yes_prob(logprobs: Any) -> float | None:
    """P(Yes): the softmax of the recorded Yes / No / Open log-probabilities, or None when `logprobs`
    is not a usable record of them (absent, not an object, a value that is not a log-probability).

    A word missing from the record was not among the checker's top-20 first tokens: its probability
    counts as 0 (so a record with none of the three, verdict "invalid", has P(Yes) = 0).
    """
    if not isinstance(logprobs, dict):
        return None
    found = {}
    for word in VERDICT_WORDS:
        if word in logprobs:
            value = logprobs[word]
            try:
                value = float(value) if _number(value) else math.nan
            except OverflowError:  # a hand-edited integer too large for a float
                value = -math.inf if value < 0 else math.nan
            if math.isnan(value) or value > 1e-6:
                return None
            found[word] = value
    if "yes" not in found or found["yes"] == -math.inf:
        return 0.0
    top = max(found.values())
    total = sum(math.exp(v - top) for v in found.values())
    return math.exp(found["yes"] - top) / total


def lacks_logprob_verdicts(records) -> bool:
    """Whether records hold verdicts but none of them `consistency_logprobs` (those come only from
    `adamllm filter --mode logprob`); stops at the first record that has them. A run with no verdict
    at all (no triplet was written) lacks nothing: there is no task to filter."""
    verdicts = False
    for r in records:
        if isinstance(r, dict):
            if isinstance(r.get(LOGPROBS), dict):
                return False
            verdicts = verdicts or r.get(CONSISTENCY) is not None
    return verdicts


def log_curation(
    curation: Rejects,
    index: int,
    syn_id: int,
    reason: str,
    detail: str,
    question: str,
    yes_prob: float | None,
    duplicate_of: int | None,
) -> None:
    """A line of OUTPUT's .curation.jsonl: a record whose synthetic task curation removed (the record
    itself is in the output, with its caption task), written as it comes, in input order."""
    curation.add(
        reason,
        detail,
        index=index,
        syn_id=syn_id,
        Q=question,
        yes_prob=None if yes_prob is None else round(yes_prob, 6),
        duplicate_of=duplicate_of,
    )


def check_curation_input(args: CurationArgs, data_path: str) -> None:
    """Input-level checks of the curation flags, before anything is written (ValueError)."""
    if args.min_yes_prob > 0 and lacks_logprob_verdicts(iter_json_records(data_path)):
        raise ValueError(
            f"--min_yes_prob {args.min_yes_prob}: {data_path} holds verdicts but no logprob verdicts (no record "
            f"has {LOGPROBS}); "
            "filter with `adamllm filter --mode logprob` (or `adamllm run --mode logprob`) first, or leave out "
            "--min_yes_prob"
        )


def curation_summary(
    args: CurationArgs, seed: int, output: str, deduper: Deduper | None, synthetic_tasks: int, curation: Rejects
) -> dict:
    """The curation entry of format's summary: the settings in force and what each filter removed."""
    out: dict = {}
    if deduper is not None:
        out.update(dedup=args.dedup, max_per_question=args.max_per_question, seed=seed)
        if args.dedup == "near":
            out.update(near_threshold=args.near_threshold, near_ngram=args.near_ngram, num_perm=NUM_PERM)
        out.update(
            questions_seen=deduper.seen,
            questions_distinct=deduper.distinct,
            dropped_duplicate=curation.counts[DUPLICATE_QUESTION],
        )
    if args.min_yes_prob > 0:
        dropped = curation.counts[LOW_YES_PROB]
        missing = curation.counts[NO_YES_PROB]
        out.update(
            min_yes_prob=args.min_yes_prob,
            yes_prob_checked=synthetic_tasks + curation.counts[DUPLICATE_QUESTION] + dropped,
            dropped_low_yes_prob=dropped,
            no_yes_prob=missing,
        )
    if out:
        out["file"] = str(run_folder.curation_path(output)) if sum(curation.counts.values()) else ""
    return out
