# kdmt: `make demo` runs the whole chain on the shipped Multi30k de-en; `make test` runs the checks.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of PyTorch; on a GPU box use the CUDA build you already have: make TORCH=torch ...
TORCH ?= torch==2.13.0
KDMT := $(BIN)/kdmt

DEMO ?= work/demo
M30K := data/multi30k
DEMO_TIME ?= 8m

.PHONY: install test lint demo clean-demo

$(KDMT): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(KDMT)

lint: install
	$(BIN)/ruff check kdmt tests scripts

test: lint
	$(BIN)/python -m pytest -q

# --- the demo: every stage is a file target, so a re-run continues where it stopped -------------------
demo: $(DEMO)/eval.json

$(DEMO)/data/prepare.json: | $(KDMT)
	$(KDMT) prepare --src de --tgt en --train $(M30K)/train --valid $(M30K)/val -o $(DEMO)/data

$(DEMO)/teacher/checkpoint_best.pt: $(DEMO)/data/prepare.json
	$(KDMT) train-teacher --data $(DEMO)/data --out $(DEMO)/teacher --preset small --max-time $(DEMO_TIME) \
		--max-tokens 3000 --warmup 400 --lr 1e-3 --valid-interval 200 --valid-bleu-sents 300 \
		$(if $(wildcard $(DEMO)/teacher/checkpoint_last.pt),--resume)

$(DEMO)/eval.json: $(DEMO)/teacher/checkpoint_best.pt
	$(KDMT) eval $(DEMO)/teacher/checkpoint_best.pt --src $(M30K)/test_2016_flickr.de.gz \
		--ref $(M30K)/test_2016_flickr.en.gz --beam 5 --report $@

clean-demo:
	rm -rf $(DEMO)
