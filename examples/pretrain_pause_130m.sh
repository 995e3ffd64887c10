#!/bin/bash
# Pretrain the 130M GPT model with pause tokens (Goyal et al., ICLR 2024) on Slurm: one 8-GPU node.
# Same shape as examples/pretrain_pause_1b.sh (read that one for the details); smaller defaults.
#
#   sbatch examples/pretrain_pause_130m.sh                      # from the repository root
#   DATA_PATH=/lustre/c4/c4_en_train_text_document sbatch examples/pretrain_pause_130m.sh
#   TE_FP8=0 sbatch examples/pretrain_pause_130m.sh             # local layers, plain bf16 (no TE/FP8)
#
# Every variable in the "paths" and "layout" blocks below can be overridden from the environment
# at submission (sbatch exports the submitting shell's environment). EXTRA_ARGS is appended last,
# and for every flag the last occurrence wins, so it overrides anything the script sets.
#
# Resubmission: the job saves to and loads from the same CHECKPOINT_DIR, so rerunning (or a
# requeue) continues where the last checkpoint left off. Slurm sends USR1 to this batch shell
# SIGNAL_LEAD seconds before the time limit (--signal below); we forward SIGTERM to the training
# processes, which save a checkpoint and exit (megatron_pause's --exit-signal-handler, on by
# default), and then requeue the job so it resumes without anyone resubmitting it.
#
# Logs go to the submission directory as <job name>-<job id>.out/.err, appended across requeues.
#SBATCH --job-name=pause-130m
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=16
#SBATCH --exclusive
#SBATCH --time=06:00:00
#SBATCH --output=%x-%j.out
#SBATCH --error=%x-%j.err
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@180

set -euo pipefail

# ---------------------------------------------------------------------------------------------
# Paths. Variables written ${VAR=default} may be set to an empty string to leave the flag out
# (e.g. DATA_PATH= with --mock-data in EXTRA_ARGS).
# ---------------------------------------------------------------------------------------------
# The checkout to run: sbatch copies this script to a spool directory, so locate the repository
# through the directory the job was submitted from.
: "${MEGATRON_PAUSE_DIR:=${SLURM_SUBMIT_DIR:-$PWD}}"
# Preprocessed prefix(es): <prefix>.bin/.idx from tools/preprocess_data.py; weights allowed:
# DATA_PATH="0.7 /data/c4_text_document 0.3 /data/code_text_document".
: "${DATA_PATH=/data/c4/c4_en_train_text_document}"
: "${TOKENIZER_MODEL=/data/tokenizers/pause_sp32k.model}"
: "${CHECKPOINT_DIR:=$MEGATRON_PAUSE_DIR/checkpoints/pause-130m}"
: "${TENSORBOARD_DIR=$CHECKPOINT_DIR/tensorboard}"
: "${METRICS_FILE=$CHECKPOINT_DIR/metrics.jsonl}"
# Optional container (pyxis/enroot): an image built from the repository's Dockerfile, as a
# squashfs file or a registry reference (e.g. registry#megatron_pause:latest). Empty = run on the
# host's Python. The checkout, data, tokenizer and checkpoint directories are mounted at the
# same paths; CONTAINER_MOUNTS adds more ("src:dst,src2:dst2").
: "${CONTAINER_IMAGE=}"
: "${CONTAINER_MOUNTS=}"
: "${PYTHON:=python}"
: "${EXTRA_ARGS=}"

# ---------------------------------------------------------------------------------------------
# Layout and schedule.
# ---------------------------------------------------------------------------------------------
# 130M parameters: pure data parallelism; TP/PP would only add communication.
: "${TP:=1}"
: "${PP:=1}"
: "${MICRO_BATCH_SIZE:=16}"
# 512 x 1024 = ~0.5M tokens per step. The paper pretrains on C4 for 200B tokens: ~380k steps.
: "${GLOBAL_BATCH_SIZE:=512}"
: "${TRAIN_ITERS:=380000}"
# The GPU fast path: TE_FP8=1 adds megatron-core's Transformer Engine layer spec with FP8
# (--transformer-impl transformer_engine --fp8-format hybrid, and --fp8-dot-product-attention where
# the TE version and GPU support it) to PRECISION_ARGS. TE_FP8=0 is the one switch back to local
# layers in plain bf16 (e.g. an image without Transformer Engine, or GPUs without FP8: pre-Ada).
: "${TE_FP8:=1}"
: "${PRECISION_ARGS=--bf16}"
: "${OPTIMIZER_SHARDING_ARGS=--use-distributed-optimizer --overlap-grad-reduce --overlap-param-gather}"
: "${MASTER_PORT:=6000}"
: "${SIGNAL_LEAD:=180}"   # keep equal to the @seconds of #SBATCH --signal above
: "${MAX_REQUEUES:=50}"   # a safety stop against endless requeue loops

MODEL_ARGS=(
    # 12 layers x 768 hidden, 12 heads, SwiGLU FFN 2048, RoPE, RMSNorm, untied embeddings,
    # 1024-token context (megatron_pause/config.py MODEL_PRESETS).
    --model-size 130m
    --lr 6e-4
    --min-lr 6e-5
    --lr-warmup-iters 2000
)

# Environment, rendezvous, command line, container and launch are shared with the other job.
# shellcheck source=examples/slurm_pause_job.sh
source "$MEGATRON_PAUSE_DIR/examples/slurm_pause_job.sh"
