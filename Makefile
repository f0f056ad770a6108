# Two commands for a newcomer (see README):  make reproduce   and   make test
# Both create .venv (Python >= 3.11), install torch 2.13.0 first, then the project with its dev extra.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
MODE   ?= quick

.PHONY: setup test test-all lint reproduce bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is needed, found " + sys.version' 
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest

test-all: setup
	$(BIN)/python -m pytest -m "slow or not slow"

reproduce: setup
	$(BIN)/python -m runners.reproduce $(MODE)

bench: setup
	$(BIN)/python -m runners.reproduce bench

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache
