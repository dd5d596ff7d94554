# Two commands on a fresh machine: `make demo` and `make test`. Both set everything up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
WITH_RAY ?= 0
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast test-slow lint format bench clean

setup: $(STAMP)

# torch first, pinned to the local CPU build, so nothing later pulls a CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "torch==$(TORCH_VERSION)"
	$(PIP) install --quiet -e ".[dev]"
	if [ "$(WITH_RAY)" = "1" ]; then $(PIP) install --quiet --only-binary=ray "ray>=2.9" \
	  || echo "no ray wheel for this platform: the Ray executor tests skip"; fi
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/prunelab demo --out runs/demo

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/pytest -q -m "not slow"

test-slow: $(STAMP)
	$(VENV)/bin/pytest -q -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/masked_training_overhead.py
	PRUNELAB_DATA=$${PRUNELAB_DATA:-../shared/data} $(PY) benchmarks/mnist_gmp.py
	$(PY) benchmarks/sweep_parallel.py

clean:
	rm -rf $(VENV) runs .pytest_cache
