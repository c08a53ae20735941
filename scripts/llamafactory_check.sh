#!/usr/bin/env bash
# Post-training on our output, with the tool researchers use (make llamafactory-check; by hand, not in
# make test): LLaMA-Factory in its own environment post-trains a tiny Qwen2.5-VL for a few steps on the
# output of `make demo BACKBONE=qwen2_5_vl`, with its qwen2_vl template, and prints the loss.
#   bash scripts/llamafactory_check.sh          # LF_VENV=.venv-llamafactory  OUT=exp/llamafactory-check
# LLaMA-Factory 0.9.5 pins transformers <= 5.6, datasets <= 4.0, accelerate <= 1.11, trl <= 0.24: not our
# stack, hence its own environment. Two CPU fixes there: torchvision's compiled ops do not load beside
# the CPU torch (scripts/patch_torchvision.py, as in ours), and torchaudio, which LLaMA-Factory imports
# at module level, has no build for this torch: its compiled libraries are moved aside, so it imports
# without them (nothing here decodes audio).
set -euo pipefail

LF_VENV=${LF_VENV:-.venv-llamafactory}
OUT=${OUT:-exp/llamafactory-check}
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
LLAMAFACTORY_VERSION=0.9.5
TORCH_VERSION=2.13.0
STEPS=${STEPS:-5}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
cd "$ROOT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

quiet_pip() {
  "$LF_VENV/bin/python" -m pip install --disable-pip-version-check -q "$@" 2>&1 \
    | { grep -v "is ignored: it is neither a file nor a directory" || true; }
}
if [[ ! -f "$LF_VENV/.llamafactory-$LLAMAFACTORY_VERSION" ]]; then
  echo "== LLaMA-Factory $LLAMAFACTORY_VERSION into $LF_VENV (its own pins; a few minutes the first time)"
  [[ -x "$LF_VENV/bin/python" ]] || "$PYTHON" -m venv "$LF_VENV"
  quiet_pip "torch==$TORCH_VERSION"  # the CPU wheel first, as in scripts/setup_cpu_env.sh
  echo "torch==$TORCH_VERSION" > "$LF_VENV/constraints.txt"
  quiet_pip -c "$LF_VENV/constraints.txt" "llamafactory==$LLAMAFACTORY_VERSION"
  "$LF_VENV/bin/python" "$HERE/patch_torchvision.py"
  site=$("$LF_VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  mkdir -p "$LF_VENV/torchaudio-libs-aside"
  find "$site/torchaudio/lib" -name "*.so" -exec mv {} "$LF_VENV/torchaudio-libs-aside/" \; 2>/dev/null || true
  touch "$LF_VENV/.llamafactory-$LLAMAFACTORY_VERSION"
fi

if [[ ! -f "$OUT/demo/stage2/dataset_info.json" ]]; then
  echo "== the demo on a tiny Qwen2.5-VL, whose output LLaMA-Factory trains on"
  VENV="$VENV" BACKBONE=qwen2_5_vl OUT="$OUT/demo" bash "$HERE/demo.sh"
fi

case "$OUT" in /*) ABS=$OUT ;; *) ABS=$ROOT/$OUT ;; esac
cat > "$ABS/train.yaml" <<YAML
model_name_or_path: $ABS/demo/tiny/synthesizer
stage: sft
do_train: true
finetuning_type: full
template: qwen2_vl
dataset_dir: $ABS/demo/stage2
dataset: image_caption_and_synthetic_task
cutoff_len: 2048
overwrite_cache: true
preprocessing_num_workers: 1
output_dir: $ABS/post-trained
overwrite_output_dir: true
logging_steps: 1
max_steps: $STEPS
per_device_train_batch_size: 2
learning_rate: 1.0e-3
save_strategy: "no"
report_to: none
use_cpu: true
bf16: false
YAML
echo "== llamafactory-cli train $OUT/train.yaml (template qwen2_vl, $STEPS steps)"
log="$ABS/train.log"
if ! "$LF_VENV/bin/llamafactory-cli" train "$ABS/train.yaml" > "$log" 2>&1; then
  tail -40 "$log" >&2
  echo "llamafactory-check: LLaMA-Factory failed; the whole log is $log" >&2
  exit 1
fi
examples=$(grep -o "Num examples = [0-9,]*" "$log" | head -1)
records=$("$LF_VENV/bin/python" -c "import json,sys; print(len(json.load(open(sys.argv[1]))))" \
  "$ABS/demo/stage2/image_caption_and_synthetic_task.json")
echo "records in our output: $records; LLaMA-Factory trained on: ${examples#Num examples = }"
grep -o "{'loss': '[^']*'" "$log" | awk -F"'" '{print "step " NR ": loss " $4}'
[[ "${examples#Num examples = }" == "$records" ]] || { echo "llamafactory-check: records were dropped" >&2; exit 1; }
