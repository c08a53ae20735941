"""Stage 2b: a text LLM keeps only triplets whose precise answer follows from the informative one.

    adamllm filter --model meta-llama/Meta-Llama-3-8B --data_path OUT/syn_task_triplets.jsonl --output_dir OUT

Writes OUT/filtered_task_pairs.jsonl: every record with `collected_QA` (the triplet collected from
`pred`, or null) and `consistency` ("yes" | "no" | "open" | "invalid", or null without a triplet).
`--mode generate` is the paper's (2 tokens, greedy, first word); `--mode logprob` takes one step and
picks the likeliest of Yes / No / Open among the top-20 first tokens, recording their log-probabilities.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from adamllm.core import run_folder
from adamllm.core.jsonfiles import iter_input_records, read_jsonl
from adamllm.core.parse import collect_triplet, parse_verdict
from adamllm.core.prompts import check_filter_template, default_filter_template, filter_prompt
from adamllm.core.records import (
    COLLECTED_QA,
    CONSISTENCY,
    ERROR,
    LOGPROBS,
    PRED,
    SYN_ID,
    RecordError,
    Rejects,
    check_json_values,
    error_reason,
    syn_id_problem,
)
from adamllm.core.stats import PROVENANCE, check_made_from, provenance, update_stats
from adamllm.core.tokens import count_tokens
from adamllm.engines import EngineArgs, Generation, GenParams, Request, build_engine, check_engine_args
from adamllm.executors import ExecutorArgs, check_executor_args, run_stage
from adamllm.executors.resume import stage_fingerprint
from adamllm.models.backbones import split_pairs

log = logging.getLogger(__name__)

OUTPUT_FILE = run_folder.FILTERED_FILE
MODES = ("generate", "logprob")
# The verdict words as the checker writes them after "## Consistent:".
CANDIDATES = {"yes": " Yes", "no": " No", "open": " Open"}


@dataclass
class FilterArgs(EngineArgs, ExecutorArgs):
    data_path: str = field(
        default="", metadata={"help": "syn_task_triplets.jsonl written by `adamllm synthesize`.", "required": True}
    )
    output_dir: str = field(
        default="",
        metadata={"help": "Where filtered_task_pairs.jsonl, its shards and stats.json go.", "required": True},
    )
    mode: str = field(
        default="generate",
        metadata={
            "help": "generate: the paper's 2 greedy tokens, first word; logprob: one step, likeliest of Yes/No/Open.",
            "choices": list(MODES),
        },
    )
    prompt_file: str = field(
        default="",
        metadata={"help": "Your own filter prompt: a text file holding {Q}, {informative_A} and {precise_A}."},
    )

    def __post_init__(self):
        errors = check_engine_args(self, "checker") + check_executor_args(self)
        for name in ("data_path", "output_dir"):
            if not getattr(self, name):
                errors.append(f"--{name} is required")
        if self.data_path and not Path(self.data_path).is_file():
            errors.append(f"--data_path {self.data_path}: no such file")
        if self.mode not in MODES:
            errors.append(f"--mode {self.mode}: choose generate or logprob")
        if self.prompt_file and (problem := check_prompt_file(self.prompt_file)):
            errors.append(problem)
        if errors:
            raise ValueError("; ".join(errors))

    def template(self) -> str:
        return Path(self.prompt_file).read_text(encoding="utf-8") if self.prompt_file else default_filter_template()


def check_prompt_file(path: str) -> str:
    """ "" when `path` is a usable filter prompt file, else what is wrong with it."""
    if not Path(path).is_file():
        return f"--prompt_file {path}: no such file"
    try:
        check_filter_template(Path(path).read_text(encoding="utf-8"))
    except (ValueError, OSError) as e:  # a UnicodeDecodeError is a ValueError
        return f"--prompt_file {path}: {e}"
    return ""


def collect(record: dict) -> dict:
    """The record with its triplet collected from `pred` (null when there is none)."""
    try:
        check_json_values(record)
    except RecordError as e:
        return {**record, COLLECTED_QA: None, CONSISTENCY: None, ERROR: {"reason": e.reason, "detail": e.detail}}
    pred = record.get(PRED)
    triplet = collect_triplet(split_pairs(pred)) if isinstance(pred, str) else None
    out = {**record, COLLECTED_QA: triplet.to_dict() if triplet else None, CONSISTENCY: None}
    if isinstance(pred, str) and triplet is None:
        out[ERROR] = {
            "reason": "no_triplet",
            "detail": "no question was written with both the precise and the informative hint",
        }
    return out


def candidate_ids(tokenizer) -> dict[str, int]:
    """First token of each verdict word; they must differ, or logprob mode cannot tell them apart."""
    ids = {name: tokenizer(text, add_special_tokens=False).input_ids[0] for name, text in CANDIDATES.items()}
    if len(set(ids.values())) < len(ids):
        raise RuntimeError(
            f"the checker's tokenizer starts {CANDIDATES} with the same token {ids}: use --mode generate"
        )
    return ids


class FilterStage:
    """Stage 2b as a model stage (adamllm.executors.stage.Stage): a triplet in, the checker's verdict out."""

    name = "filter"
    output_file = OUTPUT_FILE

    def __init__(self, args: FilterArgs):
        self.args = args
        self.template = args.template()
        self.pending: dict[int, dict] = {}  # collected records waiting for their verdict
        self.tokenizer = None  # the checker's, once loaded: prompts longer than the engine takes are rejected
        self.room = 0  # prompt tokens the engine takes: --max_model_len less the verdict's tokens
        self._fingerprint: dict | None = None

    def records(self):
        last = -1
        for index, record in enumerate(iter_input_records(self.args.data_path)):
            syn_id = record.get(SYN_ID) if isinstance(record, dict) else None
            if syn_id_problem(syn_id) or syn_id <= last:
                raise ValueError(
                    f"{self.args.data_path}: record {index} has syn_id {syn_id!r}; the filter's input needs an integer "
                    "syn_id (0 to 2**63 - 1) per record, each once, in increasing order (as `adamllm synthesize` "
                    "writes them)"
                )
            last = syn_id
            yield syn_id, record

    def fingerprint(self) -> dict:
        if self._fingerprint is None:  # the input is hashed once: stats.json records it too
            self._fingerprint = stage_fingerprint(
                self.args, prompt_sha256=hashlib.sha256(self.template.encode()).hexdigest()
            )
        return self._fingerprint

    def load(self):
        # A run whose records hold no triplet at all (a failed synthesis) never pays for loading the
        # checker; the scan stops at the first triplet, so it costs nothing otherwise.
        if not any(
            isinstance(r, dict) and collect(r)[COLLECTED_QA] is not None for r in read_jsonl(self.args.data_path)
        ):
            return None, None
        engine = build_engine(self.args, multimodal=False)
        self.tokenizer = engine.tokenizer
        eos = [engine.tokenizer.eos_token_id]
        if self.args.mode == "logprob":
            params = GenParams(max_tokens=1, stop_token_ids=eos, candidates=candidate_ids(engine.tokenizer))
        else:
            params = GenParams(max_tokens=2, stop_token_ids=eos)
        self.room = self.args.max_model_len - params.max_tokens
        return engine, params

    def prepare(self, syn_id: int, record) -> Request:
        out = collect(record)
        qa = out[COLLECTED_QA]
        if qa is None:
            raise RecordError(error_reason(out) or "no_triplet", "no triplet to judge")
        prompt = filter_prompt(qa["Q"], qa["informative_A"], qa["precise_A"], self.template)
        # The engine would refuse it and take its batch down; said here, it is this record's reason.
        # A token covers one UTF-8 byte at least, so only a prompt with more bytes than the room (+2:
        # BOS, a SentencePiece word prefix) can be too long: the others are not tokenized twice. A huge
        # one is refused from a bounded prefix.
        if (
            len(prompt.encode("utf-8", "surrogatepass")) + 2 > self.room
            and (count := count_tokens(self.tokenizer, prompt, self.room)).n > self.room
        ):
            over = "" if count.whole else f"a prompt of {len(prompt):,} characters: over "
            raise RecordError(
                "prompt_too_long",
                f"{over}{count.n} prompt tokens leave no room to answer under --max_model_len "
                f"{self.args.max_model_len}; "
                "raise --max_model_len (the release's filter allows 8192) or shorten --prompt_file",
            )
        self.pending[syn_id] = out
        return Request(prompt)

    def finish(self, syn_id: int, record, generation: Generation) -> dict:
        out = self.pending.pop(syn_id)
        if self.args.mode == "logprob":
            found = generation.candidate_logprobs
            out[CONSISTENCY] = max(found, key=found.get) if found else "invalid"
            out[LOGPROBS] = found
        else:
            out[CONSISTENCY] = parse_verdict(generation.text)
        return out

    def reject(self, syn_id: int, record, error: RecordError) -> dict:
        self.pending.pop(syn_id, None)
        out = collect(record)  # the record as collected: without a triplet, its error says why
        if ERROR not in out:  # a triplet the checker could not judge (prompt_too_long, stage_error)
            out[ERROR] = {"reason": error.reason, "detail": error.detail}
        return out

    def kept(self, output: dict) -> bool:
        return output.get(CONSISTENCY) == "yes"

    def add_costs(self, stats: dict) -> None:
        pass


def tally(output: Path, digest=None) -> dict:
    """Counts of the merged output. Records the checker could not judge (no triplet, too long) also
    go to the rejects file with their reason; judged ones stay in the output with their verdict."""
    verdicts: Counter = Counter()
    rejects = Rejects(run_folder.rejects_path(output))
    n = 0
    for record in read_jsonl(output, digest):
        n += 1
        if record[CONSISTENCY] is not None:
            verdicts[record[CONSISTENCY]] += 1
        else:
            error = record.get(ERROR) if isinstance(record.get(ERROR), dict) else {}
            rejects.add(error_reason(record) or "unknown", error.get("detail", ""), record, syn_id=record.get(SYN_ID))
    rejects.close()
    missing = rejects.counts
    kept = verdicts["yes"]
    judged = sum(verdicts.values())
    return {
        "records_in": n,
        "records_out": kept,
        "rejected": {**dict(missing), **{f"consistency_{v}": c for v, c in verdicts.items() if v != "yes"}},
        "verdicts": dict(verdicts),
        "pass_rate": round(kept / judged, 4) if judged else 0.0,
    }


def run_filter(args: FilterArgs) -> dict | None:
    """Run (or resume) the consistency filter; the stage's stats, or None while shards still run."""
    stage = FilterStage(args)
    check_made_from(args.data_path, stage.fingerprint()["sha256"], "filter")
    costs = run_stage(stage)
    if costs is None:
        return None
    out_dir = Path(args.output_dir)
    digest = hashlib.sha256()
    stats = {**tally(out_dir / OUTPUT_FILE, digest), **costs}
    stats["prompt_tokens_computed"] = stats.get("prompt_tokens", 0) - stats.get("cached_prompt_tokens", 0)
    stats[PROVENANCE] = provenance(stage.fingerprint(), out_dir / OUTPUT_FILE, digest)
    update_stats(out_dir, "filter", stats, args)
    return stats
