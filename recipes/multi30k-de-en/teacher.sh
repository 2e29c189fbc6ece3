#!/usr/bin/env bash
# Multi30k de→en teacher at full size, for a GPU box: base Transformer (6+6 layers, 512 wide),
# trained until validation BLEU stops improving, the last 5 checkpoints averaged, scored on
# test_2016_flickr. Usage: recipes/multi30k-de-en/teacher.sh [WORK_DIR]   (default work/multi30k-de-en)
set -euo pipefail
WORK=${1:-work/multi30k-de-en}
M30K=data/multi30k

[ -f "$WORK/data/prepare.json" ] || \
  kdmt prepare --src de --tgt en --train $M30K/train --valid $M30K/val -o "$WORK/data" --vocab-size 8000

if [ ! -f "$WORK/teacher/checkpoint_avg.pt" ]; then
  resume=$([ -f "$WORK/teacher/checkpoint_last.pt" ] && echo --resume || true)
  kdmt train-teacher --data "$WORK/data" --out "$WORK/teacher" --preset base --dropout 0.3 \
    --max-tokens 8192 --lr 7e-4 --warmup 2000 --label-smoothing 0.1 --weight-decay 0.0001 \
    --epochs 60 --valid-interval 500 --patience 10 --keep-last 5 --average-last 5 $resume
fi

kdmt eval "$WORK/teacher/checkpoint_best.pt" "$WORK/teacher/checkpoint_avg.pt" \
  --src $M30K/test_2016_flickr.de.gz --ref $M30K/test_2016_flickr.en.gz --beam 5 \
  --report "$WORK/teacher/eval.json"
