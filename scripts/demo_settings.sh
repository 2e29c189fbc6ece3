#!/usr/bin/env bash
# The demo's settings, chosen on the validation set (Multi30k val), never on test_2016_flickr: `make demo`'s
# teacher and data of one seed, and two alternatives to its students, each scored on val beside the demo's own.
#   greedy-250  the demo as it is: a greedy distillation, students of 250 steps (BASE's students)
#   beam5-250   the training set distilled with beam 5 instead of greedy (the same reference student)
#   greedy-500  students of 500 steps, on references and on the greedy distillation
# Each variant's val/report.json gives its seq-KD student against its reference student, with the paired
# bootstrap's 95% interval and p-value; OUT/seqkd-val.json each variant's seq-KD student against the demo's.
# Usage: scripts/demo_settings.sh BASE OUT SEED
# (BASE: a finished `make demo DEMO=BASE SEED=SEED`; OUT: where the variants go; run from the repository root).
set -euo pipefail
BASE=${1:?a finished make demo directory}
OUT=${2:?where the variants go}
SEED=${3:?the seed BASE was made with}
mkdir -p "$OUT"

variant() {  # NAME, the stages it shares with BASE, make's variables
	local name=$1 shared=$2
	shift 2
	mkdir -p "$OUT/$name"
	for stage in data teacher $shared; do
		[ -e "$OUT/$name/$stage" ] || cp -a "$BASE/$stage" "$OUT/$name/"  # -a keeps the times make compares
	done
	local start=$SECONDS
	make demo-val DEMO="$OUT/$name" SEED="$SEED" "$@"
	grep -q "^$name:" "$OUT/seconds.txt" 2>/dev/null || echo "$name: $((SECONDS - start)) s" >>"$OUT/seconds.txt"
}

variant greedy-250 "distilled student-ref student-seqkd student-seqkd-int8"
variant beam5-250 "student-ref" DISTILL_BEAM=5
variant greedy-500 "distilled" STUDENT_STEPS=500
for name in greedy-250 beam5-250 greedy-500; do
	python3 - "$OUT/$name/val/report.json" "$name" <<'EOF'
import json, sys
rows = {r["model"]: r for r in json.load(open(sys.argv[1]))}
test = rows["student-seqkd"]["vs_baseline"]
cells = [f"{m} {test[m]['delta']:+.2f} ±{test[m]['delta_ci']:.2f} (p={test[m]['p_value']:.3f})" for m in ("bleu", "chrf")]
print(f"{sys.argv[2]}: seq-KD {rows['student-seqkd']['bleu']:.2f} vs references {rows['student-ref']['bleu']:.2f}; " + ", ".join(cells))
EOF
done | tee "$OUT/summary.txt"
# the seq-KD students side by side, the demo's first: each alternative's difference with its interval
[ -e "$OUT/seqkd-val.json" ] || .venv/bin/kdmt eval "$OUT"/{greedy-250,beam5-250,greedy-500}/student-seqkd/checkpoint_best.safetensors \
	--src data/multi30k/val.de.gz --ref data/multi30k/val.en.gz --beam 5 --report "$OUT/seqkd-val.json"
