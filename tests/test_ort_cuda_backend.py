"""The onnxruntime-cuda backend: ONNX Runtime's CUDA provider, IO binding, CUDA-event timing, CUDA graphs.

On this CPU machine the CUDA provider is faked at the ONNX Runtime boundary (``ort_cuda_fake.py``:
real CPU sessions and IO bindings behind the CUDA provider's answers) and CUDA by the CPU stand-in
(``cuda_standin.py``); tests marked ``gpu`` run the real thing and skip here with the reason.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import onnxruntime
import ort_cuda_fake
import pytest

from quantbench.backends import BackendKind, BuildOptions, resolve_backend
from quantbench.backends import cuda as qb_cuda
from quantbench.backends.ort import OrtBackend
from quantbench.backends.ort_cuda import OrtCudaBackend, OrtCudaRunner
from quantbench.decision.selection import select
from quantbench.decision.thresholds import Thresholds
from quantbench.errors import BackendUnavailable
from quantbench.outputs.provenance import collect_provenance
from quantbench.outputs.report import UNFUSED_QDQ, format_selection_table, report_markdown
from quantbench.records import CocoMetrics, EvalResult, EvalTiming, LatencyResult, LatencyStats, Provenance, from_dict, to_dict

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("QUANTBENCH_ASSETS", "/work/shared/assets"))
YOLO = ASSETS / "models" / "yolo11n-coco.onnx"
needs_yolo = pytest.mark.skipif(not YOLO.is_file(), reason=f"{YOLO} is missing (set QUANTBENCH_ASSETS)")


@pytest.fixture(scope="module")
def cpu_reference():
    """yolo11n-coco's outputs on ONNX Runtime's CPU provider (the real one), for batches of 1 and 2."""
    if not YOLO.is_file():
        pytest.skip(f"{YOLO} is missing (set QUANTBENCH_ASSETS)")
    batch = np.random.default_rng(0).random((2, 3, 640, 640), dtype=np.float32)
    with OrtBackend(use_cuda=False).open_onnx(YOLO, BuildOptions()) as runner:
        return batch, runner.infer(batch[:1]).copy(), runner.infer(batch).copy()


# --- the fake is built from ONNX Runtime's real API surface ------------------------------------------


def test_the_fake_has_the_real_iobinding_and_session_signatures():
    for name in ("bind_input", "bind_output", "clear_binding_inputs", "clear_binding_outputs"):
        fake = inspect.signature(getattr(ort_cuda_fake.FakeCudaIOBinding, name))
        assert fake == inspect.signature(getattr(onnxruntime.IOBinding, name)), name
    for name in ("run_with_iobinding", "get_provider_options", "get_providers", "get_inputs", "io_binding"):
        fake_params = list(inspect.signature(getattr(ort_cuda_fake.FakeCudaSession, name)).parameters)
        assert fake_params == list(inspect.signature(getattr(onnxruntime.InferenceSession, name)).parameters), name
    fake_preload = list(inspect.signature(ort_cuda_fake.FakeCudaOrt.preload_dlls).parameters)[1:]  # less self
    assert fake_preload == list(inspect.signature(onnxruntime.preload_dlls).parameters)


def test_the_fake_refuses_a_cuda_graph_replay_into_other_addresses(monkeypatch, tmp_path):
    """The rule the runner's per-shape buffers exist for; checked here so that the runner's tests can fail."""
    fake = ort_cuda_fake.install(monkeypatch)
    with OrtCudaBackend(cuda_graph=True).open_onnx(_tiny_model(tmp_path), BuildOptions()) as r:
        batch = np.ones((1, 3, 4, 4), np.float32)
        for _ in range(3):
            r.infer(batch)
        session = fake.sessions[-1]
        assert session.replays["1"] == 1
        slot = r._slots[(1, 3, 4, 4)]
        r._binding.bind_output(r.output_name, "cuda", 0, np.float32, list(slot.out_shape), slot.host_out.ptr)
        with pytest.raises(RuntimeError, match="captured with other addresses"):
            session.run_with_iobinding(r._binding, slot.run_options)


def _tiny_model(folder: Path) -> Path:
    """x (N, 3, 4, 4) -> relu(x * 2) reshaped to (N, 3, 16): a dynamic batch, a fixed output after it."""
    import onnx
    from onnx import TensorProto, helper

    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    shape = helper.make_tensor("shape", TensorProto.INT64, [3], [0, 3, 16])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"]), helper.make_node("Relu", ["y"], ["z"]),
         helper.make_node("Reshape", ["z", "shape"], ["out"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 3, 16])], initializer=[two, shape])
    path = folder / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


# --- availability and `auto` --------------------------------------------------------------------------


def fake_tensorrt(version: str) -> types.ModuleType:
    """Fake at the TensorRT boundary: a `tensorrt` module that carries a version only."""
    module = types.ModuleType("tensorrt")
    module.__version__ = version
    return module


def test_auto_tries_tensorrt_then_onnxruntime_cuda_then_the_cpu(monkeypatch):
    ort_cuda_fake.install(monkeypatch)  # a CUDA build of onnxruntime, a device that answers
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt("10.8.0.43"))
    cls, fallback = resolve_backend("auto")
    assert cls.kind is BackendKind.TENSORRT and fallback is None

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` fails: not installed
    cls, fallback = resolve_backend("auto")
    assert cls.kind is BackendKind.ONNXRUNTIME_CUDA and fallback.startswith("tensorrt is not installed")
    assert resolve_backend("onnxruntime-cuda") == (OrtCudaBackend, None)

    ort_cuda_fake.install(monkeypatch, cuda_build=False)  # a CPU-only onnxruntime
    cls, fallback = resolve_backend("auto")
    assert cls is OrtBackend and fallback.startswith("tensorrt is not installed")
    with pytest.raises(BackendUnavailable, match=r"^backend 'onnxruntime-cuda' cannot run here: this onnxruntime build"):
        resolve_backend("onnxruntime-cuda")


def test_unavailable_reasons_are_one_sentence_naming_what_is_missing(monkeypatch):
    ort_cuda_fake.install(monkeypatch, cuda_build=False)
    reason = OrtCudaBackend.unavailable_reason()
    assert reason.startswith(f"this onnxruntime build ({onnxruntime.__version__}) has no CUDAExecutionProvider, "
                             "only CPUExecutionProvider (pip install 'onnxruntime-gpu[cuda,cudnn]'")
    runtime = ort_cuda_fake.install(monkeypatch).runtime
    monkeypatch.setattr(runtime, "cudaGetDeviceCount", lambda: (0, 0))  # the driver answers: no GPU
    assert OrtCudaBackend.unavailable_reason() == "no CUDA device answers: CUDA device 0 does not exist (this machine has 0)"
    for text in (reason, OrtCudaBackend.unavailable_reason()):
        assert text.count(". ") == 0 and "\n" not in text


@pytest.mark.skipif(qb_cuda.device_unavailable_reason() is None, reason="this machine has a CUDA device")
def test_on_this_machine_no_device_answers_so_the_backend_is_refused_by_name():
    reason = OrtCudaBackend.unavailable_reason()
    assert reason is not None and reason.startswith(("no CUDA device answers", "this onnxruntime build"))
    with pytest.raises(BackendUnavailable, match="onnxruntime-cuda"):
        OrtCudaBackend().open_onnx(Path("never-opened.onnx"), BuildOptions())


def test_a_session_that_falls_back_to_the_cpu_is_refused(monkeypatch, tmp_path):
    ort_cuda_fake.install(monkeypatch, cuda_loads=False)  # ONNX Runtime's silent fallback: CUDA libraries missing
    with pytest.raises(BackendUnavailable, match=r"on CPUExecutionProvider instead of CUDAExecutionProvider .*preload_dlls"):
        OrtCudaBackend().open_onnx(_tiny_model(tmp_path), BuildOptions())


def test_nothing_on_the_cpu_path_imports_cuda_onnxruntime_or_torch():
    code = ("import sys; import quantbench.backends, quantbench.backends.ort_cuda, quantbench.outputs.report, "
            "quantbench.outputs.provenance, quantbench.pipeline; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('cuda', 'cupy', 'torch', 'onnxruntime')))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --- the runner, through the faked binding -------------------------------------------------------------


@needs_yolo
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_infer_through_device_buffers_equals_the_cpu_provider_on_yolo11n(monkeypatch, cpu_reference, cuda_graph):
    batch, one, two = cpu_reference
    fake = ort_cuda_fake.install(monkeypatch)
    backend = OrtCudaBackend(cuda_graph=cuda_graph)
    engine = backend.build(YOLO, BuildOptions(), cache=None)
    assert engine.backend is BackendKind.ONNXRUNTIME_CUDA
    with backend.open(engine) as runner:
        assert isinstance(runner, OrtCudaRunner)
        # batch 1, batch 2, batch 1 again: each shape keeps its own bound buffers (and CUDA graph)
        for part, expected in ((batch[:1], one), (batch, two), (batch[:1], one), (batch, two)):
            out = runner.infer(part)
            assert out.dtype == np.float32 and out.shape == expected.shape
            np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)
    session = fake.sessions[-1]
    if cuda_graph:  # the second call of each shape was a replay of its graph, ids 1 and 2
        assert sorted(session.captured) == ["1", "2"]
    else:
        assert not session.captured


def test_time_gives_host_device_and_copy_samples_and_the_memory_it_added(monkeypatch, tmp_path):
    fake = ort_cuda_fake.install(monkeypatch)
    with OrtCudaBackend().open_onnx(_tiny_model(tmp_path), BuildOptions()) as runner:
        batch = np.arange(2 * 48, dtype=np.float32).reshape(2, 3, 4, 4) - 40
        samples = runner.time(batch, warmup=1, iterations=4)
        for series in (samples.host_ms, samples.device_ms, samples.h2d_ms, samples.d2h_ms):
            assert len(series) == 4 and all(ms >= 0 for ms in series)
        # pinned + device buffers for the input (2*3*4*4 floats) and the output (2*3*16 floats)
        assert samples.peak_memory_bytes >= 2 * (2 * 48 * 4 + 2 * 48 * 4)
        np.testing.assert_array_equal(runner.infer(batch), np.maximum(batch * 2, 0).reshape(2, 3, 16))
    assert fake.runtime.streams == set()  # the stream went with the runner, after the session


def test_cuda_graph_timing_replays_a_captured_graph_in_every_timed_run(monkeypatch, tmp_path):
    fake = ort_cuda_fake.install(monkeypatch)
    with OrtCudaBackend(cuda_graph=True).open_onnx(_tiny_model(tmp_path), BuildOptions()) as runner:
        runner.time(np.ones((1, 3, 4, 4), np.float32), warmup=0, iterations=5)
    session = fake.sessions[-1]
    assert session.replays["1"] == 5 and list(session.captured) == ["1"]


def test_provider_options_land_in_runner_info_and_provenance(monkeypatch, tmp_path):
    fake = ort_cuda_fake.install(monkeypatch)
    with OrtCudaBackend(cuda_graph=True).open_onnx(_tiny_model(tmp_path), BuildOptions()) as runner:
        info = runner.info()
    assert fake.preloaded == 1  # CUDA libraries from the nvidia-* packages, before the session
    assert info.backend == "onnxruntime-cuda" and info.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert info.cuda_graph and info.runtime_version == onnxruntime.__version__
    cuda_options = info.provider_options["CUDAExecutionProvider"]
    assert cuda_options["enable_cuda_graph"] == "1" and cuda_options["device_id"] == "0"
    assert cuda_options["has_user_compute_stream"] == "1"
    assert cuda_options["user_compute_stream"] == "the runner's stream"  # no process-specific address in records
    assert cuda_options["use_tf32"] == "1"  # what ONNX Runtime applied, not only what was asked
    assert ort_cuda_fake.SIMULATED in info.simulated and "CPU stand-in for the CUDA runtime" in info.simulated

    facts = collect_provenance(info)
    assert facts.provider_options == {k: dict(v) for k, v in info.provider_options.items()}
    assert facts.onnxruntime == onnxruntime.__version__ and facts.tensorrt is None
    assert from_dict(Provenance, to_dict(facts)) == facts


# --- the report labels INT8 latency on this backend ----------------------------------------------------


def _records(backend: str):
    def evaluation(variant: str, value: float) -> EvalResult:
        return EvalResult(model="yolo11n", variant=variant, backend=backend, device="GPU", dataset="val500",
                          num_images=500, skipped_images=(), untrained=False,
                          metrics=CocoMetrics(value, value * 1.6, value, 0.1, 0.2, 0.3, 0.35),
                          timing=EvalTiming(inference_s=1.0, total_s=2.0, images_per_s=250.0))

    def latency(variant: str, ms: float) -> LatencyResult:
        return LatencyResult(model="yolo11n", variant=variant, backend=backend, device="GPU", batch_size=1,
                             host=LatencyStats(ms, ms, ms, ms, 0.0, 20), images_per_s=1e3 / ms)

    options = {("yolo11n", "fp16"): {"kind": "fp16"}, ("yolo11n", "int8-max"): {"kind": "int8"}}
    return ([evaluation("fp16", 0.3940), evaluation("int8-max", 0.3920)],
            [latency("fp16", 2.0), latency("int8-max", 1.0)], options)


@pytest.mark.parametrize("backend", ["onnxruntime-cuda", "tensorrt"])
def test_int8_latency_on_onnxruntime_cuda_is_labelled_unfused_qdq(backend):
    evals, lats, options = _records(backend)
    thresholds = Thresholds.load(REPO / "thresholds.toml")
    (selection,) = select(evals, lats, thresholds, variant_options=options)
    table = format_selection_table(selection)
    markdown = report_markdown([selection], rebuild_command="quantbench select")
    int8_row = next(line for line in table.splitlines() if line.startswith("int8-max"))
    fp16_row = next(line for line in table.splitlines() if line.startswith("fp16"))
    if backend == "onnxruntime-cuda":
        assert UNFUSED_QDQ == "unfused Q/DQ on ONNX Runtime CUDA, not TensorRT INT8"
        assert "(unfused Q/DQ)" in int8_row and "unfused" not in fp16_row
        assert f"latency of int8-max: {UNFUSED_QDQ}" in table and f"latency of int8-max: {UNFUSED_QDQ}" in markdown
        if selection.winner == "int8-max":
            assert f"1.00 ms, {UNFUSED_QDQ}" in table
    else:  # TensorRT's INT8 is INT8 speed: no label
        assert "unfused" not in table and "unfused" not in markdown


# --- on a GPU ------------------------------------------------------------------------------------------


@pytest.mark.gpu
@needs_yolo
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_gpu_infer_matches_the_cpu_provider_and_times_on_the_device(request, cuda_graph):
    reason = OrtCudaBackend.unavailable_reason()
    if reason is not None:
        pytest.skip(f"needs ONNX Runtime's CUDA provider and a GPU: {reason}")
    batch, one, _ = request.getfixturevalue("cpu_reference")  # only once the GPU is known to be there
    backend = OrtCudaBackend(cuda_graph=cuda_graph)
    with backend.open(backend.build(YOLO, BuildOptions(), cache=None)) as runner:
        # TF32 convolutions and other cuDNN algorithms: close to the CPU, not equal
        np.testing.assert_allclose(runner.infer(batch[:1]), one, rtol=2e-2, atol=2e-1)
        samples = runner.time(batch[:1], warmup=3, iterations=10)
        info = runner.info()
    assert len(samples.device_ms) == 10 and all(ms > 0 for ms in samples.device_ms)
    assert info.simulated is None and info.providers[0] == "CUDAExecutionProvider"
    assert info.provider_options["CUDAExecutionProvider"]["enable_cuda_graph"] == ("1" if cuda_graph else "0")
