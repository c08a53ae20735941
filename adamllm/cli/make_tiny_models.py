"""adamllm make-tiny-models: tiny random models (synthesizer + checker) for tests and the demo."""

import argparse

from adamllm.models.backbones import DEFAULT_FAMILY, FAMILIES


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "make-tiny-models",
        help="build a tiny synthesizer (LLaVA-NeXT, Qwen2.5-VL or Qwen3-VL) and a tiny text checker, offline, "
        "in seconds",
        description=__doc__,
        epilog="examples:\n  adamllm make-tiny-models exp/tiny   # -> exp/tiny/synthesizer, exp/tiny/checker\n"
        "  adamllm make-tiny-models exp/tiny-qwen --family qwen2_5_vl\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("out_dir", help="Folder to write the two model folders into.")
    parser.add_argument(
        "--family",
        choices=FAMILIES,
        default=DEFAULT_FAMILY,
        help="Backbone family of the synthesizer (default: llava_next, the paper's); the checker is a Llama "
        "beside llava_next, a Qwen3 beside the Qwen-VL families.",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random weights (default: 0).")
    parser.add_argument(
        "--teach_checker_steps",
        "--teach-checker-steps",
        type=int,
        default=0,
        help="Teach the checker to answer Yes / No on procedural triplets for this many steps (default: 0, random).",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from adamllm.testing.tiny import make_tiny_models

    for name, path in make_tiny_models(args.out_dir, args.seed, args.teach_checker_steps, args.family).items():
        print(f"{name}: {path}")
    return 0
