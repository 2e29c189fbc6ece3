# kdmt: `make demo` runs the whole chain on the shipped Multi30k de-en; `make test` runs the checks.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch; on a GPU box use the CUDA build you already have: make TORCH=torch ...
TORCH ?= torch==2.13.0
KDMT := $(BIN)/kdmt

DEMO ?= work/demo
M30K := data/multi30k

.PHONY: install test lint demo demo-val clean-demo recipe

$(KDMT): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev,export,mbr]"
	touch $@

install: $(KDMT)

lint: install
	$(BIN)/ruff check kdmt tests scripts

test: lint
	$(BIN)/python -m pytest -q -n auto

# --- the demo: every stage is a file target, so a re-run continues where it stopped -------------------
# On 2 CPU cores: a small teacher, a beam-5 distillation of the training set (degenerate outputs filtered),
# two tiny students (references; distilled, the reference standing in for filtered lines), all three scored
# on test_2016_flickr and reported. Training is bounded by steps, so the figures reproduce on any machine.
# A training stage is complete when its DONE marker exists: after an interruption the next `make demo`
# resumes it from checkpoint_last.safetensors instead of going on with a half-trained model.
TEST_SRC := $(M30K)/test_2016_flickr.de.gz
TEST_REF := $(M30K)/test_2016_flickr.en.gz
SEED ?= 1
TEACHER_STEPS ?= 330
STUDENT_STEPS ?= 250
DISTILL_BEAM ?= 5  # chosen on the validation set against greedy (scripts/demo_settings.sh, docs/results.md)
TEACHER := --preset small --max-steps $(TEACHER_STEPS) --max-tokens 3000 --warmup 200 --lr 2e-3 \
	--valid-interval 110 --valid-bleu-sents 300 --seed $(SEED)
STUDENT := --preset tiny --d-model 128 --d-ff 512 --enc-layers 3 --dec-layers 1 --max-steps $(STUDENT_STEPS) \
	--max-tokens 3000 --warmup 150 --lr 2e-3 --valid-interval 125 --valid-bleu-sents 300 --seed $(SEED)
resume = $(if $(wildcard $(1)/checkpoint_last.safetensors),--resume)

demo: $(DEMO)/report.json $(DEMO)/val/report.json

$(DEMO)/data/prepare.json: | $(KDMT)
	$(KDMT) prepare --src de --tgt en --train $(M30K)/train --valid $(M30K)/val -o $(DEMO)/data

$(DEMO)/teacher/DONE: $(DEMO)/data/prepare.json
	$(KDMT) train-teacher --data $(DEMO)/data --out $(@D) $(TEACHER) $(call resume,$(@D))
	touch $@

$(DEMO)/distilled/train.tgt: $(DEMO)/teacher/DONE
	$(KDMT) distill -t $(DEMO)/teacher/checkpoint_best.safetensors --src $(DEMO)/data/train.src -o $@ --beam $(DISTILL_BEAM) --shard-size 5000

$(DEMO)/student-ref/DONE: $(DEMO)/data/prepare.json
	$(KDMT) train-student --data $(DEMO)/data --out $(@D) $(STUDENT) $(call resume,$(@D))
	touch $@

$(DEMO)/student-seqkd/DONE: $(DEMO)/distilled/train.tgt
	$(KDMT) train-student --data $(DEMO)/data --out $(@D) --distilled $< --fallback-ref $(STUDENT) \
		$(call resume,$(@D))
	touch $@

DEMO_MODELS := $(DEMO)/teacher/checkpoint_best.safetensors $(DEMO)/student-ref/checkpoint_best.safetensors \
	$(DEMO)/student-seqkd/checkpoint_best.safetensors $(DEMO)/student-seqkd-int8

# the seq-KD student as it would ship: CTranslate2, int8 weights
$(DEMO)/student-seqkd-int8/kdmt_export.json: $(DEMO)/student-seqkd/DONE
	$(KDMT) export $(DEMO)/student-seqkd/checkpoint_best.safetensors -o $(@D) --quantization int8 --force

$(DEMO)/eval.json: $(DEMO)/teacher/DONE $(DEMO)/student-ref/DONE $(DEMO)/student-seqkd-int8/kdmt_export.json
	$(KDMT) eval $(DEMO_MODELS) --src $(TEST_SRC) --ref $(TEST_REF) --beam 1 --report $(DEMO)/eval-greedy.json
	$(KDMT) eval $(DEMO_MODELS) --src $(TEST_SRC) --ref $(TEST_REF) --beam 5 --report $@

$(DEMO)/report.json: $(DEMO)/eval.json
	$(KDMT) report $(DEMO)/eval-greedy.json $< -o $(DEMO) --baseline student-ref

# the same models on the validation set: where settings are chosen (test_2016_flickr only reports them)
VAL_SRC := $(M30K)/val.de.gz
VAL_REF := $(M30K)/val.en.gz
$(DEMO)/eval-val.json: $(DEMO)/teacher/DONE $(DEMO)/student-ref/DONE $(DEMO)/student-seqkd-int8/kdmt_export.json
	$(KDMT) eval $(DEMO_MODELS) --src $(VAL_SRC) --ref $(VAL_REF) --beam 5 --report $@

$(DEMO)/val/report.json: $(DEMO)/eval-val.json
	$(KDMT) report $< -o $(@D) --baseline student-ref

# the demo's models on the validation set alone: where its settings were chosen (scripts/demo_settings.sh)
demo-val: $(DEMO)/val/report.json

clean-demo:
	rm -rf $(DEMO)

# --- a recipe (recipes/RECIPE/Makefile, multi30k-de-en by default): SIZE=gpu (default), cpu or smoke -------
SIZE ?= gpu
RECIPE ?= multi30k-de-en
recipe: | $(KDMT)
	$(MAKE) -f recipes/$(RECIPE)/Makefile SIZE=$(SIZE) KDMT=$(KDMT) -j$(if $(filter gpu,$(SIZE)),1,2)
