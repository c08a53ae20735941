"""adamllm merge-seed: stage 1a, the seed data merged into synthesizer training records."""

from adamllm.cli.args import add_dataclass_command
from adamllm.stage1.merge_seed import MergeSeedArgs

EXAMPLE = """\
example:
  adamllm merge-seed --caption_path ALLaVA-Caption-VFLAN-4V.json \\
      --precise_qa_path vflan_metadata.json --informative_qa_path ALLaVA-Instruct-VFLAN-4V.json \\
      --blank_image_path exp/blank.png --replace_with_blank_image_percent 10 \\
      --split train --output exp/seed_train.json

Writes OUTPUT (a JSON list of {image, task_name, conversations}), OUTPUT's .summary.json (counts:
images seen, joined, dropped by reason, per task) and .rejects.jsonl (every record or image not used).
"""


def add_parser(sub) -> None:
    add_dataclass_command(
        sub,
        "merge-seed",
        MergeSeedArgs,
        run,
        help="stage 1a: merge Vision-Flan + ALLaVA seed data into training records",
        description=__doc__,
        epilog=EXAMPLE,
    )


def run(args: MergeSeedArgs) -> int:
    from adamllm.stage1.merge_seed import run_merge_seed

    summary = run_merge_seed(args)
    print(
        f"wrote {summary['records_written']} {args.split} records to {summary['output']} "
        f"({summary['blank_images']} with the blank image); {summary['images_seen']} images seen, "
        f"{summary['images_joined']} joined, dropped {summary['images_dropped'] or 'none'}"
    )
    return 0
