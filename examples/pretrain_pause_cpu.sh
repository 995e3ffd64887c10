#!/bin/bash
# Pause-token pretraining of the tiny model on CPU: two processes (torchrun, gloo), no GPU needed.
#
#   bash examples/pretrain_pause_cpu.sh                 # data parallel: 2 ranks
#   TP=2 bash examples/pretrain_pause_cpu.sh            # tensor parallel across the 2 ranks
#   EXTRA_ARGS="--train-iters 10" bash examples/pretrain_pause_cpu.sh
#
# It exercises the same code path as the GPU runs (megatron-core's model, schedules, optimizer
# and distributed checkpoints) on the sample corpus and tokenizer shipped in examples/data/. The
# corpus is tokenized once into OUTPUT_DIR by tools/preprocess_data.py (Megatron's .bin/.idx
# format). A few seconds per step on a laptop; outputs never go into the checkout.

set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

: "${PYTHON:=python}"
: "${NPROC:=2}"
: "${TP:=1}"
: "${OUTPUT_DIR:=${TMPDIR:-/tmp}/megatron_pause_cpu}"
: "${CORPUS:=examples/data/sample_corpus.jsonl.gz}"
: "${TOKENIZER_MODEL:=examples/data/sample_tokenizer.model}"
# Preprocessing writes <prefix>_text_document.bin/.idx (the "text" JSON key, as in Megatron-LM).
: "${DATA_PREFIX:=$OUTPUT_DIR/data/sample}"
: "${EXTRA_ARGS=}"

export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [[ ! -f "${DATA_PREFIX}_text_document.bin" || ! -f "${DATA_PREFIX}_text_document.idx" ]]; then
    echo "tokenizing $CORPUS into ${DATA_PREFIX}_text_document.{bin,idx}"
    mkdir -p "$(dirname "$DATA_PREFIX")"
    "$PYTHON" tools/preprocess_data.py \
        --input "$CORPUS" \
        --output-prefix "$DATA_PREFIX" \
        --tokenizer-type SentencePieceTokenizer \
        --tokenizer-model "$TOKENIZER_MODEL" \
        --append-eod \
        --workers 1
fi

read -r -a EXTRA <<< "$EXTRA_ARGS"
ARGS=(
    --model-size tiny
    --tensor-model-parallel-size "$TP"
    --micro-batch-size 4
    --global-batch-size 16
    --train-iters 40
    --lr 1e-3
    --min-lr 1e-4
    --lr-warmup-iters 4
    --pause-fraction 0.1
    --tokenizer-type SentencePieceTokenizer
    --tokenizer-model "$TOKENIZER_MODEL"
    --data-path "${DATA_PREFIX}_text_document"
    --split "98,2,0"
    --save "$OUTPUT_DIR/checkpoints"
    --load "$OUTPUT_DIR/checkpoints"
    --save-interval 20
    --log-interval 5
    --eval-interval 20
    --eval-iters 2
    --metrics-file "$OUTPUT_DIR/metrics.jsonl"
    ${EXTRA[@]+"${EXTRA[@]}"}
)

# torch.distributed.run is torchrun, started from the same interpreter; --standalone picks a
# free local rendezvous port.
exec "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node "$NPROC" \
    -m megatron_pause.pretrain "${ARGS[@]}"
