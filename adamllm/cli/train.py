"""adamllm train: stage 1b, fine-tune the synthesizer (flags: `adamllm train --help`)."""


def add_parser(sub) -> None:
    # Listed for `adamllm --help`; `adamllm train ...` itself is routed to HfArgumentParser by main().
    sub.add_parser(
        "train", help="stage 1b: fine-tune the synthesizer (DeepSpeed; every TrainingArguments flag)", add_help=False
    )


def main(argv: list[str]) -> int:
    from adamllm.stage1.train import main as train_main

    return train_main(argv)
