#!/usr/bin/env bash
# Multi30k de→en, the whole chain at full size (for a GPU box): two base teachers, the distilled
# corpus of one teacher and of their ensemble, seven students, eval of every model greedy and with
# beam 5, and `kdmt report`. Every stage is skipped when its output is complete, so a re-run after a
# failure continues (training resumes from checkpoint_last.pt).
#
#   recipes/multi30k-de-en/run.sh [WORK_DIR]          # default work/multi30k-de-en
#   SMOKE=1 recipes/multi30k-de-en/run.sh /tmp/smoke  # a few minutes on a CPU: tiny models, 2,000 pairs
set -euo pipefail
WORK=${1:-work/multi30k-de-en}
M30K=data/multi30k
mkdir -p "$WORK"

if [ "${SMOKE:-0}" = 1 ]; then  # the same chain at toy size, to check the recipe itself
  for s in train val; do for l in de en; do (zcat $M30K/$s.$l.gz || true) | head -n 2000 > "$WORK/$s.$l"; done; done
  TRAIN=$WORK/train VALID=$WORK/val VOCAB=2000
  TEACHER="--preset tiny --max-steps 30 --valid-interval 15 --valid-bleu-sents 50"
  STUDENT="--max-steps 20 --valid-interval 10 --valid-bleu-sents 50"
  SMALL="--preset tiny" DEEP="--preset tiny --enc-layers 2 --dec-layers 1" INIT="--preset tiny --enc-layers 2 --dec-layers 1"
else
  TRAIN=$M30K/train VALID=$M30K/val VOCAB=8000
  TEACHER="--preset base --dropout 0.3 --max-tokens 8192 --lr 7e-4 --warmup 2000 --weight-decay 0.0001
           --epochs 60 --valid-interval 500 --patience 10 --keep-last 5 --average-last 5"
  STUDENT="--max-tokens 8192 --lr 1e-3 --warmup 2000 --epochs 60 --valid-interval 500 --patience 10"
  SMALL="--preset small --dropout 0.2"
  DEEP="--preset small --enc-layers 6 --dec-layers 1 --dropout 0.2"
  INIT="--preset base --enc-layers 6 --dec-layers 2 --dropout 0.3"
fi
TEST=(--src $M30K/test_2016_flickr.de.gz --ref $M30K/test_2016_flickr.en.gz)

resume() { [ -f "$1/checkpoint_last.pt" ] && echo --resume || true; }
train() {  # train DIR COMMAND ARGS…: once; DIR/DONE marks a finished run
  local dir=$1; shift
  [ -f "$dir/DONE" ] && return
  kdmt "$@" --data "$WORK/data" --out "$dir" $(resume "$dir")
  touch "$dir/DONE"
}

[ -f "$WORK/data/prepare.json" ] || kdmt prepare --src de --tgt en --train $TRAIN --valid $VALID -o "$WORK/data" --vocab-size $VOCAB

train "$WORK/teacher1" train-teacher $TEACHER --seed 1
train "$WORK/teacher2" train-teacher $TEACHER --seed 2
T1=$WORK/teacher1/checkpoint_best.pt T2=$WORK/teacher2/checkpoint_best.pt

[ -f "$WORK/distilled/train.tgt" ] || kdmt distill -t "$T1" --src "$WORK/data/train.src" -o "$WORK/distilled/train.tgt" --beam 5
[ -f "$WORK/distilled-ens/train.tgt" ] || \
  kdmt distill -t "$T1" -t "$T2" --src "$WORK/data/train.src" -o "$WORK/distilled-ens/train.tgt" --beam 5
D=$WORK/distilled/train.tgt

train "$WORK/student-baseline" train-student $SMALL $STUDENT
train "$WORK/student-seqkd" train-student $SMALL $STUDENT --distilled "$D"
train "$WORK/student-wordkd" train-student $SMALL $STUDENT -t "$T1" --alpha 0.5
train "$WORK/student-seq-wordkd" train-student $SMALL $STUDENT --distilled "$D" -t "$T1" --alpha 0.5
train "$WORK/student-deep-shallow" train-student $DEEP $STUDENT --distilled "$D"
train "$WORK/student-teacher-init" train-student $INIT $STUDENT --distilled "$D" -t "$T1" --init-from-teacher
train "$WORK/student-ensemble" train-student $SMALL $STUDENT --distilled "$WORK/distilled-ens/train.tgt"

MODELS=("$T1" "$T2" "$WORK"/student-*/checkpoint_best.pt)
[ -f "$WORK/eval-greedy.json" ] || kdmt eval "${MODELS[@]}" "${TEST[@]}" --beam 1 --report "$WORK/eval-greedy.json"
[ -f "$WORK/eval-beam5.json" ] || kdmt eval "${MODELS[@]}" "${TEST[@]}" --beam 5 --report "$WORK/eval-beam5.json"
kdmt report "$WORK/eval-greedy.json" "$WORK/eval-beam5.json" -o "$WORK"
