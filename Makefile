# aot-handbook: every target sets up what it needs, then runs.
#   make test                       the offline CPU suite
#   make train [RECIPE=...]         train (default: the tiny offline pipeline)
# Use your own Python environment with PYTHON=/path/to/python (no virtualenv is made then).

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
# The torch build installed when the environment has none. 2.13.0 is the version tested;
# on Linux PyPI serves its CUDA build. Set TORCH="torch==2.13.0+cu128 --index-url ..." as you need.
TORCH ?= torch==2.13.0
ifdef PYTHON
  PY := $(PYTHON)
  STAMP := .cache/deps-installed-$(subst /,_,$(PYTHON))
else
  PY := $(VENV)/bin/python
  STAMP := $(VENV)/.deps-installed
endif

RECIPE ?= recipes/tiny/aot_unpaired.yaml
ARGS ?=
PYTEST_ARGS ?=
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1

.PHONY: help setup test train

help:
	@echo "make test | make train [RECIPE=recipes/...yaml] [ARGS='--key value ...']"

$(STAMP): setup.cfg pyproject.toml
	@mkdir -p .cache
	@test -x "$(PY)" || python3 -m venv "$(VENV)"
	@"$(PY)" -c "import torch" 2>/dev/null || "$(PY)" -m pip install $(TORCH)
	"$(PY)" -m pip install -q -e ".[test]"
	@touch "$@"

setup: $(STAMP)

test: $(STAMP)
	$(OFFLINE) "$(PY)" -m pytest $(PYTEST_ARGS)

train: $(STAMP)
	"$(PY)" scripts/train.py $(RECIPE) $(ARGS)
