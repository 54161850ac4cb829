# catsdogs: every user-facing and Jenkins step is a target here.
#   make install   -> .venv with pinned deps (+ Java check)
#   make pipeline  -> dvc repro on params.yaml (synthetic data by default)
#   make test      -> the whole test suite (unit + slow + integration)
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
export PYTHONUNBUFFERED := 1
# dvc.yaml's commands say `python ...`: the venv's python first on PATH, no activation needed.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# MLflow: $MLFLOW_TRACKING_URI when set, else the default of catsdogs/contract.py (a local SQLite store).
# The model name, its archive and the TorchServe run directory, for every mk/*.mk (params.yaml serve.model_name):
MODEL_NAME := $(shell $(if $(wildcard $(PY)),$(PY),python3) -c 'from catsdogs.contract import model_name; print(model_name())' 2>/dev/null)
MAR ?= model-store/$(MODEL_NAME).mar
SERVE_DIR ?= .serve

.PHONY: help install check-java pipeline synthesize prepare train evaluate export archive \
        test test-unit test-integration lint serve stop ready loadtest loadtest-ramp loadtest-soak \
        loadtest-fault benchmark benchmark-serving benchmark-engines deploy rollback deploy-status validate-docker \
        validate-compose validate-jenkinsfile validate-monitoring validate clean

help: ## list targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-22s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install pinned dependencies
$(STAMP): requirements.txt pyproject.toml
	@bash scripts/check_java.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

check-java: ## fail with instructions when Java 17+ is missing (TorchServe needs it)
	@bash scripts/check_java.sh

pipeline: $(STAMP) ## run the whole DVC pipeline (dvc repro) on params.yaml
	$(BIN)/dvc repro

synthesize prepare train evaluate export archive: $(STAMP) ## run one DVC stage (and what it depends on)
	$(BIN)/dvc repro $@

test: $(STAMP) ## the whole test suite: unit, slow and integration (what CI runs)
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: $(STAMP) ## fast tests only, JUnit XML in reports/junit-unit.xml
	$(BIN)/pytest -m "not slow and not integration" --junitxml=reports/junit-unit.xml $(PYTEST_ARGS)

test-integration: $(STAMP) ## slow + integration tests, JUnit XML in reports/junit-integration.xml
	$(BIN)/pytest -m "slow or integration" --junitxml=reports/junit-integration.xml $(PYTEST_ARGS)

lint: $(STAMP) ## ruff over the code
	$(BIN)/ruff check .

clean: ## remove generated data, models, reports (keeps .venv and mlflow.db)
	rm -rf data artifacts model-store reports logs .serve

# Areas add their targets in mk/*.mk (serving, loadtest, deploy, infra, monitoring).
-include mk/*.mk
