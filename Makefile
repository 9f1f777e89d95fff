# `make test` and `make bench` create .venv when missing, install the project with its test
# extras, then run. Only onnxruntime-gpu is installed (through nvidia-modelopt[onnx]): never add
# plain onnxruntime beside it, both provide the `onnxruntime` module.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST := $(PY) -m pytest

.PHONY: test bench ci-bench gpu-test clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

test: $(VENV)/.installed
	$(PYTEST) tests -q

# `make bench`: phase 1 builds every variant and measures its accuracy in BENCH_WORKERS parallel
# processes (each artefact built once, results kept in the cache); phase 2 runs serially, finds
# everything in the caches, times with pytest-benchmark (which switches itself off under
# pytest-xdist) and writes the selection into reports/. Phase 2 repeats phase 1's verdicts, so
# phase 1's exit status does not gate ('-').
# BENCH_ARGS reaches both phases, e.g. make bench BENCH_ARGS="--qb-batch-sizes 1,8".
BENCH_WORKERS ?= 2
BENCH_ARGS ?=
CI_BENCH_ARGS = --qb-backend onnxruntime --qb-eval-images 100 --qb-calib-images 64 \
	--qb-variants fp32,int8-max,int8-entropy-head-fp16 --qb-warmup 2 --qb-rounds 10

bench: $(VENV)/.installed
	-$(PYTEST) bench -n $(BENCH_WORKERS) -m accuracy $(BENCH_ARGS)
	$(PYTEST) bench --benchmark-json=reports/benchmark.json $(BENCH_ARGS)

# CI: the same two phases on the CPU with the offline assets (yolov5n-coco, 100 eval / 64
# calibration images, three variants besides the fp16 baseline; int8-max is not gated).
ci-bench: BENCH_ARGS = $(CI_BENCH_ARGS)
ci-bench: bench

# Needs an NVIDIA GPU and internet (pip fetches tensorrt + cuda-python). TensorRT tests skip
# with "tensorrt not installed" where it is missing; CUDA tests skip without a device.
gpu-test: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test,trt]'
	$(PYTEST) tests -m "gpu or tensorrt" -v -rs

clean:
	rm -rf .quantbench-cache reports .benchmarks
