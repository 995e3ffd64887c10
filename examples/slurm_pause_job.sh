# Shared body of the Slurm pause jobs (examples/pretrain_pause_1b.sh, examples/pretrain_pause_130m.sh,
# examples/finetune_pause_1b.sh): environment, rendezvous, command line, container, launch and
# requeue. Sourced, not run: the job script sets its #SBATCH header, the path and layout
# variables and MODEL_ARGS (model preset and learning rate) first. A job other than pretraining
# also sets ENTRY_MODULE (the python -m module), DATA_FLAG (the flag DATA_PATH goes to) and
# TASK_ARGS (its own flags, appended after the shared ones below, so they override them).
# shellcheck shell=bash
# shellcheck disable=SC2154  # the variables come from the sourcing job script

# ---------------------------------------------------------------------------------------------
# Environment.
# ---------------------------------------------------------------------------------------------
# megatron-core orders tensor-parallel communication kernels against compute by issuing them on a
# single hardware queue; more than one connection lets them reorder and breaks that overlap.
export CUDA_DEVICE_MAX_CONNECTIONS=1
# A failed or timed-out collective tears the process down instead of hanging until the time
# limit (and burning the allocation); --kill-on-bad-exit below then ends the other ranks.
export TORCH_NCCL_ASYNC_ERROR_HANDLING=1
# Free async-collective buffers when the collective completes instead of on the caching
# allocator's stream-use record: lower peak memory with the overlapped grad reduce.
export TORCH_NCCL_AVOID_RECORD_STREAMS=1
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
# InfiniBand/RoCE selection is site-specific; set it in the environment if your admins say so:
#   NCCL_IB_HCA=mlx5 NCCL_SOCKET_IFNAME=ib0 NCCL_IB_GID_INDEX=3 ...
# One OpenMP thread per rank: 8 ranks share the node's cores; torchrun defaults to the same.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export PYTHONUNBUFFERED=1
# Rendezvous: rank 0 runs on the first node of the allocation. (Not `scontrol ... | head -n1`:
# with pipefail, scontrol dying of SIGPIPE after head exits would abort the job.)
mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
MASTER_ADDR="${NODES[0]:-}"
if [[ -z "$MASTER_ADDR" ]]; then
    echo "could not resolve the first node of SLURM_JOB_NODELIST='${SLURM_JOB_NODELIST:-}'" >&2
    exit 1
fi
export MASTER_ADDR MASTER_PORT
# Each task takes its rank from srun's SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID. torchrun-style
# variables inherited from the submitting shell would give every task the same rank: drop them.
unset RANK WORLD_SIZE LOCAL_RANK
# Every task sees all GPUs of its node and picks GPU SLURM_LOCALID (keeps NVLink peer access).
cd "$MEGATRON_PAUSE_DIR" || exit 1
if [[ -d "$MEGATRON_PAUSE_DIR/megatron_pause" ]]; then
    # Run the checkout, even where the container also has an installed copy.
    export PYTHONPATH="$MEGATRON_PAUSE_DIR${PYTHONPATH:+:$PYTHONPATH}"
fi

# ---------------------------------------------------------------------------------------------
# Command line (Megatron-LM flag names; see `python -m megatron_pause.pretrain --help`).
# ---------------------------------------------------------------------------------------------
read -r -a DATA_TOKENS <<< "$DATA_PATH"
read -r -a PRECISION <<< "$PRECISION_ARGS"
read -r -a OPTIMIZER_SHARDING <<< "$OPTIMIZER_SHARDING_ARGS"
read -r -a EXTRA <<< "$EXTRA_ARGS"
: "${ENTRY_MODULE:=megatron_pause.pretrain}"
: "${DATA_FLAG:=--data-path}"
if ! declare -p TASK_ARGS >/dev/null 2>&1; then
    TASK_ARGS=(
        # Pause tokens: 10% of the context inserted at random positions, as in the paper.
        --pause-fraction 0.1
        --split "969,30,1"
        --num-workers 2
    )
fi

ARGS=(
    # The model and its learning rate come from the sourcing script.
    "${MODEL_ARGS[@]}"
    --tensor-model-parallel-size "$TP"
    --pipeline-model-parallel-size "$PP"
    --micro-batch-size "$MICRO_BATCH_SIZE"
    --global-batch-size "$GLOBAL_BATCH_SIZE"
    --train-iters "$TRAIN_ITERS"
    --lr-decay-style cosine
    --weight-decay 0.1
    --adam-beta1 0.9
    --adam-beta2 0.95
    --clip-grad 1.0
    --seed 1234
    --pause-token "<pause>"
    --tokenizer-type SentencePieceTokenizer
    # Resumable: load from where we save.
    --save "$CHECKPOINT_DIR"
    --load "$CHECKPOINT_DIR"
    --save-interval 1000
    --log-interval 10
    --eval-interval 1000
    --eval-iters 20
    "${TASK_ARGS[@]}"
)
if ((${#DATA_TOKENS[@]})); then ARGS+=("$DATA_FLAG" "${DATA_TOKENS[@]}"); fi
if [[ -n "$TOKENIZER_MODEL" ]]; then ARGS+=(--tokenizer-model "$TOKENIZER_MODEL"); fi
if [[ -n "$TENSORBOARD_DIR" ]]; then ARGS+=(--tensorboard-dir "$TENSORBOARD_DIR"); fi
if [[ -n "$METRICS_FILE" ]]; then ARGS+=(--metrics-file "$METRICS_FILE"); fi
# A stage of an experiment (megatron_pause.experiment) brings its whole command line, one
# argument per line, and its entry point in ENTRY_MODULE; the environment, launch and requeue
# below stay the same.
if [[ -n "${STAGE_ARGS_FILE:-}" ]]; then mapfile -t ARGS < "$STAGE_ARGS_FILE"; fi
ARGS+=(${PRECISION[@]+"${PRECISION[@]}"} ${OPTIMIZER_SHARDING[@]+"${OPTIMIZER_SHARDING[@]}"})

mkdir -p "$CHECKPOINT_DIR"
if [[ -n "$TENSORBOARD_DIR" ]]; then mkdir -p "$TENSORBOARD_DIR"; fi
if [[ -n "$METRICS_FILE" ]]; then mkdir -p "$(dirname "$METRICS_FILE")"; fi

# srun options always use the --opt=value form.
SRUN_ARGS=(--kill-on-bad-exit=1)
if [[ -n "$CONTAINER_IMAGE" ]]; then
    declare -A SEEN=()
    MOUNTS=()
    add_mount() {
        local dir
        dir="$(realpath -m "$1")"
        if [[ -z "${SEEN[$dir]:-}" ]]; then SEEN[$dir]=1; MOUNTS+=("$dir:$dir"); fi
    }
    add_mount "$MEGATRON_PAUSE_DIR"
    add_mount "$CHECKPOINT_DIR"
    if [[ -n "$TENSORBOARD_DIR" ]]; then add_mount "$TENSORBOARD_DIR"; fi
    if [[ -n "$METRICS_FILE" ]]; then add_mount "$(dirname "$METRICS_FILE")"; fi
    if [[ -n "$TOKENIZER_MODEL" ]]; then add_mount "$(dirname "$TOKENIZER_MODEL")"; fi
    for token in ${DATA_TOKENS[@]+"${DATA_TOKENS[@]}"}; do
        # Skip the weights of a weighted DATA_PATH.
        if [[ ! "$token" =~ ^[0-9.eE+-]+$ ]]; then add_mount "$(dirname "$token")"; fi
    done
    MOUNT_LIST="$(IFS=,; echo "${MOUNTS[*]}")${CONTAINER_MOUNTS:+,$CONTAINER_MOUNTS}"
    SRUN_ARGS+=(
        --container-image="$CONTAINER_IMAGE"
        --container-mounts="$MOUNT_LIST"
        --container-workdir="$MEGATRON_PAUSE_DIR"
    )
fi

# ---------------------------------------------------------------------------------------------
# The GPU fast path (TE_FP8=1, the default): megatron-core's Transformer Engine layer spec with
# FP8 GEMMs (--fp8-format hybrid) and, where the TE version and GPU support it, FP8 dot-product
# attention. One task checks the job's environment first (inside the container, if any), so a job
# without Transformer Engine or without FP8 tensor cores stops here, in seconds, with a message
# naming the switch -- not after every rank has started. TE_FP8=0 trains with the local layer
# spec in plain bf16 (PRECISION_ARGS) and skips the check.
# ---------------------------------------------------------------------------------------------
FAST_PATH=()
case "${TE_FP8:=1}" in
    1)
        PREFLIGHT=("$PYTHON" -m megatron_pause.models.fusions --job-preflight --switch TE_FP8=0)
        if [[ -n "$CONTAINER_IMAGE" ]]; then
            PREFLIGHT=(srun --nodes=1 --ntasks=1 "${SRUN_ARGS[@]}" "${PREFLIGHT[@]}")
        fi
        if ! FAST_FLAGS="$("${PREFLIGHT[@]}")"; then
            echo "[$(date -Is)] stopping before launch: the TE/FP8 fast path is not available (see above)" >&2
            exit 1
        fi
        read -r -a FAST_PATH <<< "$FAST_FLAGS"
        ;;
    0) ;;
    *)
        echo "TE_FP8 must be 1 (Transformer Engine + FP8, the default) or 0 (local layers, plain bf16), got '$TE_FP8'" >&2
        exit 1
        ;;
esac
# EXTRA_ARGS last: for every flag the last occurrence wins.
ARGS+=(${FAST_PATH[@]+"${FAST_PATH[@]}"} ${EXTRA[@]+"${EXTRA[@]}"})

# ---------------------------------------------------------------------------------------------
# Launch: one task per GPU (the allocation's --ntasks-per-node), each `python -m
# $ENTRY_MODULE` (megatron_pause.pretrain unless the job says otherwise); requeue if the time
# limit is what stopped us.
# ---------------------------------------------------------------------------------------------
REQUEUE=0
SRUN_PID=
# shellcheck disable=SC2317  # called by the trap below, which shellcheck does not follow
on_time_limit() {
    echo "[$(date -Is)] time limit in ${SIGNAL_LEAD}s: asking the training processes to save and exit"
    REQUEUE=1
    if [[ -n "$SRUN_PID" ]]; then kill -TERM "$SRUN_PID" 2>/dev/null || true; fi
}
trap on_time_limit USR1

echo "[$(date -Is)] job ${SLURM_JOB_ID:-?} on ${SLURM_JOB_NUM_NODES:-?} node(s), restart ${SLURM_RESTART_COUNT:-0}; MASTER_ADDR=$MASTER_ADDR"
printf '+ srun'; printf ' %q' "${SRUN_ARGS[@]}" "$PYTHON" -m "$ENTRY_MODULE" "${ARGS[@]}"; printf '\n'
# srun runs in the background so that this shell can take the USR1 trap while it waits
# (bash runs traps only between commands); srun forwards our SIGTERM to every task.
srun "${SRUN_ARGS[@]}" "$PYTHON" -m "$ENTRY_MODULE" "${ARGS[@]}" &
SRUN_PID=$!
# `wait` returns early whenever a trapped signal arrives: keep waiting while srun is alive.
while kill -0 "$SRUN_PID" 2>/dev/null; do
    wait "$SRUN_PID" || true
done
STATUS=0
wait "$SRUN_PID" || STATUS=$?
echo "[$(date -Is)] training exited with status $STATUS"

if ((REQUEUE)); then
    if ((${SLURM_RESTART_COUNT:-0} < MAX_REQUEUES)); then
        echo "requeueing job $SLURM_JOB_ID to resume from $CHECKPOINT_DIR"
        scontrol requeue "$SLURM_JOB_ID"
    else
        echo "not requeueing: restarted ${SLURM_RESTART_COUNT:-0} times already (MAX_REQUEUES=$MAX_REQUEUES)" >&2
    fi
fi
exit "$STATUS"
