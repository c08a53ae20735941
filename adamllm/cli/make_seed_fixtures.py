"""adamllm make-seed-fixtures: procedural seed data (and stage-2 pairs) for tests, benchmarks, the demo."""

import argparse


def add_parser(sub) -> None:
    parser = sub.add_parser(
        "make-seed-fixtures",
        help="write procedural seed data in the three seed formats (and optionally stage-2 pairs)",
        description=__doc__,
        epilog="example:\n  adamllm make-seed-fixtures exp/seed_fixtures --num_images 40 --num_pairs 20\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("out_dir", help="Folder to write into (created).")
    parser.add_argument("--num_images", "--num-images", type=int, default=40, help="Seed images to make (default: 40).")
    parser.add_argument(
        "--num_pairs",
        "--num-pairs",
        type=int,
        default=0,
        help="Stage-2 image-caption pairs to make under OUT_DIR/pairs (default: 0).",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the scenes (default: 0).")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from adamllm.testing.fixtures import make_caption_pairs, make_seed_fixtures

    if args.num_images < 0 or args.num_pairs < 0:
        raise SystemExit("adamllm make-seed-fixtures: error: --num_images and --num_pairs must be >= 0")
    paths = make_seed_fixtures(args.out_dir, args.num_images, args.seed)
    for name, path in paths.items():
        print(f"{name}: {path}")
    if args.num_pairs:
        pairs = make_caption_pairs(f"{args.out_dir}/pairs", args.num_pairs, args.seed)
        for name, path in pairs.items():
            print(f"pairs {name}: {path}")
    return 0
