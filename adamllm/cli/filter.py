"""adamllm filter: stage 2b, a text LLM keeps only consistent triplets."""

from adamllm.cli.args import add_dataclass_command
from adamllm.stage2.filter import FilterArgs

EXAMPLE = """\
examples:
  adamllm filter --model meta-llama/Meta-Llama-3-8B --data_path exp/out/syn_task_triplets.jsonl --output_dir exp/out
  adamllm filter ... --mode logprob                 # one step; likeliest of Yes / No / Open
  adamllm filter ... --prompt_file my_prompt.txt    # holds {Q}, {informative_A}, {precise_A}

Writes OUTPUT_DIR/filtered_task_pairs.jsonl (record + collected_QA + consistency) and the "filter"
entry of OUTPUT_DIR/stats.json (verdicts, pass rate, prompt tokens computed vs served from cache).
"""


def add_parser(sub) -> None:
    add_dataclass_command(
        sub,
        "filter",
        FilterArgs,
        run,
        help="stage 2b: keep triplets whose precise answer follows from the informative one",
        description=__doc__,
        epilog=EXAMPLE,
    )


def run(args: FilterArgs) -> int:
    from adamllm.core.run_folder import FILTERED_FILE
    from adamllm.stage2.filter import run_filter

    stats = run_filter(args)
    if stats is None:
        print(f"this shard is done; the last shard to finish writes {FILTERED_FILE}")
    else:
        print(
            f"kept {stats['records_out']} of {stats['records_in']} records (verdicts {stats['verdicts']}) in "
            f"{args.output_dir}/{FILTERED_FILE}"
        )
    return 0
