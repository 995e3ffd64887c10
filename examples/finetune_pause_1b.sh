#!/bin/bash
# Pause-finetune the 1B GPT model (Goyal et al., ICLR 2024, Algorithm 2) on Slurm, 8 GPUs per node:
# M_ft <pause> tokens after each prompt, loss on the answer only.
#
#   PRETRAINED_CHECKPOINT=checkpoints/pause-1b sbatch examples/finetune_pause_1b.sh
#   FINETUNE_PAUSES=0 sbatch examples/finetune_pause_1b.sh      # standard finetuning (StdFT)
#
# The paper's four variants are {standard, pause} pretraining x {standard, pause} finetuning:
# point PRETRAINED_CHECKPOINT at a --pause-fraction 0 or 0.1 pretraining run and set
# FINETUNE_PAUSES to 0 or M_ft. A pause-free checkpoint gets its <pause> rows initialised.
#
# Start and resubmission: the first run takes the weights of PRETRAINED_CHECKPOINT (--finetune:
# weights only); once CHECKPOINT_DIR holds a checkpoint of this run, every later start (a
# resubmission or a requeue at the time limit) resumes it exactly instead, mid-epoch included.
# Every variable below can be overridden from the environment; EXTRA_ARGS is appended last.
# Data: JSONL (or .jsonl.gz) lines {"prompt": ..., "answer": ...}. With a container, mount the
# validation data's folder through CONTAINER_MOUNTS if it is not beside the training data.
#SBATCH --job-name=pause-ft-1b
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=16
#SBATCH --exclusive
#SBATCH --time=02:00:00
#SBATCH --output=%x-%j.out
#SBATCH --error=%x-%j.err
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@180

set -euo pipefail

: "${MEGATRON_PAUSE_DIR:=${SLURM_SUBMIT_DIR:-$PWD}}"
: "${PRETRAINED_CHECKPOINT:=$MEGATRON_PAUSE_DIR/checkpoints/pause-1b}"
# Training examples, optionally weighted: DATA_PATH="0.7 /data/squad_train.jsonl 0.3 /data/nq_train.jsonl".
: "${DATA_PATH=/data/sft/squad_train.jsonl}"
: "${VALID_DATA_PATH=/data/sft/squad_valid.jsonl}"
: "${TOKENIZER_MODEL=/data/tokenizers/pause_sp32k.model}"
: "${FINETUNE_PAUSES:=10}"    # M_ft; the paper sweeps 10 and 50 for the 1B model
: "${TRAIN_EPOCHS:=3}"
: "${CHECKPOINT_DIR:=$MEGATRON_PAUSE_DIR/checkpoints/pause-ft-1b-m$FINETUNE_PAUSES}"
: "${TENSORBOARD_DIR=$CHECKPOINT_DIR/tensorboard}"
: "${METRICS_FILE=$CHECKPOINT_DIR/metrics.jsonl}"
: "${CONTAINER_IMAGE=}"
: "${CONTAINER_MOUNTS=}"
: "${PYTHON:=python}"
: "${EXTRA_ARGS=}"

# Layout: the 1B model at micro batch 1 (packed sequences of 2048 tokens hold several examples).
: "${TP:=1}"
: "${PP:=1}"
: "${MICRO_BATCH_SIZE:=1}"
: "${GLOBAL_BATCH_SIZE:=64}"
: "${TRAIN_ITERS:=1}"         # unused: --train-epochs sets the length
: "${PRECISION_ARGS=--bf16}"
: "${OPTIMIZER_SHARDING_ARGS=--use-distributed-optimizer --overlap-grad-reduce --overlap-param-gather}"
: "${MASTER_PORT:=6000}"
: "${SIGNAL_LEAD:=180}"   # keep equal to the @seconds of #SBATCH --signal above
: "${MAX_REQUEUES:=50}"

MODEL_ARGS=(
    --model-size 1b
    --lr 1e-5
    --min-lr 1e-6
    --lr-warmup-iters 50
)

ENTRY_MODULE=megatron_pause.finetune
DATA_FLAG=--train-data-path
read -r -a VALID_TOKENS <<< "$VALID_DATA_PATH"
TASK_ARGS=(
    --finetune-pauses "$FINETUNE_PAUSES"
    --train-epochs "$TRAIN_EPOCHS"
    --pack-sequences
    --save-interval 200
    --eval-interval 200
)
if ((${#VALID_TOKENS[@]})); then TASK_ARGS+=(--valid-data-path "${VALID_TOKENS[@]}"); fi
if [[ ! -f "$CHECKPOINT_DIR/latest_checkpointed_iteration.txt" ]]; then
    # First start: the pretrained weights (the later --load overrides the shared body's).
    TASK_ARGS+=(--load "$PRETRAINED_CHECKPOINT" --finetune)
    CONTAINER_MOUNTS="${CONTAINER_MOUNTS:+$CONTAINER_MOUNTS,}$(realpath -m "$PRETRAINED_CHECKPOINT"):$(realpath -m "$PRETRAINED_CHECKPOINT")"
fi

# Environment, rendezvous, command line, container and launch are shared with the other jobs.
# shellcheck source=examples/slurm_pause_job.sh
source "$MEGATRON_PAUSE_DIR/examples/slurm_pause_job.sh"
