# Every target sets up what it needs first (scripts/bootstrap.sh is idempotent).
.DEFAULT_GOAL := help
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: help setup demo test test-fast lint bench bench-setup clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup:  ## install system packages, the virtual environment and the Kafka jars
	@scripts/bootstrap.sh

demo: setup  ## the main job: broker, model on builtin:sensors, worker scoring a live demo stream
	@$(PY) -m scripts.demo

test: setup  ## the whole test suite (unit, contract, integration against real Kafka/Prometheus)
	@$(PY) -m pytest -q --timeout=900 --durations=40

test-fast: setup  ## unit tests only
	@$(PY) -m pytest -q -m "not slow and not integration"

lint: setup  ## ruff and mypy
	@$(VENV)/bin/ruff check anomaly_contract trainer worker tests benchmarks scripts
	@$(VENV)/bin/ruff format --check anomaly_contract trainer worker tests benchmarks scripts
	@$(VENV)/bin/mypy anomaly_contract trainer worker

# The bench extra's requirements (read from pyproject.toml) go into the venv without reinstalling
# the project itself (pip install -e ".[bench]" would re-point its editable install to this tree).
bench-setup:  ## PyOD and torch for the quality benchmarks' baselines (~3 GB; not needed by tests)
	@test -x $(PY) || { echo "bench-setup: run make setup first"; exit 1; }
	@$(PY) -m pip install -q $$($(PY) -c 'import tomllib; \
		print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["bench"]))')
	@$(PY) -c 'import torch, pyod; torch.set_num_threads(1); \
		print("bench-setup: pyod", pyod.__version__, "torch", torch.__version__, "on", "cpu" if not torch.cuda.is_available() else "cuda", torch.ones(2).sum().item())'

bench: setup  ## detection quality and throughput benchmarks (figures for the README)
	@$(PY) benchmarks/quality.py
	@$(PY) benchmarks/throughput.py

clean:  ## remove the virtual environment, local broker data and caches
	rm -rf $(VENV) .kafka .pytest_cache
