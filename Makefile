# `make demo` and `make test` do all set-up on a fresh machine: a .venv in the repo root, the CPU
# build of torch (installed first so nothing pulls a multi-GB CUDA build), then diffvc with dev extras.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all bench bench-anchors venv clean

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

# The benchmarks' anchors, where they install (each step may fail without stopping the others; a
# benchmark whose anchor is missing says so in its JSON): Mitsuba 3 and MuJoCo into .venv, pip
# taichi in its own .venv-taichi (DiffTaichi), and a clone of DiffTaichi's examples (not copied
# into this repository: it has no licence file). See bench/__init__.py for how they are found.
# Mitsuba < 3.9: 3.9's LLVM variants emit llvm.minimum, which the libLLVM of Debian 12 (14-16)
# cannot select (the process aborts in the JIT; seen with libLLVM 14 and 16); 3.8.0 runs on libLLVM 16.
ANCHORS := $(VENV)/.anchors
$(ANCHORS): $(STAMP)
	-$(PY) -m pip install -q "mitsuba>=3.5,<3.9" "mujoco>=3.0"
	-test -x .venv-taichi/bin/python || $(PYTHON) -m venv .venv-taichi
	-.venv-taichi/bin/pip install -q taichi opencv-python-headless matplotlib
	-test -d bench/.anchors/difftaichi || git clone -q --depth 1 https://github.com/taichi-dev/difftaichi bench/.anchors/difftaichi
	touch $(ANCHORS)

bench-anchors: $(ANCHORS)

bench: $(ANCHORS)
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) .venv-taichi out .pytest_cache
