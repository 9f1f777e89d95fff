"""The TensorRT backend: cache keys, profiles, version branching and errors on the CPU; the runner's
CUDA plumbing on a GPU behind a TensorRT stand-in; real TensorRT builds where ``tensorrt`` is installed.

Mocks exist only at the TensorRT boundary and are named so (``fake_tensorrt_*``, ``FakeTrtEngine``):
TensorRT cannot be installed in the workplace these tests were written in. The fake generated from
the real bindings' API surfaces, and the backend's whole flow on it, are in ``test_trt_surface.py``
and ``test_trt_fake_flow.py``.
"""

from __future__ import annotations

import importlib.util
import sys
import time
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantbench.backends import BackendKind, BuildOptions, Engine, cuda, resolve_backend
from quantbench.backends.trt import (
    DEFAULT_IMGSZ,
    TensorRTBackend,
    engine_cache_key,
    onnx_imgsz,
    profile_shapes,
    timing_cache_path,
)
from quantbench.backends.trt_version import TrtApi
from quantbench.cache import ArtifactCache, sha256_file
from quantbench.errors import BackendError, BackendUnavailable, ConfigError, ModelError


def _tensorrt_skip_reason() -> str | None:
    """Like pytest.importorskip, for a whole group of tests, with the exact reason CI expects."""
    if importlib.util.find_spec("tensorrt") is None:
        return "tensorrt not installed"
    no_gpu = cuda.device_unavailable_reason()
    return f"needs a CUDA device: {no_gpu}" if no_gpu else None


TENSORRT_SKIP = _tensorrt_skip_reason()
requires_tensorrt = pytest.mark.skipif(TENSORRT_SKIP is not None, reason=TENSORRT_SKIP or "")
NO_GPU = cuda.device_unavailable_reason()
requires_gpu = pytest.mark.skipif(NO_GPU is not None, reason=f"needs a CUDA device: {NO_GPU}")
H100 = cuda.GpuInfo(0, "NVIDIA H100 80GB HBM3", (9, 0), 80 << 30)


# --- tiny ONNX models built here ---------------------------------------------------------------------


def tiny_conv_onnx(path: Path, *, qdq: bool = False) -> np.ndarray:
    """A 3->8 channel 3x3 conv, dynamic batch, 32x32 input; with ``qdq`` a ModelOpt-style Q/DQ pair on
    the activation and an INT8 weight behind a DequantizeLinear. Returns the float weight."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    inits = []
    if qdq:
        w_scale = np.abs(w).max(axis=(1, 2, 3)) / 127
        w_int8 = np.clip(np.round(w / w_scale[:, None, None, None]), -127, 127).astype(np.int8)
        nodes = [
            helper.make_node("QuantizeLinear", ["images", "x_scale", "x_zero"], ["x_q"], name="/conv/input_quantizer/QuantizeLinear"),
            helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"], name="/conv/input_quantizer/DequantizeLinear"),
            helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w_dq"], name="/conv/weight_quantizer/DequantizeLinear", axis=0),
            helper.make_node("Conv", ["x_dq", "w_dq"], ["y"], name="/conv/Conv", pads=[1, 1, 1, 1]),
        ]
        inits = [
            numpy_helper.from_array(np.array(1 / 127, np.float32), "x_scale"),
            numpy_helper.from_array(np.array(0, np.int8), "x_zero"),
            numpy_helper.from_array(w_int8, "w_q"),
            numpy_helper.from_array(w_scale.astype(np.float32), "w_scale"),
            numpy_helper.from_array(np.zeros(8, np.int8), "w_zero"),
        ]
        w = (w_int8 * w_scale[:, None, None, None]).astype(np.float32)
    else:
        nodes = [helper.make_node("Conv", ["images", "w"], ["y"], name="/conv/Conv", pads=[1, 1, 1, 1])]
        inits = [numpy_helper.from_array(w, "w")]
    nodes.append(helper.make_node("Reshape", ["y", "shape"], ["output0"], name="/head/Reshape"))
    inits.append(numpy_helper.from_array(np.array([0, 8, -1], np.int64), "shape"))
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", 8, 1024])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    onnx.save(model, path)
    return w


def conv_reference(w: np.ndarray, batch: np.ndarray) -> np.ndarray:
    padded = np.pad(batch, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))  # n,c,h,w,3,3
    return np.einsum("nchwij,ocij->nohw", windows, w).reshape(batch.shape[0], 8, -1)


# --- availability and `auto` ------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_without_tensorrt_the_reason_says_how_to_install_it_and_auto_uses_onnxruntime():
    reason = TensorRTBackend.unavailable_reason()
    assert reason is not None and reason.startswith("tensorrt is not installed (pip install tensorrt")
    cls, fallback = resolve_backend("auto")
    assert cls.kind is BackendKind.ONNXRUNTIME and fallback == reason
    with pytest.raises(BackendUnavailable, match="tensorrt is not installed"):
        resolve_backend("tensorrt")


def test_defect4_a_tensorrt_whose_libraries_do_not_load_is_not_called_missing(tmp_path, monkeypatch):
    """The bindings' tensorrt.so NEEDs libnvinfer.so.N; when it is absent Python raises ImportError, not OSError."""
    package = tmp_path / "tensorrt"
    package.mkdir()
    (package / "__init__.py").write_text(
        'raise ImportError("libnvinfer.so.10: cannot open shared object file: No such file or directory")\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    reason = TensorRTBackend.unavailable_reason()
    assert reason.startswith("tensorrt is installed but does not load (libnvinfer.so.10: cannot open shared object file")
    assert "install TensorRT's libraries" in reason


def test_defect7_the_trt_extras_match_a_cuda_major_each():
    """`tensorrt` 11.x pulls the CUDA 13 build only and an unpinned cuda-python resolves to 13.x."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras["trt-cu12"]) == {"tensorrt-cu12>=10.0", "cuda-python>=12.3,<13"}
    assert set(extras["trt-cu13"]) == set(extras["trt"]) == {"tensorrt-cu13>=10.0", "cuda-python>=13,<14"}
    docs = (root / "docs" / "tensorrt.md").read_text()
    assert ".[test,trt-cu12]" in docs and ".[test,trt]" in docs and "CUDA 12" in docs


def fake_tensorrt_module(version: str) -> types.ModuleType:
    """Mock at the TensorRT boundary: a `tensorrt` module that only carries a version."""
    module = types.ModuleType("tensorrt")
    module.__version__ = version
    return module


def test_auto_needs_both_tensorrt_and_a_cuda_device(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt_module("9.3.0"))
    assert "too old: quantbench needs TensorRT 10 or 11" in TensorRTBackend.unavailable_reason()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt_module("10.8.0.43"))
    assert TensorRTBackend.unavailable_reason() == cuda.device_unavailable_reason()
    if NO_GPU is not None:  # this machine: TensorRT "present", no GPU -> still ONNX Runtime
        cls, reason = resolve_backend("auto")
        assert cls.kind is BackendKind.ONNXRUNTIME and reason == NO_GPU


# --- version branching (one place: TrtApi) -----------------------------------------------------------


class _FakeFlags:  # mock at the TensorRT boundary: NetworkDefinitionCreationFlag
    STRONGLY_TYPED = 1


def fake_tensorrt_engine(**attributes: int) -> types.SimpleNamespace:
    """Mock at the TensorRT boundary: an ICudaEngine carrying only the memory attributes given."""
    return types.SimpleNamespace(**attributes)


@pytest.mark.parametrize(
    ("version", "flags", "memory_attribute"),
    [
        ("10.0.1.6", 1 << 1, "device_memory_size"),  # 10.0: opt into strong typing; v2 not there yet
        ("10.8.0.43", 1 << 1, "device_memory_size_v2"),
        ("11.0.0.1", 0, "device_memory_size_v2"),  # 11: always strongly typed, flag ignored; v1 removed
        ("11.4.1", 0, "device_memory_size_v2"),
    ],
)
def test_version_branching(version, flags, memory_attribute):
    api = TrtApi.of(fake_tensorrt_module(version))
    trt = types.SimpleNamespace(NetworkDefinitionCreationFlag=_FakeFlags)
    assert api.network_flags(trt) == flags
    assert api.always_strongly_typed is (api.major >= 11)
    engine = fake_tensorrt_engine(**{memory_attribute: 123_456})
    assert api.engine_device_memory_bytes(engine) == 123_456


@pytest.mark.parametrize("version", ["8.6.1", "", "nightly"])
def test_unsupported_or_unreadable_versions_are_refused_with_the_fix(version):
    with pytest.raises(BackendUnavailable, match="pip install -U tensorrt"):
        TrtApi.of(fake_tensorrt_module(version))


# --- cache keys ---------------------------------------------------------------------------------------


def test_engine_key_changes_with_every_component_and_only_those(yolo11n_onnx):
    sha = sha256_file(yolo11n_onnx)
    base = dict(onnx_sha256=sha, trt_version="10.8.0.43", gpu=H100, options=BuildOptions(batch_sizes=(1, 8)))
    variants = [
        base,
        {**base, "onnx_sha256": "0" * 64},
        {**base, "trt_version": "11.0.0.1"},
        {**base, "gpu": cuda.GpuInfo(0, "NVIDIA H200", (9, 0), 141 << 30)},
        {**base, "gpu": cuda.GpuInfo(0, "NVIDIA H100 80GB HBM3", (8, 9), 80 << 30)},
        {**base, "options": BuildOptions(batch_sizes=(1, 16))},
        {**base, "options": BuildOptions(batch_sizes=(8, 1))},  # opt size differs
        {**base, "options": BuildOptions(batch_sizes=(1, 8), workspace_mib=1024)},
        {**base, "options": BuildOptions(batch_sizes=(1, 8), optimization_level=5)},
    ]
    keys = [engine_cache_key(**v) for v in variants]
    assert len(set(keys)) == len(keys)
    # Knobs that do not change the plan do not rebuild it.
    same = [
        {**base, "options": BuildOptions(batch_sizes=(1, 8), threads=2)},
        {**base, "options": BuildOptions(batch_sizes=(1, 8), device_id=1)},
        {**base, "gpu": cuda.GpuInfo(3, "NVIDIA H100 80GB HBM3", (9, 0), 80 << 30)},
    ]
    assert {engine_cache_key(**v) for v in same} == {keys[0]}


def test_timing_cache_is_one_file_per_gpu_kind_and_tensorrt_version(tmp_path):
    cache = ArtifactCache(tmp_path)
    path = timing_cache_path(cache, H100, "10.8.0.43")
    assert path.parent == tmp_path / "trt-timing-cache"
    assert path.name.startswith("nvidia-h100-80gb-hbm3-sm_90-trt10.8.0.43-") and path.suffix == ".cache"
    others = {
        timing_cache_path(cache, H100, "11.0.0.1"),
        timing_cache_path(cache, cuda.GpuInfo(0, "NVIDIA H100 80GB HBM3", (8, 9), 1), "10.8.0.43"),
        timing_cache_path(cache, cuda.GpuInfo(0, "NVIDIA L4", (8, 9), 1), "10.8.0.43"),
    }
    assert path not in others and len(others) == 3
    assert timing_cache_path(cache, cuda.GpuInfo(2, H100.name, (9, 0), 1), "10.8.0.43") == path  # same kind, other card


# --- optimization profile -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("batch_sizes", "expected"),
    [
        ((1,), (1, 1, 1)),
        ((8,), (1, 8, 8)),  # min stays 1: evaluation ends with a partial batch
        ((1, 8, 16), (1, 1, 16)),  # opt = the first (reference) size
        ((16, 1, 4), (1, 16, 16)),
    ],
)
def test_profile_covers_the_batch_sizes(batch_sizes, expected):
    shapes = profile_shapes((-1, 3, 640, 640), batch_sizes)
    assert (shapes.min[0], shapes.opt[0], shapes.max[0]) == expected
    assert shapes.min[1:] == shapes.opt[1:] == shapes.max[1:] == (3, 640, 640)


def test_profile_fills_dynamic_height_and_width_and_keeps_static_models_static():
    shapes = profile_shapes(("batch", 3, "height", "width"), (2,), imgsz=(480, 640))
    assert shapes.to_dict() == {"min": [1, 3, 480, 640], "opt": [2, 3, 480, 640], "max": [2, 3, 480, 640]}
    assert profile_shapes((1, 3, 640, 640), (1,)) is None
    fixed = profile_shapes((4, 3, -1, -1), (4,))
    assert fixed.min == fixed.opt == fixed.max == (4, 3, *DEFAULT_IMGSZ)


def test_profile_errors_name_the_model_and_the_fix():
    with pytest.raises(BackendError, match=r"m\.onnx has a fixed batch of 1, so it cannot run batch sizes \[8\].*dynamic"):
        profile_shapes((1, 3, 640, 640), (1, 8), where="m.onnx")
    with pytest.raises(ModelError, match="dynamic channel"):
        profile_shapes((-1, -1, 640, 640), (1,))
    with pytest.raises(ModelError, match="rank 3"):
        profile_shapes((-1, 640, 640), (1,))
    for bad in [(), (0,), (1, -2), (True,)]:
        with pytest.raises(ConfigError, match="batch_sizes must be positive integers"):
            profile_shapes((-1, 3, 640, 640), bad)


@pytest.mark.parametrize("fixture", ["yolo11n_onnx", "yolo11s_onnx"])
def test_profile_from_yolo11_exports(fixture, request):
    """Ultralytics' dynamic export: every axis but channels symbolic, `imgsz` in the metadata."""
    path = request.getfixturevalue(fixture)
    model = onnx.load(str(path), load_external_data=False)
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1] == 3 and all(isinstance(d, str) for d in (dims[0], dims[2], dims[3]))
    imgsz = onnx_imgsz(path)
    assert imgsz == (640, 640)
    shapes = profile_shapes(dims, (1, 8), imgsz=imgsz, where=str(path))
    assert shapes.min == (1, 3, 640, 640) and shapes.opt == (1, 3, 640, 640) and shapes.max == (8, 3, 640, 640)


def test_profile_from_the_yolov5n_asset(yolov5n_onnx):
    model = onnx.load(str(yolov5n_onnx), load_external_data=False)
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    shapes = profile_shapes(dims, (4, 1), imgsz=onnx_imgsz(yolov5n_onnx) or DEFAULT_IMGSZ)
    assert shapes.max == (4, 3, 640, 640) and shapes.opt == (4, 3, 640, 640)


# --- errors -------------------------------------------------------------------------------------------


def test_build_refuses_bad_inputs_before_touching_tensorrt(tmp_path, cache):
    backend = TensorRTBackend()
    with pytest.raises(ModelError, match=r"missing\.onnx does not exist"):
        backend.build(tmp_path / "missing.onnx", BuildOptions(), cache)
    tiny_conv_onnx(tmp_path / "tiny.onnx")
    with pytest.raises(ConfigError, match="optimization_level 7 is not in 0..5"):
        backend.build(tmp_path / "tiny.onnx", BuildOptions(optimization_level=7), cache)
    with pytest.raises(ConfigError, match="workspace_mib 0"):
        backend.build(tmp_path / "tiny.onnx", BuildOptions(workspace_mib=0), cache)
    if TensorRTBackend.unavailable_reason() is not None:
        with pytest.raises(BackendUnavailable, match="the TensorRT backend cannot run here"):
            backend.build(tmp_path / "tiny.onnx", BuildOptions(), cache)


def test_cuda_errors_carry_the_cuda_error_name():
    pytest.importorskip("cuda.bindings", reason="cuda-python is not installed")
    rt = cuda.cudart()
    assert cuda.check((rt.cudaError_t.cudaSuccess, 42), "cudaFoo") == 42
    assert cuda.check((rt.cudaError_t.cudaSuccess, 1, 2), "cudaFoo") == (1, 2)
    assert cuda.check((rt.cudaError_t.cudaSuccess,), "cudaFoo") is None
    with pytest.raises(BackendError, match=r"CUDA call cudaMalloc\(64\) failed with cudaErrorMemoryAllocation \(out of memory\); free GPU memory"):
        cuda.check((rt.cudaError_t.cudaErrorMemoryAllocation, None), "cudaMalloc(64)")
    with pytest.raises(BackendError, match="cudaErrorNoDevice .*nvidia-smi"):
        cuda.check((rt.cudaError_t.cudaErrorNoDevice,), "cudaSetDevice(0)")


@pytest.mark.skipif(NO_GPU is None, reason="this machine has a CUDA device")
def test_without_a_device_the_reason_names_the_cuda_error():
    assert NO_GPU.startswith(("no usable CUDA device (cudaError", "cuda-python is not installed"))


# --- the runner's CUDA plumbing on a GPU, TensorRT replaced by a stand-in ----------------------------


class FakeTrtEngine:
    """Mock at the TensorRT boundary: an engine whose "inference" is a device-to-device copy of the
    input into the output buffer, enqueued on the runner's stream (so it is graph-capturable)."""

    INPUT, OUTPUT = "images", "output0"

    def __init__(self, chw=(3, 640, 640), batches=(1, 4, 8)):
        self.chw, self.batches = chw, batches
        self.num_io_tensors = 2
        self.device_memory_size_v2 = 12345

    def get_tensor_name(self, i):
        return (self.INPUT, self.OUTPUT)[i]

    def get_tensor_mode(self, name):
        return "in" if name == self.INPUT else "out"

    def get_tensor_dtype(self, name):
        return np.float32

    def get_tensor_shape(self, name):
        return (-1, *self.chw)

    def get_tensor_profile_shape(self, name, profile):
        return [(b, *self.chw) for b in self.batches]

    def create_execution_context(self):
        return FakeTrtContext(self)


class FakeTrtContext:
    def __init__(self, engine):
        self.engine, self.shape, self.addresses, self.launches = engine, None, {}, 0

    def set_input_shape(self, name, shape):
        self.shape = tuple(shape)
        return self.engine.batches[0] <= shape[0] <= self.engine.batches[-1]

    def get_tensor_shape(self, name):
        n, c, h, w = self.shape
        return (n, c, h * w)

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True  # as the real binding does; the runner refuses a False (seen on the H200: None failed it)

    def execute_async_v3(self, stream_ptr):
        rt = cuda.cudart()
        nbytes = int(np.prod(self.shape)) * 4
        cuda.check(rt.cudaMemcpyAsync(self.addresses["output0"], self.addresses["images"], nbytes,
                                      rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, stream_ptr), "fake enqueue")
        self.launches += 1
        return True


def fake_tensorrt_runtime_module(engine: FakeTrtEngine) -> types.SimpleNamespace:
    """Mock at the TensorRT boundary: the names TensorRTRunner uses from `tensorrt`."""

    class ILogger:
        def __init__(self):
            pass

    return types.SimpleNamespace(
        __version__="10.8.0.43",
        ILogger=ILogger,
        Runtime=lambda logger: types.SimpleNamespace(deserialize_cuda_engine=lambda data: engine),
        TensorIOMode=types.SimpleNamespace(INPUT="in", OUTPUT="out"),
        nptype=lambda dtype: dtype,
    )


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_runner_plumbing_on_a_gpu_with_a_tensorrt_stand_in(tmp_path, cuda_graph):
    from quantbench.backends.trt import TensorRTRunner

    fake_engine = FakeTrtEngine()
    trt = fake_tensorrt_runtime_module(fake_engine)
    plan = tmp_path / "fake.engine"
    plan.write_bytes(b"plan")
    record = Engine(BackendKind.TENSORRT, plan, tmp_path / "fake.onnx", BuildOptions(batch_sizes=(4, 8)),
                    meta={"precision": {"int8_layers": 0}})
    free_before = cuda.memory_info().free_bytes
    rng = np.random.default_rng(0)
    with TensorRTRunner(trt, TrtApi.of(trt), record, cuda_graph=cuda_graph) as runner:
        for n in (1, 5, 8):  # below, between and at the profile's sizes
            batch = rng.random((n, 3, 640, 640), dtype=np.float32)
            out = runner.infer(batch)
            assert out.shape == (n, 3, 640 * 640) and np.array_equal(out, batch.reshape(n, 3, -1))
        with pytest.raises(BackendError, match=r"does not fit .*rebuild it with BuildOptions.batch_sizes including 9"):
            runner.infer(np.zeros((9, 3, 640, 640), np.float32))
        batch = rng.random((8, 3, 640, 640), dtype=np.float32)
        launches = runner._context.launches
        timing = runner.time(batch, warmup=2, iterations=5)
        # warm-up enqueues always run; timed iterations replay the graph when there is one
        assert runner._context.launches - launches == (3 if cuda_graph else 7)
        for samples in (timing.host_ms, timing.device_ms, timing.h2d_ms, timing.d2h_ms):
            assert len(samples) == 5 and all(s > 0 for s in samples)
        assert all(h >= d for h, d in zip(timing.host_ms, timing.device_ms))  # wall clock encloses GPU time
        assert timing.peak_memory_bytes >= 2 * batch.nbytes  # at least the two device buffers
        assert np.array_equal(runner.infer(batch), batch.reshape(8, 3, -1))  # results still right after timing
        info = runner.info()
        assert info.backend == "tensorrt" and info.cuda_graph is cuda_graph and info.runtime_version == "10.8.0.43"
        assert info.engine_memory_bytes == 12345 and info.input.max_batch == 8 and info.input.image_shape == (3, 640, 640)
        assert info.precision == {"int8_layers": 0} and info.engine_path == str(plan)
        print(f"\nstand-in engine, batch 8 ({'graph' if cuda_graph else 'enqueue'}): "
              f"h2d {np.median(timing.h2d_ms):.3f} ms, compute {np.median(timing.device_ms):.3f} ms, "
              f"d2h {np.median(timing.d2h_ms):.3f} ms, host {np.median(timing.host_ms):.3f} ms")
    assert abs(free_before - cuda.memory_info().free_bytes) <= 8 << 20  # close() gave the memory back


@pytest.mark.gpu
@requires_gpu
def test_time_target_on_a_gpu_runner_with_a_tensorrt_stand_in(tmp_path):
    """The bench's latency loop on a millisecond-scale GPU runner: rounds follow the time target, not a count."""
    from quantbench.backends.trt import TensorRTRunner
    from quantbench.evaluation.timing import TimingPlan, rounds_for_loop, warm_up

    trt = fake_tensorrt_runtime_module(FakeTrtEngine())
    plan_file = tmp_path / "fake.engine"
    plan_file.write_bytes(b"plan")
    record = Engine(BackendKind.TENSORRT, plan_file, tmp_path / "fake.onnx", BuildOptions(batch_sizes=(1,)))
    batch = np.random.default_rng(0).random((1, 3, 640, 640), dtype=np.float32)
    plan = TimingPlan(warmup=10, min_rounds=20, min_time_s=1.0, warmup_s=0.2)
    with TensorRTRunner(trt, TrtApi.of(trt), record, cuda_graph=True) as runner:
        infer_rounds = warm_up(lambda: runner.infer(batch), plan)  # for pytest-benchmark's loop of infer()
        rounds = rounds_for_loop(lambda n: runner.time(batch, warmup=0, iterations=n), plan)
        started = time.perf_counter()
        timing = runner.time(batch, warmup=0, iterations=rounds)
        loop_s = time.perf_counter() - started
    print(f"\nstand-in engine, batch 1, 1 s target: {infer_rounds} rounds of infer(), {rounds} rounds of time() "
          f"lasting {loop_s:.2f} s (median host {np.median(timing.host_ms):.3f} ms for the replay, "
          f"h2d {np.median(timing.h2d_ms):.3f} ms, d2h {np.median(timing.d2h_ms):.3f} ms)")
    assert rounds > 20 and len(timing.device_ms) == rounds  # 20 rounds would have been a few ms of timing
    # The runner's loop (pinned copies, graph replay) is estimated on itself: it lasts about the target.
    assert 0.5 <= loop_s <= 2.0


# --- real TensorRT (skipped where it is not installed) -------------------------------------------------


@pytest.mark.tensorrt
@requires_tensorrt
def test_tensorrt_builds_caches_runs_and_times_an_fp32_conv(tmp_path, cache):
    w = tiny_conv_onnx(tmp_path / "tiny.onnx")
    backend = TensorRTBackend()
    options = BuildOptions(batch_sizes=(2, 4), optimization_level=0)
    engine = backend.build(tmp_path / "tiny.onnx", options, cache)
    assert engine.meta["cached"] is False and engine.meta["profile"]["max"] == [4, 3, 32, 32]
    assert backend.build(tmp_path / "tiny.onnx", options, cache).meta["cached"] is True
    assert list((cache.root / "trt-timing-cache").glob("*.cache"))
    precision = engine.meta["precision"]
    assert precision["int8_layers"] == 0 and precision["intended_int8_nodes"] == 0 and not precision["int8_missing"]
    batch = np.random.default_rng(1).random((3, 3, 32, 32), dtype=np.float32)
    with backend.open(engine) as runner:
        np.testing.assert_allclose(runner.infer(batch), conv_reference(w, batch), rtol=1e-2, atol=1e-2)
        timing = runner.time(batch, warmup=2, iterations=3)
        assert len(timing.device_ms) == 3 and all(t > 0 for t in timing.device_ms)


@pytest.mark.tensorrt
@requires_tensorrt
def test_tensorrt_runs_a_qdq_conv_in_int8(tmp_path, cache):
    w = tiny_conv_onnx(tmp_path / "qdq.onnx", qdq=True)
    engine = TensorRTBackend().build(tmp_path / "qdq.onnx", BuildOptions(batch_sizes=(1,)), cache)
    precision = engine.meta["precision"]
    assert precision["intended_int8_nodes"] == 1 and precision["int8_layers"] >= 1 and precision["runs_int8"]
    batch = np.random.default_rng(2).random((1, 3, 32, 32), dtype=np.float32)
    with TensorRTBackend(cuda_graph=True).open(engine) as runner:
        np.testing.assert_allclose(runner.infer(batch), conv_reference(w, batch), atol=0.1)


@pytest.mark.tensorrt
@requires_tensorrt
def test_tensorrt_matches_onnxruntime_on_yolo11n(yolo11n_onnx, cache):
    from quantbench.backends.ort import OrtBackend

    batch = np.random.default_rng(3).random((2, 3, 640, 640), dtype=np.float32)
    ort = OrtBackend(use_cuda=False)
    with ort.open(ort.build(yolo11n_onnx, BuildOptions(), cache)) as runner:
        expected = runner.infer(batch)
    backend = TensorRTBackend()
    with backend.open(backend.build(yolo11n_onnx, BuildOptions(batch_sizes=(2,)), cache)) as runner:
        got = runner.infer(batch)
    assert got.shape == expected.shape == (2, 84, 8400)
    np.testing.assert_allclose(got, expected, rtol=2e-2, atol=0.5)  # TF32 convolutions


@pytest.mark.tensorrt
@requires_tensorrt
def test_tensorrt_parser_error_names_the_file_and_node(tmp_path, cache):
    graph = helper.make_graph(
        [helper.make_node("NoSuchOp", ["images"], ["output0"], name="/model.9/mystery", domain="org.example")],
        "bad", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 3, 32, 32])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19), helper.make_opsetid("org.example", 1)])
    onnx.save(model, tmp_path / "bad.onnx")
    with pytest.raises(BackendError, match=r"TensorRT could not parse .*bad\.onnx: node '/model\.9/mystery'"):
        TensorRTBackend().build(tmp_path / "bad.onnx", BuildOptions(), cache)


def test_tiny_models_are_what_the_tensorrt_tests_expect(tmp_path):
    """The tiny graphs the TensorRT tests build are valid and right (checked with ONNX Runtime here)."""
    from quantbench.backends.ort import OrtBackend

    batch = np.random.default_rng(4).random((2, 3, 32, 32), dtype=np.float32)
    for qdq in (False, True):
        w = tiny_conv_onnx(tmp_path / f"m{qdq}.onnx", qdq=qdq)
        onnx.checker.check_model(str(tmp_path / f"m{qdq}.onnx"))
        backend = OrtBackend(use_cuda=False)
        with backend.open(backend.build(tmp_path / f"m{qdq}.onnx", BuildOptions(), None)) as runner:
            out = runner.infer(batch)
        np.testing.assert_allclose(out, conv_reference(w, batch), rtol=1e-4, atol=0.05 if qdq else 1e-4)
