# Set-up and entry points. `make demo` and `make test` each create the virtual
# environment on first use, so either one works on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
# The torch pin is installed with the package: the same pin resolves to the CPU wheel on
# CPU-only machines and to the CUDA build on GPU machines. A loose requirement would pull
# CUDA packages.
TORCH ?= torch==2.13.0
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: setup demo test lint format clean-demo

$(VENV)/.installed: setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# --no-compile: a module is byte-compiled when it is first imported, not every module
	# of torch and transformers at install time (about 20 s less on 2 cores)
	$(BIN)/python -m pip install --quiet --no-compile "$(TORCH)" -e ".[test,teachers]"
	touch $@

setup: $(VENV)/.installed

# Main job: the EKD + TAKD chain at CPU size on the embedded Multi30k, then the table.
demo: setup
	$(BIN)/evokd chain --plan tiny

test: setup lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests

lint: setup
	$(BIN)/ruff check evokd tests
	$(BIN)/ruff format --check evokd tests

format: setup
	$(BIN)/ruff format evokd tests
	$(BIN)/ruff check --fix evokd tests
