"""The `adamllm` command: one subcommand per stage.

    adamllm --help
    adamllm merge-seed --help

Each subcommand lives in its own module with `add_parser(subparsers)` and `run(args)`; heavy imports
(torch, transformers, vLLM, DeepSpeed) happen inside `run`, so `--help` is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from adamllm.cli import (
    convert_llava,
    export,
    filter,
    format,
    make_seed_fixtures,
    make_tiny_models,
    merge_seed,
    report,
    run,
    synthesize,
    train,
)
from adamllm.core.run_folder import SHARDS_DIR

COMMANDS = (
    merge_seed,
    train,
    run,
    synthesize,
    filter,
    format,
    report,
    export,
    convert_llava,
    make_tiny_models,
    make_seed_fixtures,
)

EPILOG = """\
The pipeline:
  stage 1   adamllm merge-seed ...          seed data -> synthesizer training records
            adamllm train ...               fine-tune the synthesizer (torchrun + DeepSpeed), or:
            bash scripts/tune_synthesizer.sh CAPTION PRECISE_A INFORMATIVE_A IMAGE_FOLDER
  stage 2   adamllm run ...                 synthesize + filter + format, or one by one:
            adamllm synthesize ...          image-caption pairs -> task triplets
            adamllm filter ...              triplets -> consistent triplets
            adamllm format ...              filtered triplets -> post-training data
            adamllm report OUTPUT_DIR       OUTPUT_DIR/report.html: the path of every record
            adamllm export OUTPUT_DIR --to DIR   a datasets dataset + card (--push_to_hub REPO)
            cd QA-Synthesizer/vllm_inference && bash run_synthesis.sh SYNTHESIZER CHECKER PAIRS IMAGES OUT
  models    adamllm convert-llava SRC OUT          a LLaVA-repo checkpoint (the paper's base) -> llava-hf layout
  testing   adamllm make-tiny-models exp/tiny
            adamllm make-seed-fixtures exp/seed_fixtures --num_images 40
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adamllm",
        description="Domain visual instruction synthesis (AdaMLLM).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:
        # Training parses its own flags with HfArgumentParser (every TrainingArguments flag).
        return train.main(argv[1:])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:  # Ctrl-C: one line, not the traceback of whichever library was running
        print(f"adamllm {args.command}: interrupted; {interrupted_message(args)}", file=sys.stderr)
        return 130  # 128 + SIGINT, as shells report it
    except ValueError as e:  # bad arguments or data: the message names the flag or record and the fix
        print(f"adamllm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # the environment or a worker failed
        print(f"adamllm {args.command}: failed: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a read-only folder, a full disk, an output path under a file
        from adamllm.core.files import describe_os_error

        print(f"adamllm {args.command}: failed: {describe_os_error(e)}", file=sys.stderr)
        return 1


def interrupted_message(args: argparse.Namespace) -> str:
    """What an interrupted command kept, and how to go on (one line)."""
    if args.command in ("synthesize", "filter", "run"):
        return (
            f"the records finished so far are saved in {Path(args.output_dir) / SHARDS_DIR}/; the same command "
            f"resumes from them"
        )
    return "no output was half-written (each file is replaced whole, or left as it was); the same command starts again"


if __name__ == "__main__":
    sys.exit(main())
