"""The TensorRT backend's whole flow on the CPU, against the FAKE TensorRT of every committed surface.

Parse, build (timing cache, optimization profile), serialize, deserialize, open a context, infer,
time (plain enqueue and CUDA-graph replay), inspect and report precision: every TensorRT call goes
through ``trt_fake`` (generated from the real bindings' API surface of that version, so a call the
real binding would refuse fails here), every CUDA call through the CPU stand-in
(``cuda_standin.py``). The fake's engine runs the ONNX with ONNX Runtime, so outputs are checked
against a numpy convolution. No TensorRT kernel runs: these tests check the backend's use of the
API, not TensorRT.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx
import pytest
import trt_fake
from onnx import TensorProto, helper
from test_trt_backend import conv_reference, tiny_conv_onnx
from test_trt_surface import BACKEND_USES

from quantbench.backends import BuildOptions
from quantbench.backends.trt import TIMING_CACHE_KIND, TensorRTBackend, parser_error_message
from quantbench.errors import BackendError

VERSIONS = trt_fake.SURFACE_VERSIONS


@pytest.fixture(params=VERSIONS)
def fake_trt(request, monkeypatch):
    return trt_fake.install(request.param, monkeypatch)


@pytest.mark.parametrize("cuda_graph", [False, True], ids=["enqueue", "cuda-graph"])
def test_whole_flow_on_the_fake(fake_trt, tmp_path, cache, cuda_graph):
    w = tiny_conv_onnx(tmp_path / "qdq.onnx", qdq=True)
    backend = TensorRTBackend(cuda_graph=cuda_graph)
    options = BuildOptions(batch_sizes=(2, 4), optimization_level=1, workspace_mib=64)
    engine = backend.build(tmp_path / "qdq.onnx", options, cache)
    assert engine.meta["cached"] is False and engine.meta["tensorrt"] == fake_trt.__version__
    assert engine.meta["profile"] == {"min": [1, 3, 32, 32], "opt": [2, 3, 32, 32], "max": [4, 3, 32, 32]}
    assert "fake TensorRT" in engine.meta["simulated"] and "CPU stand-in" in engine.meta["simulated"]
    assert engine.path.read_bytes().startswith(trt_fake.PLAN_MAGIC)
    (timing_cache,) = (cache.root / TIMING_CACHE_KIND).glob("*.cache")
    assert f"trt{fake_trt.__version__}" in timing_cache.name
    precision = engine.meta["precision"]
    assert precision["intended_int8_nodes"] == 1 and precision["int8_layers"] == 1 and precision["runs_int8"]
    assert backend.build(tmp_path / "qdq.onnx", options, cache).meta["cached"] is True

    rng = np.random.default_rng(0)
    with backend.open(engine) as runner:
        for n in (1, 3, 4):
            batch = rng.random((n, 3, 32, 32), dtype=np.float32)
            np.testing.assert_allclose(runner.infer(batch), conv_reference(w, batch), atol=0.1)
        with pytest.raises(BackendError, match="does not fit"):
            runner.infer(np.zeros((5, 3, 32, 32), np.float32))
        batch = rng.random((4, 3, 32, 32), dtype=np.float32)
        timing = runner.time(batch, warmup=1, iterations=3)
        assert len(timing.device_ms) == len(timing.h2d_ms) == len(timing.d2h_ms) == 3
        np.testing.assert_allclose(runner.infer(batch), conv_reference(w, batch), atol=0.1)
        info = runner.info()
        assert info.simulated == engine.meta["simulated"] and info.cuda_graph is cuda_graph
        assert info.runtime_version == fake_trt.__version__ and info.input.min_batch == 1 and info.input.max_batch == 4
        assert runner._context._failure is None  # the fake's host functions all ran cleanly
    used = {(cls, member) for cls, member in fake_trt._qb_state.accessed}
    allowed = {(cls, m) for cls, members in BACKEND_USES.items() for m in members}
    allowed |= {("ICudaEngine", "device_memory_size"), ("ICudaEngine", "device_memory_size_v2"), ("tensorrt", "nptype")}
    assert used <= allowed, f"the backend uses members test_trt_surface.BACKEND_USES does not list: {used - allowed}"


def test_a_second_engine_merges_into_the_timing_cache(fake_trt, tmp_path, cache):
    tiny_conv_onnx(tmp_path / "a.onnx")
    tiny_conv_onnx(tmp_path / "b.onnx", qdq=True)
    backend = TensorRTBackend()
    backend.build(tmp_path / "a.onnx", BuildOptions(), cache)
    backend.build(tmp_path / "b.onnx", BuildOptions(), cache)
    (timing_cache,) = (cache.root / TIMING_CACHE_KIND).glob("*.cache")
    entries = json.loads(timing_cache.read_bytes()[len(trt_fake.TIMING_MAGIC):])["entries"]
    assert len(entries) == 2  # combine() merged the first build's timings with the second's
    assert ("ITimingCache", "combine") in fake_trt._qb_state.accessed


def _custom_op_onnx(path):
    graph = helper.make_graph(
        [helper.make_node("NoSuchOp", ["images"], ["output0"], name="/model.9/mystery", domain="org.example")],
        "bad", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 3, 32, 32])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19), helper.make_opsetid("org.example", 1)]), path)


def test_defect1_parser_error_code_reads_the_same_in_every_version(fake_trt, tmp_path, cache):
    """ErrorCode.name is a method before 10.16: the message once printed a bound-method repr and lost the hint."""
    _custom_op_onnx(tmp_path / "bad.onnx")
    with pytest.raises(BackendError) as caught:
        TensorRTBackend().build(tmp_path / "bad.onnx", BuildOptions(), cache)
    message = str(caught.value)
    assert "node '/model.9/mystery' (NoSuchOp): No importer registered for op: NoSuchOp" in message
    assert "[UNSUPPORTED_NODE]" in message and "bound method" not in message
    assert "upgrade TensorRT or re-export with opset 17-19" in message  # the hint for that code, not the default


def test_defect8_parser_errors_from_the_real_api_shape(fake_trt):
    """The message from ParserError objects of the fake (ErrorCode as each version has it), not a hand-made stand-in."""
    make = fake_trt.ParserError._qb_new
    errors = [make(_code="UNSUPPORTED_NODE", _node=12, _node_name="/model.23/dfl/GridSample", _operator="GridSample",
                   _desc="No importer registered for op: GridSample."),
              make(_code="INVALID_NODE", _node=40, _node_name="", _operator="Conv", _desc="kernel weights has count 10 but 27 was expected")]
    message = parser_error_message("/cache/variants/int8.onnx", errors)
    assert "node '/model.23/dfl/GridSample' (GridSample): No importer registered for op: GridSample [UNSUPPORTED_NODE]" in message
    assert "node '#40' (Conv): kernel weights has count 10 but 27 was expected [INVALID_NODE]" in message
    assert "upgrade TensorRT" in message and "onnx.checker.check_model" in message
    assert message.startswith("TensorRT could not parse /cache/variants/int8.onnx: ")
    assert message.endswith(".") and message.count(". ") == 0  # one sentence
    many = [make(_code="UNSUPPORTED_NODE", _node=i, _node_name=f"n{i}", _operator="Foo", _desc="no importer") for i in range(11)]
    assert "and 3 more" in parser_error_message("m.onnx", many)
    assert "gave no error detail" in parser_error_message("m.onnx", [])


def test_defect2_the_inspector_sees_activation_types_of_a_dynamic_engine(fake_trt, tmp_path, cache):
    """Without input shapes on its context the inspector shows no formats: every activation type was lost."""
    tiny_conv_onnx(tmp_path / "qdq.onnx", qdq=True)
    engine = TensorRTBackend().build(tmp_path / "qdq.onnx", BuildOptions(batch_sizes=(2, 8)), cache)
    layers = json.loads((engine.path.parent / engine.meta["layers_json"]).read_text())["Layers"]
    tensors = [t for layer in layers for t in (*layer["Inputs"], *layer["Outputs"])]
    assert tensors and all(t["Dimensions"][0] == 2 for t in tensors)  # the opt shape, not -1
    assert all(("Format/Datatype" in t) or ("DataType" in t) for t in tensors)
    precision = engine.meta["precision"]
    assert precision["other_layers"] == 0 and precision["cast_layers"] == 1 and precision["fp32_layers"] == 1


def _bf16_output_onnx(path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["images"], ["r"], name="relu"),
         helper.make_node("Cast", ["r"], ["output0"], name="to_bf16", to=TensorProto.BFLOAT16)],
        "bf16", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("output0", TensorProto.BFLOAT16, ["batch", 3, 8, 8])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    onnx.save(model, path)


def test_defect5_an_io_tensor_without_numpy_type_is_a_backend_error(fake_trt, tmp_path, cache):
    _bf16_output_onnx(tmp_path / "bf16.onnx")
    backend = TensorRTBackend()
    engine = backend.build(tmp_path / "bf16.onnx", BuildOptions(), cache)
    with pytest.raises(BackendError, match=r"the output tensor 'output0' of .*bf16\.onnx is DataType\.BF16, which has no "
                                           r"numpy type; export the model with float32 or float16"):
        backend.open(engine)


def test_defect6_refused_tensor_addresses_fail_the_open(fake_trt, tmp_path, cache):
    tiny_conv_onnx(tmp_path / "m.onnx")
    backend = TensorRTBackend()
    engine = backend.build(tmp_path / "m.onnx", BuildOptions(), cache)
    fake_trt._qb_state.refuse_tensor_address = True
    with pytest.raises(BackendError, match=r"TensorRT refused the device buffer of tensor 'images'"):
        backend.open(engine)


def test_defect6_a_refused_optimization_profile_fails_the_build(fake_trt, tmp_path, cache):
    tiny_conv_onnx(tmp_path / "m.onnx")
    fake_trt._qb_state.refuse_profile = True
    with pytest.raises(BackendError, match=r"TensorRT refused the optimization profile .* for input 'images' of .*m\.onnx"):
        TensorRTBackend().build(tmp_path / "m.onnx", BuildOptions(batch_sizes=(1, 4)), cache)


def test_defect6_set_shape_value_error_becomes_a_backend_error(fake_trt, tmp_path, cache, monkeypatch):
    tiny_conv_onnx(tmp_path / "m.onnx")

    def refuse(self, input, min, opt, max):
        raise ValueError("min/opt/max dimensions are inconsistent")  # what the binding raises

    monkeypatch.setattr(fake_trt.IOptimizationProfile, "set_shape", refuse)
    with pytest.raises(BackendError, match=r"TensorRT refused the optimization profile .*inconsistent"):
        TensorRTBackend().build(tmp_path / "m.onnx", BuildOptions(batch_sizes=(1, 4)), cache)


def test_defect6_an_unmergeable_timing_cache_is_replaced_and_said(fake_trt, tmp_path, cache, monkeypatch, caplog):
    tiny_conv_onnx(tmp_path / "a.onnx")
    tiny_conv_onnx(tmp_path / "b.onnx", qdq=True)
    backend = TensorRTBackend()
    backend.build(tmp_path / "a.onnx", BuildOptions(), cache)
    monkeypatch.setattr(fake_trt.ITimingCache, "combine", lambda self, input_cache, ignore_mismatch: False)
    with caplog.at_level(logging.WARNING, logger="quantbench.backends.trt"):
        backend.build(tmp_path / "b.onnx", BuildOptions(), cache)
    assert "could not merge the timing cache" in caplog.text


def test_a_plan_from_another_version_is_refused_with_the_fix(tmp_path, cache, monkeypatch):
    tiny_conv_onnx(tmp_path / "m.onnx")
    trt_fake.install("10.16.1.11", monkeypatch)
    engine = TensorRTBackend().build(tmp_path / "m.onnx", BuildOptions(), cache)
    trt_fake.install("11.4.0.106", monkeypatch)
    with pytest.raises(BackendError, match="built by another TensorRT version or for another GPU; delete it"):
        TensorRTBackend().open(engine)
