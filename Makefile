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

# Needs an NVIDIA GPU and internet (pip fetches tensorrt + cuda-python). TensorRT tests skip
# with "tensorrt not installed" where it is missing; CUDA tests skip without a device.
gpu-test: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test,trt]'
	$(PYTEST) tests -m "gpu or tensorrt" -v -rs

clean:
	rm -rf .quantbench-cache reports .benchmarks
