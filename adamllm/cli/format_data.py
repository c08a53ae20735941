"""adamllm format: stage 2c, kept triplets and captions into post-training data."""

from adamllm.cli.args import add_dataclass_command
from adamllm.posttrain import FormatArgs

EXAMPLE = """\
example:
  adamllm format --data_path OUT/filtered_task_pairs.jsonl --image_folder IMAGES \\
      --output OUT/image_caption_and_synthetic_task.json

Writes OUTPUT, a dataset_info.json entry beside it (LLaMA-Factory trains on the file as it is),
OUTPUT's .summary.json and, when a record cannot be used, .rejects.jsonl with the reason.
"""


def add_parser(sub) -> None:
    add_dataclass_command(
        sub, "format", FormatArgs, run, help="stage 2c: write single-stage post-training data (LLaMA-Factory or LLaVA JSON)", description=__doc__, epilog=EXAMPLE
    )


def run(args: FormatArgs) -> int:
    from adamllm.posttrain import run_format

    s = run_format(args)
    print(
        f"wrote {s.records_out} records ({s.synthetic_tasks} with a synthetic task) to {s.output}; "
        f"{sum(s.rejected.values())} rejected {s.rejected or ''}".rstrip()
    )
    return 0
