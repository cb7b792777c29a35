# wmhseg — set-up, tests and the end-to-end demo.
PYTHON      ?= python3.11
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
BIN         := $(VENV)/bin
PY          := $(BIN)/python
STAMP       := $(VENV)/.installed

.PHONY: help install test lint demo demo-clean bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 14

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)  ## create .venv and install wmhseg with its dependencies ($(TORCH_SPEC) first)

test: $(STAMP)  ## run the test suite (CPU, tiny synthetic volumes)
	$(PY) -m pytest -q tests

lint: $(STAMP)  ## ruff
	$(BIN)/ruff check src tests benchmarks train.py infer.py analyze.py

clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache
