# Two entry points for a fresh machine: `make run` (main job) and `make test` (test suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: help setup run test test-fast lint ui

$(BIN)/hybrid-rag: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

help:  ## this list
	@awk -F ':.*## ' '/^[a-z-]+:.*## /{printf "%-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: $(BIN)/hybrid-rag  ## create .venv and install the project with its dev extras (pins: constraints.txt)

run: setup  ## ingest the sample corpus, build the index, evaluate, print the metrics (embedded Qdrant)
	$(BIN)/hybrid-rag run

lint: setup  ## ruff check, ruff format --check and the import layers (lint-imports: the contracts in pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

test: lint  ## lint, then the whole test suite on 2 workers, a module each (progress bars off: they would flood the log)
	TQDM_DISABLE=1 OMP_NUM_THREADS=1 $(BIN)/pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=30

test-fast: setup  ## the tests not marked slow (ONNX export, training, benchmarks, subprocesses, Dagster runs): < 3 min
	TQDM_DISABLE=1 $(BIN)/pytest -m "not slow"

ui: setup  ## the Dagster UI on http://127.0.0.1:3000 (the project's instance: the runs of `make run` show up)
	$(BIN)/hybrid-rag ui
