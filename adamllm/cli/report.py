"""adamllm report: one self-contained HTML page showing a stage-2 run, record by record."""

import argparse

from adamllm.results.report_summary import CARDS_PER_GROUP


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "report",
        help="write OUTPUT_DIR/report.html: summary and the whole path of each record",
        description=__doc__,
        epilog="example:\n  adamllm report exp/demo/stage2   # then open exp/demo/stage2/report.html in a browser\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("output_dir", help="A stage-2 output folder (written by adamllm run / run_synthesis.sh).")
    parser.add_argument(
        "--image_folder",
        "--image-folder",
        default="",
        help="Image folder; only images inside it are shown (default: the one synthesis ran with, from stats.json, "
        "which must match the one recorded in OUTPUT_DIR/shards).",
    )
    parser.add_argument(
        "--cards_per_group",
        "--cards-per-group",
        type=int,
        default=CARDS_PER_GROUP,
        metavar="N",
        help=f"Record cards per verdict and reason, a seeded sample of each (default: {CARDS_PER_GROUP}); the summary "
        f"counts every record.",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the sample of cards (default: 0).")
    parser.set_defaults(run=lambda ns: run(ns, parser))


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from adamllm.results.report import write_report

    try:
        path = write_report(args.output_dir, args.image_folder, args.cards_per_group, args.seed)
    except ValueError as e:
        parser.error(str(e))
    print(f"wrote {path}")
    return 0
