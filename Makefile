# `make test` and `make bench` create .venv when missing, install the project with its test
# extras, then run. Only onnxruntime-gpu is installed (through nvidia-modelopt[onnx]): never add
# plain onnxruntime beside it, both provide the `onnxruntime` module.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST := $(PY) -m pytest

.PHONY: test test-fast lint bench ci-bench bench-host gpu-test clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test,lint]'
	touch $@

# `make test`: the whole suite, one pytest-xdist worker per core, the 15 slowest tests listed at the
# end. `make test-fast`: the edit loop, tests not marked `slow` (no ModelOpt build, no Ultralytics
# export, no `pytest bench` subprocess session, no evaluation of more than a few images).
TEST_WORKERS ?= $(shell nproc)
TEST_ARGS ?=

test: $(VENV)/.installed
	$(PYTEST) tests -q -n $(TEST_WORKERS) --durations=15 $(TEST_ARGS)

test-fast: $(VENV)/.installed
	$(PYTEST) tests -q -n $(TEST_WORKERS) -m "not slow" --durations=5 $(TEST_ARGS)

# ruff (rules and why: pyproject.toml [tool.ruff]) over the repository, mypy over the package.
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# `make bench`: one serial pytest session that times with pytest-benchmark (which switches itself
# off under pytest-xdist). --qb-build-workers makes it first run `pytest bench -n N -m accuracy`
# for whatever the caches lack (ModelOpt builds, engines, accuracy), in parallel, then time; a
# re-run with nothing changed starts no parallel phase and only times. The selection lands in reports/.
# BENCH_ARGS reaches the session, e.g. make bench BENCH_ARGS="--qb-batch-sizes 1,8 --qb-min-time 10".
BENCH_WORKERS ?= 2
BENCH_ARGS ?=
CI_BENCH_ARGS = --qb-backend onnxruntime --qb-eval-images 100 --qb-calib-images 64 \
	--qb-variants fp32,int8-max,int8-entropy-head-fp16 --qb-warmup 2 --qb-rounds 10 --qb-min-time 0

bench: $(VENV)/.installed
	$(PYTEST) bench --qb-build-workers $(BENCH_WORKERS) --benchmark-json=reports/benchmark.json $(BENCH_ARGS)

# CI: the same on the CPU with the offline assets (the default model, the COCO-trained yolo11n-coco;
# 100 eval / 64 calibration images, three variants besides the fp16 baseline; int8-max is not gated),
# 10 timed rounds per variant.
ci-bench: BENCH_ARGS = $(CI_BENCH_ARGS)
ci-bench: bench

# The host pipeline alone (decode, NMS, COCO scoring) with a model's real outputs replayed, the
# reference pipeline of earlier releases beside the default one; its own folder, so `make bench`
# never runs it. HOST_ARGS reaches pytest, e.g. make bench-host HOST_ARGS="--host-images 200".
HOST_ARGS ?=

bench-host: $(VENV)/.installed
	mkdir -p reports
	$(PYTEST) bench_host -p no:cacheprovider --benchmark-json=reports/host_pipeline.json $(HOST_ARGS)

# Needs an NVIDIA GPU and internet (pip fetches tensorrt + cuda-python). TensorRT tests skip
# with "tensorrt not installed" where it is missing; CUDA tests skip without a device.
gpu-test: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test,trt]'
	$(PYTEST) tests -m "gpu or tensorrt" -v -rs

clean:
	rm -rf .quantbench-cache reports .benchmarks
