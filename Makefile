# `make test` and `make bench` create .venv when missing, install the project with its test
# extras, then run. Only onnxruntime-gpu is installed (through nvidia-modelopt[onnx]): never add
# plain onnxruntime beside it, both provide the `onnxruntime` module.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST := $(PY) -m pytest

.PHONY: test bench gpu-test clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

test: $(VENV)/.installed
	$(PYTEST) tests -q

bench: $(VENV)/.installed
	$(PYTEST) bench --benchmark-json=reports/benchmark.json

gpu-test: $(VENV)/.installed
	$(PYTEST) tests -m gpu -v

clean:
	rm -rf .quantbench-cache reports .benchmarks
