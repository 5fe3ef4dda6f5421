# Two commands for a fresh machine: `make run` (train with embedded defaults) and `make test` (the whole suite).
# Both create .venv and install the pinned dependencies when missing or when pyproject.toml changed.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=

.PHONY: setup run test test-fast lint format bench clean-state

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "Installing dependencies into $(VENV) (log: $(VENV)/install.log) ..."
	@$(PY) -m pip install --disable-pip-version-check -q -e ".[dev]" > $(VENV)/install.log 2>&1 \
		|| { tail -n 40 $(VENV)/install.log; exit 1; }
	@touch $(STAMP)

## Train the default configuration (the book's chapter 5, three variants) and record it in MLflow.
## Extra flow parameters: make run ARGS="epochs=1000 normalize=zscore"
run: setup
	$(PY) -m flows.run train $(ARGS)

## The whole suite: unit tests, task tests, flow tests and ruff.
test: setup
	$(PY) -m pytest

## Unit tests only (seconds).
test-fast: setup
	$(PY) -m pytest -m "not integration"

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

## Training loops and the whole flow against ../shared/baseline/seed_loops.py, as ratios.
bench: setup
	$(PY) benchmarks/bench_training.py

## Delete local runtime state (Prefect home, MLflow database and artifacts).
clean-state:
	rm -rf .prefect mlflow.db mlartifacts mlruns
