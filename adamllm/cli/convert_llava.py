"""adamllm convert-llava: a LLaVA-repo LLaVA-NeXT checkpoint into the llava-hf layout we train and serve."""

import argparse

EPILOG = """\
examples:
  adamllm convert-llava Lin-Chen/open-llava-next-llama3-8b exp/open-llava-next-hf
  BASE_MODEL=$(adamllm convert-llava Lin-Chen/open-llava-next-llama3-8b exp/open-llava-next-hf) \\
      bash scripts/tune_synthesizer.sh CAPTION PRECISE_A INFORMATIVE_A IMAGE_FOLDER   # the paper's base model
  adamllm convert-llava my-llava-next-ckpt out/ --vision_tower openai/clip-vit-large-patch14-336

Prints OUT on stdout (and nothing else), so the command can feed BASE_MODEL.
"""


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "convert-llava",
        help="convert a LLaVA-repo LLaVA-NeXT checkpoint (e.g. the paper's base model) to the llava-hf layout",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "src", help="LLaVA-repo LLaVA-NeXT folder or hub id (config.json with mm_vision_tower, mm_projector_type, ...)."
    )
    parser.add_argument("out", help="Folder to write the converted checkpoint into.")
    parser.add_argument(
        "--vision_tower",
        "--vision-tower",
        default="",
        help="CLIP vision model (hub id or folder); default: the one SRC's mm_vision_tower names.",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from adamllm.models.convert_llava import ConvertArgs, convert

    print(convert(ConvertArgs(src=args.src, out=args.out, vision_tower=args.vision_tower)))
    return 0
