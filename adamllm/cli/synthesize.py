"""adamllm synthesize: stage 2a, the synthesizer writes task triplets from image-caption pairs."""

from adamllm.cli.args import add_dataclass_command
from adamllm.stage2.synthesize import SynthesizeArgs

EXAMPLE = """\
examples:
  adamllm synthesize --model AdaptLLM/visual-instruction-synthesizer \\
      --data_path data_samples/image_caption_pairs.json --image_folder data_samples/images --output_dir exp/out
  adamllm synthesize ... --dry_run          # write exp/out/prompts.jsonl, load no model
  CUDA_VISIBLE_DEVICES=0,1,2,3 adamllm synthesize ...          # one worker per GPU
  adamllm synthesize ... --num_shards 64 --shard_index $SLURM_ARRAY_TASK_ID   # one shard per job

Writes OUTPUT_DIR/syn_task_triplets.jsonl (input record + syn_id + pred), its .rejects.jsonl and the
"synthesize" entry of OUTPUT_DIR/stats.json. Rerun the same command after a crash: it resumes.
"""


def add_parser(sub) -> None:
    add_dataclass_command(
        sub,
        "synthesize",
        SynthesizeArgs,
        run,
        help="stage 2a: synthesize task triplets (vLLM or transformers)",
        description=__doc__,
        epilog=EXAMPLE,
    )


def run(args: SynthesizeArgs) -> int:
    from adamllm.core.run_folder import PROMPTS_FILE, TRIPLETS_FILE
    from adamllm.stage2.synthesize import run_synthesize

    stats = run_synthesize(args)
    if stats is None:
        print(f"this shard is done; the last shard to finish writes {TRIPLETS_FILE}")
    elif args.dry_run:
        print(
            f"wrote {stats['records_out']} prompts to {args.output_dir}/{PROMPTS_FILE}; rejected "
            f"{stats['rejected'] or 'none'}"
        )
    else:
        print(
            f"synthesized {stats['records_out']} of {stats['records_in']} records into "
            f"{args.output_dir}/{TRIPLETS_FILE}; rejected {stats['rejected'] or 'none'}"
        )
    return 0
