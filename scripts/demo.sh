#!/usr/bin/env bash
# The CPU demo (make demo). What exists so far: tiny models, seed data merged for stage 1, and the exact
# stage-2 prompt for data_samples/. Fine-tuning (issue #4), synthesis and filtering (issue #3) and the
# report (issue #5) join this script as they land.
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

echo "== 3. the stage-2 prompt the synthesizer sees for the first pair of data_samples/"
"$VENV/bin/python" - "$OUT/tiny/synthesizer" <<'PY'
import json, sys
from adamllm.formats import iter_json_records, parse_caption_pair
from adamllm.model_io import load_processor
from adamllm.prompts import synthesizer_prompt
processor = load_processor(sys.argv[1])
pair = parse_caption_pair(next(iter(iter_json_records("data_samples/image_caption_pairs.json"))))
print(json.dumps(synthesizer_prompt(pair.caption, processor.image_token)))
PY

cat <<MSG
== done. Outputs:
  $OUT/tiny/{synthesizer,checker}     tiny models
  $OUT/seed_train.json                merged stage-1 records (+ .summary.json with the counts)
Not yet in the demo: fine-tuning (scripts/tune_synthesizer.sh, issue #4), synthesis + filtering
(run_synthesis.sh, issue #3) and the HTML report (issue #5).
MSG
