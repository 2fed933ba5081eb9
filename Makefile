# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
WORKDIR ?= demo-run

# Offline / quiet settings: the CLI and the test suite apply them (tasks/run/offline.py).

.PHONY: demo test lint install install-test chromium clean

# torch first, pinned: a looser requirement would pull the multi-GB CUDA build.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0

$(VENV)/.runtime: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.test: $(VENV)/.runtime
	$(BIN)/pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.runtime
install-test: $(VENV)/.test

demo: install
	$(BIN)/bertflow run --preset tiny --workdir $(WORKDIR)

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# The browser test drives Debian's Chromium; install it where apt works (root), else it is skipped.
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	      || echo "make: apt-get install chromium failed: the browser test will be skipped"; \
	  else echo "make: no chromium and no root apt-get: the browser test will be skipped"; fi; }

# Two xdist workers, whole files each, the longest first (tests/conftest.py): ~40 % of one worker's
# time is spent waiting on servers, subprocesses and files, so two fill the two cores.
test: lint chromium
	$(BIN)/pytest -n 2

clean:
	rm -rf $(WORKDIR)

# GPU check (benchmarks/gpu_check.py): fill the ignored .gpu/ that a lent GPU machine gets through
# `carry`: ~250 Wikipedia files, the five GLUE tasks (gzipped) and cp312 wheels of the packages that
# machine lacks; prints every size and fails over 60 MiB. See BENCHMARKS.md, "GPU".
SHARED_DATA ?= ../shared/data
.PHONY: gpu-data
gpu-data: install
	$(BIN)/python benchmarks/gpu_data.py --shared $(SHARED_DATA) --out .gpu
