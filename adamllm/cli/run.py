"""adamllm run: stage 2 end to end (synthesize, filter, format) into one output folder."""

from adamllm.cli.args import add_dataclass_command
from adamllm.stage2.run import RunArgs

EXAMPLE = """\
example:
  CUDA_VISIBLE_DEVICES=0,1 adamllm run --synthesizer AdaptLLM/visual-instruction-synthesizer \\
      --checker meta-llama/Meta-Llama-3-8B --data_path data_samples/image_caption_pairs.json \\
      --image_folder data_samples/images --output_dir exp/out

Writes, in OUTPUT_DIR: syn_task_triplets.jsonl, filtered_task_pairs.jsonl,
image_caption_and_synthetic_task.json (+ dataset_info.json), *.rejects.jsonl and stats.json.
QA-Synthesizer/vllm_inference/run_synthesis.sh wraps this with the paper's positional arguments.
"""


def add_parser(sub) -> None:
    add_dataclass_command(
        sub,
        "run",
        RunArgs,
        run,
        help="stage 2 end to end: synthesize, filter, format",
        description=__doc__,
        epilog=EXAMPLE,
    )


def run(args: RunArgs) -> int:
    from adamllm.core.run_folder import FINAL_FILE
    from adamllm.stage2.run import run_pipeline

    stats = run_pipeline(args)
    s, f, o = stats["synthesize"], stats["filter"], stats["format"]
    print(
        f"synthesize: {s['records_out']}/{s['records_in']} records; filter: kept {f['records_out']} "
        f"({f['verdicts']}); format: {o['records_out']} records ({o['synthetic_tasks']} synthetic tasks) "
        f"-> {args.output_dir}/{FINAL_FILE}"
    )
    return 0
