#!/usr/bin/env bash
# The built-in default, part 2: pause-finetune the quickstart model (examples/quickstart.sh) on the
# bundled prompt/answer set, on CPU, in a few minutes:
#   examples/data/sample_sft_{train,valid}.jsonl.gz (from the PSF-licensed sample corpus:
#   "which standard-library module is this text from?") -> 10 <pause> tokens after each prompt,
#   loss on the answer only -> answer loss and teacher-forced accuracy on the validation set.
# Reads runs/quickstart/ (OUT=...), running examples/quickstart.sh first if it is not there.
# FINETUNE_PAUSES=0 gives standard finetuning of the same model, for comparison.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/quickstart}
FINETUNE_PAUSES=${FINETUNE_PAUSES:-10}
TRAIN_ITERS=${TRAIN_ITERS:-100}
FT_OUT="$OUT/finetune-m$FINETUNE_PAUSES"
PY=${PY:-.venv/bin/python}
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore::UserWarning}

if [[ ! -f "$OUT/checkpoints/latest_checkpointed_iteration.txt" ]]; then
    echo "== no pretrained quickstart model under $OUT: running examples/quickstart.sh first"
    OUT="$OUT" bash examples/quickstart.sh
fi
rm -rf "$FT_OUT" && mkdir -p "$FT_OUT"

echo "== pause-finetune $OUT/checkpoints with $FINETUNE_PAUSES pauses after each prompt"
$PY -m megatron_pause.finetune \
  --model-size tiny --seq-length 128 \
  --tokenizer-type SentencePieceTokenizer --tokenizer-model "$OUT/tokenizer.model" \
  --load "$OUT/checkpoints" --finetune \
  --train-data-path examples/data/sample_sft_train.jsonl.gz \
  --valid-data-path examples/data/sample_sft_valid.jsonl.gz \
  --finetune-pauses "$FINETUNE_PAUSES" \
  --micro-batch-size 8 --global-batch-size 16 \
  --lr 1e-3 --min-lr 1e-4 --lr-warmup-iters 10 --lr-decay-style cosine --weight-decay 0.1 --clip-grad 1.0 \
  --train-iters "$TRAIN_ITERS" --eval-interval 50 --log-interval 25 \
  --save "$FT_OUT/checkpoints" --metrics-file "$FT_OUT/metrics.jsonl"

echo
echo "checkpoints: $FT_OUT/checkpoints"
echo "metrics:     $FT_OUT/metrics.jsonl"
$PY - "$FT_OUT/metrics.jsonl" <<'PYEOF'
import json, sys
valid = [json.loads(l) for l in open(sys.argv[1]) if '"valid"' in l]
if valid:
    first, last = valid[0], valid[-1]
    print(f"validation answer loss: {first['lm_loss']:.3f} -> {last['lm_loss']:.3f}, "
          f"answer-token accuracy: {first['accuracy']:.3f} -> {last['accuracy']:.3f} "
          f"(iterations {first['iteration']} -> {last['iteration']}, {last['tokens']} answer tokens)")
PYEOF
