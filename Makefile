# Every target sets up what it needs first (scripts/bootstrap.sh is idempotent).
.DEFAULT_GOAL := help
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: help setup demo test test-fast lint bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup:  ## install system packages, the virtual environment and the Kafka jars
	@scripts/bootstrap.sh

demo: setup  ## the main job: broker, model on builtin:sensors, worker scoring a live demo stream
	@$(PY) -m scripts.demo

test: setup  ## the whole test suite (unit, contract, integration against real Kafka/Prometheus)
	@$(PY) -m pytest -q --timeout=900

test-fast: setup  ## unit tests only
	@$(PY) -m pytest -q -m "not slow and not integration"

lint: setup  ## ruff and mypy
	@$(VENV)/bin/ruff check anomaly_contract trainer worker tests benchmarks scripts
	@$(VENV)/bin/ruff format --check anomaly_contract trainer worker tests benchmarks scripts
	@$(VENV)/bin/mypy anomaly_contract trainer worker

bench: setup  ## detection quality and throughput benchmarks (figures for the README)
	@$(PY) benchmarks/quality.py
	@$(PY) benchmarks/throughput.py

clean:  ## remove the virtual environment, local broker data and caches
	rm -rf $(VENV) .kafka .pytest_cache
