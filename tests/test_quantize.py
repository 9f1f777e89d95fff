"""quantize.py: ModelOpt INT8 / FP16 builds on yolo11n and yolov5n-coco, caching, failures.

Kept light: 8 calibration images for INT8, 2 for FP16's reference run.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from quantbench.build.export import ModelInfo, resolve_model
from quantbench.build.quantize import count_quantized_nodes, head_nodes, quantize_variant
from quantbench.build.variants import Variant, VariantKind
from quantbench.cache import ArtifactCache
from quantbench.data.calibration import CalibrationSet, build_calibration
from quantbench.errors import QuantizeError
from quantbench.pipeline import Pipeline, PipelineSettings
from quantbench.records import VariantBuild

INT8_HEAD = Variant(name="int8-head-fp16", kind=VariantKind.INT8, calibration_method="max", exclude_head=True)
INT8_MAX = Variant(name="int8-max", kind=VariantKind.INT8, calibration_method="max")
FP16 = Variant(name="fp16", kind=VariantKind.FP16)
FP32 = Variant(name="fp32", kind=VariantKind.FP32)
# What Ultralytics' own INT8 export keeps out of INT8 (ultralytics/utils/export/engine.py).
ULTRALYTICS_HEAD_PATTERNS = (r".*\.2/Conv$", r".*/dfl/")


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _dq_fed(model: onnx.ModelProto) -> set[str]:
    dq_out = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name for n in model.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
            and any(i in dq_out for i in n.input)}


def _run(path: str | Path, batch: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


@pytest.fixture(scope="module")
def calib8(calib500: Path, session_cache: ArtifactCache) -> CalibrationSet:
    return build_calibration(calib500, 8, cache=session_cache, seed=0)


@pytest.fixture(scope="module")
def calib2(calib500: Path, session_cache: ArtifactCache) -> CalibrationSet:
    return build_calibration(calib500, 2, cache=session_cache, seed=1)


@pytest.fixture(scope="module")
def models(yolov5n_onnx: Path, yolo11n_onnx: Path, session_cache: ArtifactCache) -> dict[str, ModelInfo]:
    return {
        "yolov5n-coco": resolve_model(yolov5n_onnx, session_cache),
        "yolo11n": resolve_model(yolo11n_onnx, session_cache),  # fixes the dynamic side to 640
    }


# --- graph analysis --------------------------------------------------------------------------------

@pytest.mark.parametrize("fixture", ["yolo11n_onnx", "yolo11s_onnx"])
def test_head_nodes_match_ultralytics_int8_exclusions_on_yolo11(fixture: str, request: pytest.FixtureRequest):
    model = onnx.load(str(request.getfixturevalue(fixture)))
    expected = {n.name for n in model.graph.node if n.op_type == "Conv"
                and any(re.match(p, n.name) for p in ULTRALYTICS_HEAD_PATTERNS)}
    head = head_nodes(model)
    assert set(head) == expected
    assert len(head) == 7 and "/model.23/dfl/conv/Conv" in head  # 3 box + 3 class convs + DFL


def test_head_nodes_of_yolov5n_are_its_three_output_convs(yolov5n_onnx: Path):
    assert head_nodes(onnx.load(str(yolov5n_onnx))) == ("/model.24/m.0/Conv", "/model.24/m.1/Conv", "/model.24/m.2/Conv")


def test_count_quantized_nodes_counts_dq_consumers_only():
    f32 = TensorProto.FLOAT
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xdq"], name="dq"),
        helper.make_node("Relu", ["xdq"], ["a"], name="fed_by_dq"),
        helper.make_node("Add", ["a", "xdq"], ["b"], name="also_fed_by_dq"),
        helper.make_node("Relu", ["b"], ["y"], name="float_only"),
    ]
    inits = [helper.make_tensor("s", f32, [], [0.1]), helper.make_tensor("z", TensorProto.INT8, [], [0])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", f32, [1])],
                              [helper.make_tensor_value_info("y", f32, [1])], inits)
    assert count_quantized_nodes(helper.make_model(graph)) == 2


# --- INT8 -----------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["yolo11n", "yolov5n-coco"])
def test_int8_head_fp16_build(model_name: str, models: dict[str, ModelInfo], calib8: CalibrationSet,
                              session_cache: ArtifactCache, monkeypatch: pytest.MonkeyPatch):
    model = models[model_name]
    source_sha = _sha(model.path)
    siblings = sorted(p.name for p in model.path.parent.iterdir())

    build = quantize_variant(model, INT8_HEAD, calib8, session_cache)

    assert not build.cached and build.seconds > 0
    assert (build.model, build.variant, build.kind, build.base_sha256) == (model.name, "int8-head-fp16", "int8", model.sha256)
    assert build.options["calibration"] == {"sha256": calib8.sha256, "num_images": 8, "seed": 0, "eps": ["cpu"]}
    out = onnx.load(build.onnx_path)
    ops = [n.op_type for n in out.graph.node]
    assert ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") > 0
    quantized = _dq_fed(out)
    assert build.quantized_nodes == len(quantized) > 50
    expected_head = head_nodes(onnx.load(str(model.path)))
    assert build.excluded_nodes == expected_head
    assert not quantized & set(expected_head)  # the head convs read float tensors
    assert any(n.op_type == "Conv" for n in out.graph.node if n.name in quantized)  # the backbone's do not
    if model_name == "yolo11n":
        # The C2PSA attention block (model.10) went through ModelOpt and still runs.
        assert any(name.startswith("/model.10/") for name in quantized)

    x = calib8.load()[:1]
    y = _run(build.onnx_path, x)
    assert y.shape == (1, 84, model.num_anchors) and y.dtype == np.float32 and np.isfinite(y).all()

    # ModelOpt ran on a private copy: the input file and its folder are untouched.
    assert _sha(model.path) == source_sha
    assert sorted(p.name for p in model.path.parent.iterdir()) == siblings

    # Unchanged inputs: the second call is answered by the cache and never reaches ModelOpt.
    import modelopt.onnx.quantization as mq

    def refuse(*args, **kwargs):
        raise AssertionError("ModelOpt called for a cached variant")

    monkeypatch.setattr(mq, "quantize", refuse)
    again = quantize_variant(model, INT8_HEAD, calib8, session_cache)
    assert again.cached and again.onnx_path == build.onnx_path and again.onnx_sha256 == build.onnx_sha256
    assert (again.quantized_nodes, again.excluded_nodes, again.seconds) == (build.quantized_nodes, build.excluded_nodes, build.seconds)


def test_int8_without_calibration_is_refused(models: dict[str, ModelInfo], cache: ArtifactCache):
    with pytest.raises(QuantizeError, match="variant 'int8-max' .* of model yolov5n-coco needs calibration images"):
        quantize_variant(models["yolov5n-coco"], INT8_MAX, None, cache)
    with pytest.raises(QuantizeError, match="variant 'fp16' .* needs calibration images"):
        quantize_variant(models["yolov5n-coco"], FP16, None, cache)
    assert not cache.root.exists()


def test_calibration_of_another_size_is_refused(models: dict[str, ModelInfo], calib500: Path, cache: ArtifactCache):
    small = build_calibration(calib500, 1, cache=cache, size=320)
    with pytest.raises(QuantizeError, match="is 320x320 but model yolo11n takes 640x640; rebuild the calibration with size=640"):
        quantize_variant(models["yolo11n"], INT8_MAX, small, cache)


def test_fixed_batch_needs_whole_batches(yolov5n_onnx: Path, calib500: Path, cache: ArtifactCache):
    model = resolve_model(yolov5n_onnx, cache, batch=4)
    three = build_calibration(calib500, 3, cache=cache)
    with pytest.raises(QuantizeError, match="fixed batch of 4 but calibration .* holds only 3 images"):
        quantize_variant(model, INT8_MAX, three, cache)


def test_fp32_is_the_base_model(models: dict[str, ModelInfo], cache: ArtifactCache):
    model = models["yolo11n"]
    build = quantize_variant(model, FP32, None, cache)
    assert (build.onnx_path, build.onnx_sha256, build.quantized_nodes, build.excluded_nodes) == (str(model.path), model.sha256, 0, ())
    assert not cache.root.exists()  # nothing built


# --- FP16 -----------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["yolo11n", "yolov5n-coco"])
def test_fp16_build(model_name: str, models: dict[str, ModelInfo], calib2: CalibrationSet, session_cache: ArtifactCache):
    model = models[model_name]
    source_sha = _sha(model.path)
    build = quantize_variant(model, FP16, calib2, session_cache)
    out = onnx.load(build.onnx_path)
    init_types = [init.data_type for init in out.graph.initializer]
    assert init_types.count(TensorProto.FLOAT16) > 0.5 * len(init_types)  # weights went to fp16
    conv_weights = {n.input[1] for n in out.graph.node if n.op_type == "Conv"}
    assert all(i.data_type == TensorProto.FLOAT16 for i in out.graph.initializer if i.name in conv_weights)
    # float32 in and out: the pipeline around the model is unchanged.
    assert out.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert out.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert (build.kind, build.quantized_nodes) == ("fp16", 0)
    x = calib2.load()[:1]
    y16, y32 = _run(build.onnx_path, x), _run(model.path, x)
    assert y16.shape == y32.shape == (1, 84, model.num_anchors) and y16.dtype == np.float32
    if not model.untrained:  # real weights: FP16 boxes stay within a pixel of FP32's on the strongest anchors
        best = np.argsort(y32[0, 4:].max(0))[-20:]
        assert np.abs(y16[0, :4, best] - y32[0, :4, best]).max() < 1.0
    assert _sha(model.path) == source_sha


# --- one failing variant does not stop the others ------------------------------------------------

@pytest.mark.slow
def test_failing_variant_yields_its_error_while_others_build(
    models: dict[str, ModelInfo], calib500: Path, session_cache: ArtifactCache, monkeypatch: pytest.MonkeyPatch
):
    import modelopt.onnx.quantization as mq

    real_quantize = mq.quantize
    broken = Variant(name="int8-broken", kind=VariantKind.INT8, calibration_method="entropy")

    def quantize_failing_for_entropy(*args, **kwargs):
        # Failure injection at ModelOpt's entry point: entropy calibration "crashes".
        if kwargs.get("calibration_method") == "entropy":
            raise RuntimeError("injected calibration failure\nsecond line of a long traceback text")
        return real_quantize(*args, **kwargs)

    monkeypatch.setattr(mq, "quantize", quantize_failing_for_entropy)
    pipeline = Pipeline(session_cache, PipelineSettings(calib_data=calib500, calib_images=8, backend="onnxruntime"))
    results: dict[str, VariantBuild | QuantizeError] = {}
    for variant in (FP32, broken, INT8_HEAD):  # as the bench builds them: each on its own, in table order
        try:
            results[variant.name] = pipeline.build(models["yolov5n-coco"], variant)
        except QuantizeError as exc:
            results[variant.name] = exc

    assert list(results) == ["fp32", "int8-broken", "int8-head-fp16"]
    error = results["int8-broken"]
    assert isinstance(error, QuantizeError)
    assert str(error) == (
        "ModelOpt failed to build variant 'int8-broken' of model yolov5n-coco (RuntimeError: injected calibration "
        "failure); check the variant's options in the variant table; ModelOpt's log above has the details."
    )
    assert results["fp32"].kind == "fp32"
    good = results["int8-head-fp16"]
    assert not isinstance(good, QuantizeError) and good.quantized_nodes > 50 and Path(good.onnx_path).is_file()
    # Nothing half-built was published for the failed variant.
    published = {p.name for p in (session_cache.root / "variants").glob("*.onnx")}
    assert Path(good.onnx_path).name in published
    assert not any(p.name.endswith(".tmp.onnx") for p in (session_cache.root / "variants").iterdir())


# --- variants that would build but do nothing ------------------------------------------------------

YOLOV5N_OPS_BUT_SHAPE = ("Conv", "Add", "Mul", "Sigmoid", "Concat", "MaxPool", "Resize", "Sub", "Reshape", "Transpose",
                         "Slice", "Pow", "Cast", "Constant", "Expand", "Gather", "Range", "Unsqueeze")
NO_OP_VARIANTS = {
    "pattern-matching-no-node": (
        Variant(name="int8-typo", kind=VariantKind.INT8, nodes_to_exclude=(r"model\.0/conv/Conv",)),
        "variant 'int8-typo' of model yolov5n-coco, key 'nodes_to_exclude': 'model\\\\.0/conv/Conv' matches no node "
        "of the model (a node is named '/model.0/conv/Conv'); patterns are regular expressions matched from the "
        "start of the node name (ONNX names start with '/')."),
    "every-node-excluded": (
        Variant(name="int8-none", kind=VariantKind.INT8, nodes_to_exclude=(".*",)),
        "variant 'int8-none' of model yolov5n-coco, key 'nodes_to_exclude': it leaves none of the model's 515 nodes "
        "to convert to INT8; exclude less."),
    "op-type-the-model-lacks": (
        Variant(name="int8-softmax", kind=VariantKind.INT8, op_types_to_quantize=("Softmax",)),
        "variant 'int8-softmax' of model yolov5n-coco, key 'op_types_to_quantize': the model has no Softmax node; "
        "its op types are Add, Cast, Concat, Constant, Conv, Expand, Gather, MaxPool, Mul, Pow, Range, Reshape, "
        "Resize, Shape, Sigmoid, Slice, Sub, Transpose, Unsqueeze."),
    "every-op-type-excluded": (
        Variant(name="int8-no-ops", kind=VariantKind.INT8, op_types_to_exclude=(*YOLOV5N_OPS_BUT_SHAPE, "Shape")),
        "variant 'int8-no-ops' of model yolov5n-coco, key 'op_types_to_exclude': it leaves none of the model's 515 "
        "nodes to convert to INT8; exclude less."),
    "fp16-excluding-everything": (
        Variant(name="fp16-none", kind=VariantKind.FP16, nodes_to_exclude=("/model", "/Concat"),
                op_types_to_exclude=("Constant",)),
        "variant 'fp16-none' of model yolov5n-coco, key 'op_types_to_exclude + nodes_to_exclude': together they "
        "leave none of the model's 515 nodes to convert to FP16; exclude less."),
}


@pytest.mark.parametrize("case", list(NO_OP_VARIANTS))
def test_options_that_name_nothing_or_leave_nothing_fail_before_modelopt_runs(
        case: str, models: dict[str, ModelInfo], calib8: CalibrationSet, cache: ArtifactCache,
        monkeypatch: pytest.MonkeyPatch):
    import modelopt.onnx.autocast as autocast
    import modelopt.onnx.quantization as mq

    def refuse(*args, **kwargs):
        raise AssertionError("ModelOpt ran for a variant that should have been refused")

    monkeypatch.setattr(mq, "quantize", refuse)
    monkeypatch.setattr(autocast, "convert_to_mixed_precision", refuse)
    variant, message = NO_OP_VARIANTS[case]
    with pytest.raises(QuantizeError) as refused:
        quantize_variant(models["yolov5n-coco"], variant, calib8, cache)
    assert str(refused.value) == message
    assert not (cache.root / "variants").exists()


@pytest.mark.slow
def test_an_fp16_build_that_converts_nothing_is_a_failed_build(models: dict[str, ModelInfo], calib2: CalibrationSet,
                                                               cache: ArtifactCache):
    # Only the Shape nodes are left to AutoCast: it feeds them through Casts and computes nothing in FP16.
    variant = Variant(name="fp16-shapes-only", kind=VariantKind.FP16, op_types_to_exclude=YOLOV5N_OPS_BUT_SHAPE)
    with pytest.raises(QuantizeError, match=r"^ModelOpt AutoCast converted no node of variant 'fp16-shapes-only' of "
                                            r"model yolov5n-coco to FP16 \(options op_types_to_exclude="):
        quantize_variant(models["yolov5n-coco"], variant, calib2, cache)
    assert list((cache.root / "variants").glob("*.onnx")) == []  # nothing published: the next run fails again


def test_an_int8_build_without_a_quantized_node_is_a_failed_build(models: dict[str, ModelInfo]):
    from quantbench.build.quantize import _check_built

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    plain = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g", [x], [y]))
    with pytest.raises(QuantizeError, match="ModelOpt quantized no node of variant 'int8-max' of model yolov5n-coco "
                                            r"\(options defaults\): the build would be the FP model under an INT8 name"):
        _check_built(plain, models["yolov5n-coco"], INT8_MAX)


@pytest.mark.slow
def test_modelopt_itself_raising_is_a_failed_build_of_that_variant(models: dict[str, ModelInfo],
                                                                   calib8: CalibrationSet, cache: ArtifactCache):
    """A real ModelOpt failure, no injection: per-node calibration of a dynamic-batch model."""
    variant = Variant(name="int8-per-node", kind=VariantKind.INT8, calibrate_per_node=True)
    with pytest.raises(QuantizeError) as failed:
        quantize_variant(models["yolov5n-coco"], variant, calib8, cache)
    assert str(failed.value) == (
        "ModelOpt failed to build variant 'int8-per-node' of model yolov5n-coco (Exception: Incomplete symbolic shape "
        "inference); check the variant's options in the variant table; ModelOpt's log above has the details.")
    import traceback

    raised_in = [frame.filename for frame in traceback.extract_tb(failed.value.__cause__.__traceback__)]
    assert any("/modelopt/onnx/" in name for name in raised_in)  # raised inside ModelOpt itself
    assert list((cache.root / "variants").glob("*.onnx")) == []
    # ModelOpt left its per-node calibrator patches in ONNX Runtime; the next variant must still build.
    after = quantize_variant(models["yolov5n-coco"], INT8_MAX, calib8, cache)
    assert not after.cached and after.quantized_nodes > 50


@pytest.mark.slow
def test_the_record_says_how_many_calibration_images_were_used(models: dict[str, ModelInfo], calib8: CalibrationSet,
                                                                session_cache: ArtifactCache):
    build = quantize_variant(models["yolo11n"], INT8_HEAD, calib8, session_cache)  # the table says 128
    assert INT8_HEAD.calib_images == 128
    assert build.options["calib_images"] == 8 == build.options["calibration"]["num_images"]
