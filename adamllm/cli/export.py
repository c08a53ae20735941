"""adamllm export: a stage-2 run as a `datasets` dataset (save_to_disk), with a dataset card; optionally
pushed to the Hugging Face Hub.

One row per record of OUTPUT_DIR/image_caption_and_synthetic_task.json: the image (an Image feature
holding the file's bytes), the training messages, the caption, the synthetic triplet, the checker's
verdict (and P(Yes) with --mode logprob), and whether and why not the messages hold the synthetic
task. DIR/README.md is the dataset card: the counts of every stage, the models used, the columns,
and a license field left for you to fill in.
"""

import argparse

EPILOG = """\
examples:
  adamllm export exp/biomed --to exp/biomed-hf
  python -c "import datasets; print(datasets.load_from_disk('exp/biomed-hf'))"

  adamllm export exp/biomed --to exp/biomed-hf --push_to_hub me/biomed-visual-instructions --private

Needs the datasets package (pip install 'adamllm[curate]'). DIR must be new or empty; it is
assembled beside DIR and renamed into place at the end, so a failed export leaves nothing. A record
whose image can no longer be used goes to DIR/export.rejects.jsonl with the reason;
DIR/export.summary.json counts records in = rows + rejected. --push_to_hub uploads the card, then
calls datasets' Dataset.push_to_hub(REPO) once (images embedded in Parquet files); it needs a token
(`hf auth login` or HF_TOKEN) and HF_HUB_OFFLINE unset, both checked before any work.
"""


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "export",
        help="write a stage-2 run as a datasets dataset with a dataset card (optionally push it to the Hub)",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "output_dir",
        help="A finished stage-2 output folder (written by adamllm run / run_synthesis.sh, or synthesize + filter + "
        "format).",
    )
    parser.add_argument(
        "--to",
        required=True,
        metavar="DIR",
        help="The folder to write the dataset to (datasets' save_to_disk); must be new or empty.",
    )
    parser.add_argument(
        "--image_folder",
        "--image-folder",
        default="",
        help="The image folder (default: the one format ran with, else synthesis, from OUTPUT_DIR/stats.json). Images "
        "are read only from inside it, with the stages' path checks, and each must decode whole.",
    )
    parser.add_argument(
        "--push_to_hub",
        "--push-to-hub",
        default="",
        metavar="REPO",
        help="Also push the dataset and its card to this Hugging Face Hub dataset repo (NAMESPACE/NAME).",
    )
    parser.add_argument(
        "--private",
        action="store_true",
        help="With --push_to_hub: create the repo private (an existing repo keeps its visibility).",
    )
    parser.set_defaults(run=lambda ns: run(ns, parser))


def run(ns: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from adamllm.results.export import ExportArgs, run_export

    try:
        args = ExportArgs(
            output_dir=ns.output_dir,
            to=ns.to,
            image_folder=ns.image_folder,
            push_to_hub=ns.push_to_hub,
            private=ns.private,
        )
        s = run_export(args)
    except ValueError as e:
        parser.error(str(e))
    print(
        f"wrote {s.rows} rows ({s.rows_with_synthetic_task} with a synthetic task) to {s.to}; "
        f"{sum(s.rejected.values())} rejected {s.rejected or ''}".rstrip()
    )
    if s.pushed_to:
        print(f"pushed to https://huggingface.co/datasets/{s.pushed_to}")
    return 0
