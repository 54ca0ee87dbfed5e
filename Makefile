# `make demo` and `make test` do all set-up on a fresh machine: a .venv in the repo root, the CPU
# build of torch (installed first so nothing pulls a multi-GB CUDA build), then diffvc with dev extras.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all bench venv clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0 || $(PY) -m pip install -q "torch>=2.1"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/diffvc run sysid --quick

test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m ""

bench: $(STAMP)
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) out .pytest_cache
