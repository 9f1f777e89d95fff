"""ONNX Runtime backend on a tiny model built in the test, and the backend registry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantbench.backends import BackendKind, BuildOptions, Engine, InputSpec, resolve_backend
from quantbench.backends.ort import OrtBackend
from quantbench.errors import BackendError, ConfigError


def _tiny_conv_model(path: Path, batch: str | int = "batch") -> np.ndarray:
    """A 1x1 conv NCHW model with dynamic batch (or a fixed one); returns its weight for a numpy reference."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 3, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["y"]), helper.make_node("Reshape", ["y", "shape"], ["f"])],
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("f", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([0, 6, -1], np.int64), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return w


def test_ort_runner_infers_times_and_describes(tmp_path: Path, cache):
    import onnxruntime

    w = _tiny_conv_model(tmp_path / "tiny.onnx")
    backend = OrtBackend(use_cuda=False)
    engine = backend.build(tmp_path / "tiny.onnx", BuildOptions(threads=1), cache)
    batch = np.random.default_rng(1).random((2, 3, 8, 8), dtype=np.float32)
    with backend.open(engine) as runner:
        out = runner.infer(batch)
        timing = runner.time(batch, warmup=1, iterations=3)
        info = runner.info()
    assert runner.info() == info  # still there after close()
    expected = np.einsum("oc,nchw->nohw", w[:, :, 0, 0], batch).reshape(2, 6, 64)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert len(timing.host_ms) == 3 and all(t > 0 for t in timing.host_ms)
    assert info.backend == "onnxruntime" and info.providers == ("CPUExecutionProvider",)
    assert info.runtime_version == onnxruntime.__version__ and info.threads == 1
    assert info.device.startswith("CPU ") and info.gpu is None and info.engine_memory_bytes is None
    assert info.input == InputSpec("images", (3, 8, 8)) and info.simulated is None


@pytest.mark.parametrize(("bad", "sentence"), [
    ([[0.0]], r"input 'images' must be a numpy array, got a list; pass np\.asarray\(batch, dtype=np\.float32\)\."),
    (np.zeros((1, 3, 8, 8), np.float64), r"input 'images' must be float32, got float64; pass batch\.astype"),
    (np.zeros((3, 8, 8), np.float32), r"takes batches of shape \(N, 3, 8, 8\), got 3 axes \(3, 8, 8\); add the batch axis"),
    (np.zeros((1, 3, 8, 9), np.float32), r"takes batches of shape \(N, 3, 8, 8\), got \(1, 3, 8, 9\); letterbox"),
    (np.zeros((1, 1, 8, 8), np.float32), r"takes batches of shape \(N, 3, 8, 8\), got \(1, 1, 8, 8\)"),
], ids=["list", "float64", "no-batch-axis", "width", "channels"])
def test_infer_and_time_reject_a_bad_batch_with_one_sentence(tmp_path: Path, bad, sentence: str):
    _tiny_conv_model(tmp_path / "tiny.onnx")
    with OrtBackend(use_cuda=False).open_onnx(tmp_path / "tiny.onnx", BuildOptions(threads=1)) as runner:
        with pytest.raises(BackendError, match=sentence) as raised:
            runner.infer(bad)
        assert str(raised.value).count(". ") == 0 and str(raised.value).endswith(".")  # one sentence
        with pytest.raises(BackendError, match=sentence):
            runner.time(bad, warmup=0, iterations=1)


def test_a_fixed_batch_engine_refuses_other_batch_sizes(tmp_path: Path):
    _tiny_conv_model(tmp_path / "fixed.onnx", batch=2)
    with OrtBackend(use_cuda=False).open_onnx(tmp_path / "fixed.onnx", BuildOptions(threads=1)) as runner:
        assert runner.infer(np.zeros((2, 3, 8, 8), np.float32)).shape == (2, 6, 64)
        with pytest.raises(BackendError, match=r"^a batch of 1 does not fit input 'images', built for batches of 2; "
                                               r".*fixed\.onnx has a fixed batch of 2: export it with a dynamic "
                                               r"batch axis to run 1\.$"):
            runner.infer(np.zeros((1, 3, 8, 8), np.float32))
        with pytest.raises(ConfigError, match="iterations >= 1"):
            runner.time(np.zeros((2, 3, 8, 8), np.float32), warmup=0, iterations=0)
        spec = runner.info().input
    assert (spec.image_shape, spec.min_batch, spec.max_batch) == ((3, 8, 8), 2, 2)


def test_ort_runner_names_the_file_it_cannot_load(tmp_path: Path, cache):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not a model")
    backend = OrtBackend(use_cuda=False)
    with pytest.raises(BackendError, match="broken.onnx"):
        backend.open(backend.build(bad, BuildOptions(), cache))


def test_resolve_backend_auto_falls_back_to_onnxruntime_with_a_reason():
    cls, reason = resolve_backend("auto")
    if cls.kind is BackendKind.ONNXRUNTIME:
        assert reason and "tensorrt" in reason.lower()
    else:  # a machine with TensorRT and a GPU
        assert reason is None


def test_resolve_backend_rejects_unknown_names():
    with pytest.raises(ConfigError, match="onnxruntime"):
        resolve_backend("tensorflow")


def _fp16_qdq_model(path: Path, scale: float) -> None:
    """float16 input -> QuantizeLinear(int8) -> DequantizeLinear -> float16, as ModelOpt emits."""
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
         helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq")],
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, None)],
        [numpy_helper.from_array(np.array(scale, np.float16), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    onnx.save(model, path)


def _fp16_qdq_input_and_expected(scale: float) -> tuple[np.ndarray, np.ndarray]:
    """An input with many negative non-integer multiples of ``scale``, and its round-half-to-even Q/DQ."""
    x = (np.random.default_rng(0).standard_normal((1, 4, 8, 8)) * 8).astype(np.float16)
    s32 = np.float32(np.float16(scale))
    return x, (np.clip(np.rint(x.astype(np.float32) / s32), -128, 127) * s32).astype(np.float16)


def test_fp16_quantize_linear_rounds_half_to_even_like_tensorrt(tmp_path: Path, cache):
    """Values must round half to even (onnxruntime's fp16 CPU kernel truncates them toward zero)."""
    scale = 0.2
    _fp16_qdq_model(tmp_path / "qdq.onnx", scale)
    x, expected = _fp16_qdq_input_and_expected(scale)
    backend = OrtBackend(use_cuda=False)
    engine = backend.build(tmp_path / "qdq.onnx", BuildOptions(threads=1), cache)
    assert engine.meta["fp16_quantize_repaired"] == 1 and engine.path != tmp_path / "qdq.onnx"
    with backend.open(engine) as runner:
        y = runner.infer(x)
    np.testing.assert_array_equal(y, expected)
    # The repaired copy is cached: a second build reuses it.
    again = backend.build(tmp_path / "qdq.onnx", BuildOptions(threads=1), cache)
    assert again.path == engine.path


def test_open_onnx_repairs_fp16_quantize_linear_in_memory(tmp_path: Path, cache):
    """The path for transient graphs: the same rounding as the cached copy, nothing written anywhere."""
    scale = 0.2
    source = tmp_path / "qdq.onnx"
    _fp16_qdq_model(source, scale)
    x, expected = _fp16_qdq_input_and_expected(scale)
    backend = OrtBackend(use_cuda=False)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with backend.open_onnx(source, BuildOptions(threads=1)) as runner:
        y = runner.infer(x)
        assert runner.engine.meta == {"fp16_quantize_repaired": 1, "repaired_in_memory": True}
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    np.testing.assert_array_equal(y, expected)
    with backend.open(backend.build(source, BuildOptions(threads=1), cache)) as runner:
        np.testing.assert_array_equal(runner.infer(x), y)
    # Opened as it is, onnxruntime's fp16 kernel truncates toward zero: the repair is what fixes it.
    engine_as_is = Engine(BackendKind.ONNXRUNTIME, source, source, BuildOptions(threads=1))
    with backend.open(engine_as_is) as runner:
        unrepaired = runner.infer(x)
    assert (unrepaired != expected).any(), "onnxruntime's fp16 QuantizeLinear rounds right now: drop the repair"


def test_open_onnx_leaves_graphs_without_fp16_quantize_as_they_are(tmp_path: Path):
    w = _tiny_conv_model(tmp_path / "tiny.onnx")
    batch = np.random.default_rng(1).random((2, 3, 8, 8), dtype=np.float32)
    with OrtBackend(use_cuda=False).open_onnx(tmp_path / "tiny.onnx", BuildOptions(threads=1)) as runner:
        out = runner.infer(batch)
        assert runner.engine.meta == {} and runner.engine.path == tmp_path / "tiny.onnx"
    expected = np.einsum("oc,nchw->nohw", w[:, :, 0, 0], batch).reshape(2, 6, 64)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(BackendError, match="broken.onnx"):
        OrtBackend(use_cuda=False).open_onnx(bad, BuildOptions())


@pytest.mark.parametrize("model", ["yolov5n_onnx", "yolo11n_onnx"])
def test_cpu_engines_are_optimized_once_per_machine_and_compute_the_same(request, model: str, cache, tmp_path: Path):
    """ORT's offline mode: the optimized graph is cached, loaded without re-optimizing, and bit-identical."""
    source = request.getfixturevalue(model)
    backend = OrtBackend(use_cuda=False)
    options = BuildOptions(threads=1)
    engine = backend.build(source, options, cache)
    assert engine.meta["optimized_offline"] is True and engine.source_onnx == source
    assert engine.path.parent == cache.root / "ort-optimized"
    assert backend.build(source, options, cache).path == engine.path  # cached: optimized once
    batch = np.random.default_rng(2).random((1, 3, 640, 640), dtype=np.float32)
    with backend.open(engine) as runner:
        offline = runner.infer(batch)
    as_given = Engine(BackendKind.ONNXRUNTIME, source, source, options)  # optimized by the session itself
    with backend.open(as_given) as runner:
        online = runner.infer(batch)
    np.testing.assert_array_equal(offline, online)


def test_a_valid_bf16_model_is_not_called_an_invalid_file(tmp_path: Path, cache):
    """Issue 22: the bf16 row said to check the ONNX file is valid; it is, ORT's CPU has no bf16 kernels."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["b"], to=TensorProto.BFLOAT16), helper.make_node("Relu", ["b"], ["r"]),
         helper.make_node("Cast", ["r"], ["y"], to=TensorProto.FLOAT)], "bf16",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)  # a valid file
    path = tmp_path / "bf16.onnx"
    onnx.save(model, str(path))
    backend = OrtBackend(use_cuda=False)
    with pytest.raises(BackendError) as err:
        backend.open(backend.build(path, BuildOptions(), cache))
    assert "bf16.onnx" in str(err.value) and "valid ONNX" not in str(err.value)
    assert str(err.value).endswith("run it with --backend tensorrt or build the variant with high_precision_dtype fp16.")
