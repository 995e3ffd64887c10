#!/usr/bin/env bash
# The built-in default: set up, then pause-pretrain a tiny GPT on the repo's
# sample corpus, on CPU, in a few minutes:
#   tokenizer -> preprocess with pauses -> pretrain (validation loss falls) -> checkpoint
# Everything goes under runs/quickstart/ (override with OUT=...).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/quickstart}
TRAIN_ITERS=${TRAIN_ITERS:-250}
PY=.venv/bin/python
# megatron-core warns at import that Transformer Engine and apex are absent: expected on CPU.
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore::UserWarning}

echo "== 1/4 set up .venv (CPU torch, megatron-core 0.19.2)"
bash scripts/setup_env.sh
rm -rf "$OUT" && mkdir -p "$OUT"   # a fresh run each time (metrics are appended)

echo "== 2/4 train a SentencePiece tokenizer with a <pause> symbol on examples/data/sample_corpus.jsonl.gz"
$PY tools/train_tokenizer.py --input examples/data/sample_corpus.jsonl.gz \
  --vocab-size 4000 --output-prefix "$OUT/tokenizer"

echo "== 3/4 preprocess into Megatron's indexed format, inserting pauses (10% of each document)"
$PY tools/preprocess_data.py --input examples/data/sample_corpus.jsonl.gz \
  --tokenizer-type SentencePieceTokenizer --tokenizer-model "$OUT/tokenizer.model" \
  --append-eod --insert-pauses 0.1 --seed 1234 --workers 2 \
  --output-prefix "$OUT/sample"

echo "== 4/4 pretrain the tiny preset on CPU (pauses already in the shards: not inserted twice)"
$PY -m megatron_pause.pretrain \
  --model-size tiny --seq-length 128 \
  --tokenizer-type SentencePieceTokenizer --tokenizer-model "$OUT/tokenizer.model" \
  --data-path "$OUT/sample_text_document" --split 95,5,0 --data-cache-path "$OUT/cache" \
  --micro-batch-size 8 --global-batch-size 16 \
  --lr 3e-3 --min-lr 3e-4 --lr-warmup-iters 20 --lr-decay-style cosine --weight-decay 0.1 --clip-grad 1.0 \
  --train-iters "$TRAIN_ITERS" --eval-interval 50 --eval-iters 4 --log-interval 25 \
  --save "$OUT/checkpoints" --save-interval 125 \
  --metrics-file "$OUT/metrics.jsonl"

echo
echo "tokenizer:   $OUT/tokenizer.model"
echo "dataset:     $OUT/sample_text_document.{bin,idx} (+ .pause.json sidecar, .rejects.jsonl)"
echo "checkpoints: $OUT/checkpoints (latest: $(cat "$OUT/checkpoints/latest_checkpointed_iteration.txt"))"
echo "metrics:     $OUT/metrics.jsonl"
$PY - "$OUT/metrics.jsonl" <<'PYEOF'
import json, sys
valid = [json.loads(l) for l in open(sys.argv[1]) if '"valid"' in l]
if len(valid) >= 2:
    print(f"validation loss: {valid[0]['lm_loss']:.3f} (iteration {valid[0]['iteration']}) -> "
          f"{valid[-1]['lm_loss']:.3f} (iteration {valid[-1]['iteration']})")
PYEOF
