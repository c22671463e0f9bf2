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

# The installed modules are byte-compiled once, on every core (pip compiles one file at a
# time; where PYTHONDONTWRITEBYTECODE is set, nothing is compiled later and every process
# would compile torch again). Like pip, a file that does not compile is left as it is.
SITE = $$($(BIN)/python -c "import sysconfig; print(sysconfig.get_path('purelib'))")

$(VENV)/.installed: setup.py pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile "$(TORCH)" -e ".[test,teachers]"
	$(BIN)/python -m compileall -q -j 0 "$(SITE)" >/dev/null 2>&1 || true
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
