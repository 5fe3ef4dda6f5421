# Two commands for a fresh machine: `make run` (train with embedded defaults) and `make test` (the whole suite).
# Both create .venv and install the pinned dependencies when missing or when pyproject.toml changed.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=

.PHONY: setup run sweep test test-fast lint format bench clean-state

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "Installing dependencies into $(VENV) (log: $(VENV)/install.log) ..."
	@$(PY) -m pip install --disable-pip-version-check -q -e ".[dev]" > $(VENV)/install.log 2>&1 \
		|| { tail -n 40 $(VENV)/install.log; exit 1; }
	@touch $(STAMP)

## Train the default configuration (the book's chapter 5, three variants) and record it in MLflow.
## Extra flow parameters: make run ARGS="epochs=1000 variants=optimizer,manual" (make run ARGS=--help lists them)
run: setup
	$(PY) -m flows.run train $(ARGS)

## The whole suite: unit tests, task tests, flow tests, real-server and browser tests, and ruff. Files run in
## TEST_WORKERS processes at once (most integration tests wait on servers and subprocesses more than they compute);
## TEST_WORKERS=0 runs them one after another.
TEST_WORKERS ?= 4
test: setup chromium postgresql
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

## Unit tests only (seconds).
test-fast: setup
	$(PY) -m pytest -m "not integration"

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

## A sweep: make sweep ARGS='space={"lr": {"low": 1e-5, "high": 1, "log": true, "num": 41}}' (make sweep ARGS=--help)
sweep: setup
	$(PY) -m flows.run sweep $(ARGS)

## Training loops and the whole flow against ../shared/baseline/seed_loops.py, as ratios.
bench: setup
	$(PY) benchmarks/bench_training.py --profile

## Delete local runtime state (Prefect home, MLflow database and artifacts).
clean-state:
	rm -rf .prefect mlflow.db mlflow.db.lock mlartifacts mlruns spool optuna.db optuna.db.lock

# ---- servers, deployments, workers (see README: "Local servers" and "Scheduling") ----------------------------

WORK_POOL ?= thermometer
ENV       := $(PY) -m ops.env

.PHONY: ui stop status deploy worker trigger serve serve-model predict upload chromium postgresql screenshots

## Start a Prefect server (127.0.0.1:4200) and an MLflow server (127.0.0.1:5000) in the background.
ui: setup
	@$(PY) -m ops.servers up

## Stop the servers `make ui` started.
stop: setup
	@$(PY) -m ops.servers down

status: setup
	@$(PY) -m ops.servers status

## Create the work pool if missing, apply prefect.yaml, create the zombie-run automation (needs a Prefect server).
deploy: setup
	@$(ENV) prefect work-pool inspect $(WORK_POOL) > /dev/null 2>&1 \
		|| $(ENV) prefect work-pool create $(WORK_POOL) --type process
	$(ENV) prefect --no-prompt deploy --all
	$(ENV) $(PY) -m ops.automations

## Start a worker for the pool; it runs scheduled and triggered flow runs (make worker WORKER_LIMIT=2: at most
## two at once, leaving the others to the pool's other workers).
WORKER_LIMIT ?=
worker: setup
	$(ENV) prefect worker start --pool $(WORK_POOL) --type process $(if $(WORKER_LIMIT),--limit $(WORKER_LIMIT))

## Start a run of a deployment now (make trigger DEPLOYMENT=train/weekly-adam); a worker or `make serve` runs it.
DEPLOYMENT ?= train/nightly
trigger: setup
	$(ENV) prefect deployment run $(DEPLOYMENT)

## Serve every deployment in prefect.yaml from this one process, on its schedule (no work pool needed).
serve: setup
	$(ENV) $(PY) -m flows.serve

## Serve models:/$(MODEL)@champion over HTTP on 127.0.0.1:$(MODEL_PORT) (MLflow's scoring server, this .venv).
MODEL      ?= thermometer
MODEL_HOST ?= 127.0.0.1
MODEL_PORT ?= 5001
serve-model: setup
	$(ENV) --no-prefect mlflow models serve -m "models:/$(MODEL)@champion" --env-manager local \
		--host $(MODEL_HOST) --port $(MODEL_PORT) --workers 1

## Batch prediction: make predict ARGS="data=data/readings.csv alias=champion"
predict: setup
	$(PY) -m flows.run predict $(ARGS)

## Record results that MLflow could not take during a run (kept in spool/ until then).
upload: setup
	$(PY) -m ops.upload

## Debian's chromium, for the browser tests and screenshots (installed when missing).
chromium:
	@command -v chromium > /dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium > /dev/null; }

## Debian's PostgreSQL server binaries, for the tests' throwaway cluster when nothing listens on 127.0.0.1:5432
## (installed when initdb is missing; the system service is not started: a policy-rc.d forbids it meanwhile).
postgresql:
	@command -v initdb > /dev/null || ls /usr/lib/postgresql/*/bin/initdb > /dev/null 2>&1 || { \
		policy=/usr/sbin/policy-rc.d; ours=; \
		if [ ! -e $$policy ]; then printf '#!/bin/sh\nexit 101\n' > $$policy && chmod +x $$policy && ours=1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql > /dev/null; \
		rc=$$?; if [ -n "$$ours" ]; then rm -f $$policy; fi; exit $$rc; }

## Screenshots of both UIs for the README (needs `make ui` and one completed deployment run).
screenshots: setup chromium
	$(PY) -m ops.screenshots
