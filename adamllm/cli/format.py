"""adamllm format: stage 2c, kept triplets and captions into post-training data.

Beyond the paper (optional; without these flags the output is the paper's): --min_yes_prob keeps a
synthetic task only when the checker was confident enough (input from `adamllm filter --mode
logprob`), and --dedup exact|near keeps at most --max_per_question tasks per (near-)duplicate
question. A record they act on keeps its caption task; OUTPUT's .curation.jsonl lists each, with why.
"""

from adamllm.cli.args import add_dataclass_command
from adamllm.stage2.format import FormatArgs

EXAMPLE = """\
examples:
  adamllm format --data_path OUT/filtered_task_pairs.jsonl --image_folder IMAGES \\
      --output OUT/image_caption_and_synthetic_task.json

  # beyond the paper: one task per near-duplicate question, and only confident "yes" verdicts
  adamllm format --data_path OUT/filtered_task_pairs.jsonl --image_folder IMAGES \\
      --output OUT/image_caption_and_synthetic_task.json --dedup near --min_yes_prob 0.9

Writes OUTPUT, a dataset_info.json entry beside it (LLaMA-Factory trains on the file as it is),
OUTPUT's .summary.json, when a record cannot be used .rejects.jsonl with the reason, and with
--dedup / --min_yes_prob, when they remove a task, .curation.jsonl. When OUTPUT is a run folder's
image_caption_and_synthetic_task.json, the format entry of that folder's stats.json is updated too
(so `adamllm report` and `adamllm export` show this run).
"""


def add_parser(sub) -> None:
    add_dataclass_command(
        sub,
        "format",
        FormatArgs,
        run,
        help="stage 2c: write single-stage post-training data (LLaMA-Factory or LLaVA JSON)",
        description=__doc__,
        epilog=EXAMPLE,
    )


def run(args: FormatArgs) -> int:
    from adamllm.stage2.format import run_format

    s = run_format(args)
    print(
        f"wrote {s.records_out} records ({s.synthetic_tasks} with a synthetic task) to {s.output}; "
        f"{sum(s.rejected.values())} rejected {s.rejected or ''}".rstrip()
    )
    c = s.curation
    if "dedup" in c:
        print(
            f"--dedup {c['dedup']}: {c['questions_seen']} questions seen, {c['questions_distinct']} distinct, "
            f"{c['dropped_duplicate']} dropped as duplicates (their caption tasks stay)"
        )
    if "min_yes_prob" in c:
        print(
            f"--min_yes_prob {c['min_yes_prob']}: {c['yes_prob_checked']} tasks checked, {c['dropped_low_yes_prob']} "
            f"below it, "
            f"{c['no_yes_prob']} without usable log-probabilities"
        )
    if c.get("file"):
        print(f"tasks removed by curation, with why: {c['file']}")
    return 0
