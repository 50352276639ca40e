# Two entry points for a fresh machine with Python 3.11+:
#   make demo   create .venv, install, generate the synthetic demo and run it
#   make test   create .venv, install with the dev extra, run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The package alone runs the demo; the dev extra adds the test and lint tools.
BASE_STAMP := $(VENV)/.installed-base
DEV_STAMP := $(VENV)/.installed-dev
export LITELLM_LOCAL_MODEL_COST_MAP := True

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(BASE_STAMP): pyproject.toml | $(BIN)/python
	@echo "installing medground into $(VENV) (first run only, about a minute)"
	$(BIN)/python -m pip install --quiet -e .
	touch $(BASE_STAMP)

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	@echo "installing medground with its dev extra into $(VENV) (first run only, a few minutes)"
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(DEV_STAMP) $(BASE_STAMP)

.PHONY: install demo test lint
install: $(BASE_STAMP)

demo: $(BASE_STAMP)
	$(BIN)/mgr demo demo-data --force
	$(BIN)/mgr run demo-data/demo.yaml --out out

test: $(DEV_STAMP)
	$(BIN)/python -m pytest -q

lint: $(DEV_STAMP)
	$(BIN)/ruff check engine tests bench
	$(BIN)/mypy engine/medground
