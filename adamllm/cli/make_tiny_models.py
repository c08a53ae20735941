"""adamllm make-tiny-models: tiny random models (synthesizer + checker) for tests and the demo."""

import argparse


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "make-tiny-models",
        help="build a tiny LLaVA-NeXT synthesizer and a tiny Llama checker, offline, in seconds",
        description=__doc__,
        epilog="example:\n  adamllm make-tiny-models exp/tiny   # -> exp/tiny/synthesizer, exp/tiny/checker\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("out_dir", help="Folder to write the two model folders into.")
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

    for name, path in make_tiny_models(args.out_dir, args.seed, args.teach_checker_steps).items():
        print(f"{name}: {path}")
    return 0
