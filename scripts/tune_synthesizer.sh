#!/usr/bin/env bash
# Stage 1: fine-tune the visual instruction synthesizer on the seed data (multitask, DeepSpeed ZeRO-3).
#
#   bash ./scripts/tune_synthesizer.sh CAPTION PRECISE_A INFORMATIVE_A IMAGE_FOLDER [TRAINER FLAGS...]
#
#   CAPTION        ALLaVA-Caption-VFLAN-4V.json
#   PRECISE_A      Vision-Flan metadata.json
#   INFORMATIVE_A  ALLaVA-Instruct-VFLAN-4V.json
#   IMAGE_FOLDER   Vision-Flan images_191task_1k
#   TRAINER FLAGS  any `adamllm train` / TrainingArguments flag, e.g. --max_steps 10
#
# Environment overrides (defaults: the paper's setup on 8 GPUs):
#   BASE_MODEL=llava-hf/llama3-llava-next-8b-hf   SAVE_PATH=./exp/synthesizer   ZERO=scripts/zero3.json
#   (a newer backbone: BASE_MODEL=Qwen/Qwen2.5-VL-7B-Instruct or Qwen/Qwen3-VL-8B-Instruct; same recipe)
#   (the paper's base: BASE_MODEL=$(adamllm convert-llava Lin-Chen/open-llava-next-llama3-8b exp/open-llava-next-hf))
#   CUDA_VISIBLE_DEVICES / NUM_GPUS (processes; on a machine without GPUs NUM_GPUS CPU processes, default 2)
#   BATCH_SIZE=4 per device; GRAD_ACCUM so that NUM_GPUS x BATCH_SIZE x GRAD_ACCUM = GLOBAL_BATCH=128
#   PYTHON=python   MASTER_PORT=29511
# Rerun the same command to resume from the last checkpoint in SAVE_PATH.
set -euo pipefail

if [[ $# -lt 4 ]]; then
  sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
CAPTION=$1
PRECISE_A=$2
INFORMATIVE_A=$3
IMAGE_FOLDER=$4
shift 4

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-python}
BASE_MODEL=${BASE_MODEL:-llava-hf/llama3-llava-next-8b-hf}
SAVE_PATH=${SAVE_PATH:-./exp/synthesizer}
ZERO=${ZERO:-$HERE/zero3.json}
GLOBAL_BATCH=${GLOBAL_BATCH:-128}
BATCH_SIZE=${BATCH_SIZE:-4}
MASTER_PORT=${MASTER_PORT:-29511}

if "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
    IFS=',' read -ra ids <<< "$CUDA_VISIBLE_DEVICES"
    NUM_GPUS=${NUM_GPUS:-${#ids[@]}}
  else
    NUM_GPUS=${NUM_GPUS:-$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")}
  fi
  PRECISION=(--bf16 True --tf32 True --gradient_checkpointing True --dataloader_num_workers 4)
else
  # CPU: DeepSpeed's CPU accelerator, fp32 (bf16 is ~5x slower on AVX2), one thread per process
  # (with two, steps stall at random on a 2-core machine).
  NUM_GPUS=${NUM_GPUS:-2}
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  PRECISION=(--dataloader_num_workers 0)
fi
GRAD_ACCUM=${GRAD_ACCUM:-$(( GLOBAL_BATCH / (NUM_GPUS * BATCH_SIZE) > 0 ? GLOBAL_BATCH / (NUM_GPUS * BATCH_SIZE) : 1 ))}
echo "tune_synthesizer: $NUM_GPUS processes x batch $BATCH_SIZE x accumulation $GRAD_ACCUM; base $BASE_MODEL -> $SAVE_PATH"

TRAIN_ARGS=(
  --deepspeed "$ZERO"
  --model_name_or_path "$BASE_MODEL"
  --caption_path "$CAPTION"
  --precise_qa_path "$PRECISE_A"
  --informative_qa_path "$INFORMATIVE_A"
  --image_folder "$IMAGE_FOLDER"
  --replace_with_blank_image_percent 10
  --unfreeze_mm_vision_tower True
  --mm_vision_tower_lr 2e-6
  --learning_rate 2e-5
  --num_train_epochs 2
  --per_device_train_batch_size "$BATCH_SIZE"
  --gradient_accumulation_steps "$GRAD_ACCUM"
  --warmup_steps 0.03
  --lr_scheduler_type cosine
  --weight_decay 0.0
  --model_max_length 6144
  --train_sampling_strategy group_by_length
  --save_strategy steps
  --save_steps 500
  --save_total_limit 1
  --logging_steps 1
  --report_to none
  --output_dir "$SAVE_PATH"
  "${PRECISION[@]}"
  "$@"
)

# Check the seed files, the base model and every flag in one quick process: a mistake then costs
# seconds and one message, not a torchrun start and a traceback from each rank.
"$PYTHON" -m adamllm train "${TRAIN_ARGS[@]}" --check_only True
"$PYTHON" -m torch.distributed.run --nproc_per_node "$NUM_GPUS" --master_port "$MASTER_PORT" -m adamllm train "${TRAIN_ARGS[@]}"
