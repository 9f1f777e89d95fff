"""Per-layer precision report from IEngineInspector JSON (pure Python, no TensorRT needed).

``tests/data/trex/*.json`` are REAL engine-inspector JSON files from NVIDIA's trt-engine-explorer
(NVIDIA/TensorRT, Apache-2.0; see ``tests/data/trex/README.md``): ResNet FP32/FP16/QAT-INT8 engines
built on an A100 and an RTX 3090, MobileNet QAT engines. The report's verdicts on them are checked
against what the JSON itself says (the convolutions' weight types).

``tests/data/trt10_engine_information_sample.json`` and ``trt11_engine_information_sample.json`` are
HAND-WRITTEN samples of the documented ``get_engine_information(LayerInformationFormat.JSON)``
schema (TensorRT 10: ``Bindings`` and ``Format/Datatype`` strings, shaped after the engine JSON in
NVIDIA's trt-engine-explorer examples; TensorRT 11: ``I/O Tensors`` and split ``DataType``/``Format``
per NVIDIA's 10.x -> 11.x inspector migration page). No TensorRT produced them: it cannot be
installed where these tests were written. Layer names follow a YOLO11 INT8 Q/DQ export.
"""

from __future__ import annotations

import copy
import json
import re
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantbench.backends.trt_precision import (
    LayerRole,
    MissedInt8,
    NoInt8Warning,
    dtype_of,
    parse_engine_information,
    precision_report,
    qdq_layers,
)
from quantbench.errors import BackendError
from quantbench.records import to_dict

DATA = Path(__file__).parent / "data"
TRT10_SAMPLE = DATA / "trt10_engine_information_sample.json"
TRT11_SAMPLE = DATA / "trt11_engine_information_sample.json"

# What the TRT10 sample's Q/DQ graph meant to be INT8 (nodes fed by DequantizeLinear).
INTENDED = (
    "/model.0/conv/Conv",
    "/model.1/conv/Conv",
    "/model.2/m/MaxPool",
    "/model.10/m/m.0/attn/MatMul",
    "/model.23/cv3.0/cv3.0.2/Conv",
    "/model.9/m/MaxPool",  # not in the sample engine at all
)


@pytest.mark.parametrize(
    ("text", "dtype"),
    [  # strings TensorRT writes (trt-engine-explorer's format table), long and short forms
        ("Thirty-two wide channel vectorized row major Int8 format", "int8"),
        ("Row major Int8 format", "int8"),
        ("Channel major FP16 format where channel % 8 == 0", "fp16"),
        ("Row major linear FP16 format", "fp16"),
        ("Row major linear FP32", "fp32"),
        ("Row major linear BFloat16 format", "bf16"),
        ("Row major linear UInt8 format", "uint8"),
        ("Row major linear Int32", "int32"),
        ("Row major linear FP8 format", "fp8"),
        ("Half", "fp16"),
        ("Float", "fp32"),
        ("Int8", "int8"),
        ("Unknown format", "unknown"),
        ("", "unknown"),
    ],
)
def test_data_types_from_inspector_strings(text, dtype):
    assert dtype_of(text) == dtype


def test_trt10_sample_layers():
    layers = {layer.name: layer for layer in parse_engine_information(TRT10_SAMPLE.read_text())}
    assert len(layers) == 12
    quantize = layers["/model.0/conv/input_quantizer/QuantizeLinear"]
    assert quantize.role is LayerRole.CAST and quantize.input_types == ("fp32",) and quantize.output_types == ("int8",)
    first_conv = next(v for k, v in layers.items() if "/model.0/conv/Conv" in k)
    assert first_conv.role is LayerRole.COMPUTE and first_conv.precision == "int8"
    assert first_conv.onnx_nodes == ("/model.0/conv/weight_quantizer/DequantizeLinear", "/model.0/conv/Conv",
                                     "/model.0/act/Sigmoid", "/model.0/act/Mul")
    assert layers["Reformatting CopyNode for Input Tensor 0 to /model.2/m/MaxPool"].role is LayerRole.REFORMAT
    assert layers["/model.23/Cast"].role is LayerRole.CAST
    assert layers["/model.23/Concat_5"].role is LayerRole.NOOP
    assert layers["/model.23/dfl/conv/Conv"].precision == "fp32"
    assert layers["/model.23/Shape + /model.23/Gather"].precision == "int32"
    myelin = next(v for k, v in layers.items() if k.startswith("{ForeignNode"))
    assert myelin.precision == "fp16" and "/model.10/m/m.0/attn/MatMul" in myelin.onnx_nodes


def test_trt10_sample_report():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # INT8 is present: no warning
        report = precision_report(TRT10_SAMPLE.read_text(), INTENDED, engine="int8.engine")
    assert (report.layers, report.int8_layers, report.fp16_layers, report.fp32_layers, report.other_layers) == (12, 2, 3, 2, 1)
    assert (report.reformat_layers, report.cast_layers) == (1, 2)
    assert report.intended_int8_nodes == 6 and report.runs_int8 and not report.int8_missing
    assert report.missed_int8 == (
        MissedInt8("/model.2/m/MaxPool", "/model.2/m/MaxPool", "fp16"),
        MissedInt8("/model.10/m/m.0/attn/MatMul", "{ForeignNode[/model.10/m/m.0/attn/Transpose.../model.10/m/m.0/attn/Reshape_2]}", "fp16"),
        MissedInt8("/model.23/cv3.0/cv3.0.2/Conv",
                   "/model.23/cv3.0/cv3.0.2/weight_quantizer/DequantizeLinear + /model.23/cv3.0/cv3.0.2/Conv", "fp16"),
    )
    assert report.unplaced_int8_nodes == ("/model.9/m/MaxPool",)
    record = to_dict(report)  # what goes into LatencyResult.precision
    assert json.loads(json.dumps(record))["missed_int8"][0] == {"node": "/model.2/m/MaxPool", "layer": "/model.2/m/MaxPool", "precision": "fp16"}


def test_trt11_sample_reads_the_split_datatype_fields():
    report = precision_report(TRT11_SAMPLE.read_text(), ["/model.0/conv/Conv", "/model.23/cv3.0/cv3.0.2/Conv"])
    assert (report.layers, report.int8_layers, report.fp16_layers, report.cast_layers) == (3, 1, 1, 1)
    assert [m.node for m in report.missed_int8] == ["/model.23/cv3.0/cv3.0.2/Conv"]


def test_an_int8_variant_without_int8_layers_is_flagged_loudly():
    sample = json.loads(TRT10_SAMPLE.read_text())
    fp16_engine = copy.deepcopy(sample)
    fp16_engine["Layers"] = [layer for layer in sample["Layers"] if "Int8" not in json.dumps(layer)]
    with pytest.warns(NoInt8Warning, match=r"int8\.engine runs no layer in INT8 although its ONNX asks for 6 INT8 nodes"):
        report = precision_report(fp16_engine, INTENDED, engine="int8.engine")
    assert report.int8_missing and not report.runs_int8 and report.int8_layers == 0

    with warnings.catch_warnings():  # an FP16 variant asks for no INT8: nothing to flag
        warnings.simplefilter("error")
        report = precision_report(fp16_engine, (), engine="fp16.engine")
    assert not report.int8_missing and report.intended_int8_nodes == 0


def test_engines_without_metadata_are_matched_by_fused_layer_names():
    """Older engines (no Metadata): TensorRT names fused layers 'node + node + ...'."""
    info = {"Layers": [
        {"Name": "conv1.weight + QuantizeLinear_7 + Conv_9 + MaxPool_12", "LayerType": "ConvActPool",
         "Inputs": [{"Name": "x", "Format/Datatype": "Row major Int8 format"}],
         "Outputs": [{"Name": "y", "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format"}],
         "ConvWeights": {"Type": "Int8", "Count": 9408}},
        {"Name": "Gemm_311", "LayerType": "CaskConvolution",
         "Inputs": [{"Name": "y", "Format/Datatype": "Row major linear FP32"}],
         "Outputs": [{"Name": "z", "Format/Datatype": "Row major linear FP32"}]},
    ], "Bindings": ["x", "z"]}
    report = precision_report(info, ["Conv_9", "Gemm_311"])
    assert report.int8_layers == 1 and report.fp32_layers == 1
    assert report.missed_int8 == (MissedInt8("Gemm_311", "Gemm_311", "fp32"),)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("not json", "is not JSON"),
        ("[1, 2]", "is not a JSON object"),
        ('{"Bindings": []}', "has no 'Layers' list"),
        ('{"Layers": ["conv1", "relu1"], "Bindings": []}', "ProfilingVerbosity.DETAILED"),
    ],
)
def test_unreadable_engine_information_names_the_engine_and_the_fix(payload, message):
    with pytest.raises(BackendError, match=rf"^the engine information of yolo\.engine .*{re.escape(message)}"):
        precision_report(payload, [], engine="yolo.engine")


# --- intended INT8 nodes from the ONNX -----------------------------------------------------------------


def _qdq_every_conv(model: onnx.ModelProto) -> onnx.ModelProto:
    """Put a Q/DQ pair (ModelOpt's layout) in front of every Conv's activation input."""
    graph = model.graph
    graph.initializer.extend([numpy_helper.from_array(np.array(0.02, np.float32), "qb_scale"),
                              numpy_helper.from_array(np.array(0, np.int8), "qb_zero")])
    nodes = []
    for node in graph.node:
        if node.op_type == "Conv":
            x = node.input[0]
            nodes += [
                helper.make_node("QuantizeLinear", [x, "qb_scale", "qb_zero"], [f"{node.name}/q"], name=f"{node.name}/input_quantizer/QuantizeLinear"),
                helper.make_node("DequantizeLinear", [f"{node.name}/q", "qb_scale", "qb_zero"], [f"{node.name}/dq"], name=f"{node.name}/input_quantizer/DequantizeLinear"),
            ]
            node.input[0] = f"{node.name}/dq"
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def test_qdq_layers_of_a_yolo11n_graph(yolo11n_onnx, tmp_path):
    model = onnx.load(str(yolo11n_onnx))
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) > 50 and qdq_layers(model) == ()  # FP32 export: nothing asks for INT8
    quantized = _qdq_every_conv(model)
    onnx.save(quantized, tmp_path / "yolo11n_qdq.onnx")
    assert qdq_layers(tmp_path / "yolo11n_qdq.onnx") == tuple(convs)


def test_report_on_yolo11n_node_names(yolo11n_onnx):
    """Engine information synthesised to the documented schema from the real YOLO11n node names:
    every Conv runs INT8 except the detection head's (model.23), which runs FP16."""
    model = _qdq_every_conv(onnx.load(str(yolo11n_onnx)))
    intended = qdq_layers(model)
    head = [n for n in intended if n.startswith("/model.23/")]
    assert head and len(head) < len(intended)
    layers = []
    for node in intended:
        fmt = "Half" if node in head else "Int8"
        layers.append({"Name": f"{node} + PWN({node}_act)", "LayerType": "CaskConvolution",
                       "Inputs": [{"Name": "in", "Format/Datatype": fmt}], "Outputs": [{"Name": "out", "Format/Datatype": fmt}],
                       "Weights": {"Type": fmt, "Count": 1}, "Metadata": f"[ONNX Layer: {node}]\x1e[ONNX Layer: {node}_act]"})
    report = precision_report({"Layers": layers, "Bindings": ["images", "output0"]}, intended, engine="yolo11n.engine")
    assert report.int8_layers == len(intended) - len(head) and report.fp16_layers == len(head)
    assert [m.node for m in report.missed_int8] == head and not report.unplaced_int8_nodes


def test_qdq_layers_skips_the_quantizers_themselves():
    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
            helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xdq"], name="dq"),
            helper.make_node("QuantizeLinear", ["xdq", "s", "z"], ["xq2"], name="q2"),  # requantize: not a compute node
            helper.make_node("Relu", ["xdq"], ["r"], name="relu"),
            helper.make_node("Add", ["r", "x"], ["y"], name="add"),  # not fed by a DQ
        ],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [numpy_helper.from_array(np.array(1.0, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")],
    )
    assert qdq_layers(helper.make_model(graph)) == ("relu",)


# --- real engines: NVIDIA's trt-engine-explorer examples ------------------------------------------------

TREX = sorted((DATA / "trex").glob("*.json"))


def _trex(name_part: str) -> dict:
    (path,) = [p for p in TREX if name_part in p.name]
    return json.loads(path.read_text())


def _conv_weight_types(info: dict) -> list[str]:
    """The weight type TensorRT wrote for each convolution layer (read straight from the JSON)."""
    return [(layer.get("Weights") or layer["ConvWeights"])["Type"] for layer in info["Layers"]
            if "Convolution" in layer["LayerType"] or layer["LayerType"] == "ConvActPool"]


def test_the_real_inspector_files_are_the_attributed_trex_copies():
    assert len(TREX) == 10
    assert "Apache-2.0" in (DATA / "trex" / "README.md").read_text()
    assert all("Layers" in json.loads(p.read_text()) and "Bindings" in json.loads(p.read_text()) for p in TREX)


@pytest.mark.parametrize("path", TREX, ids=lambda p: p.name.split(".onnx")[0])
def test_report_verdicts_on_real_engines(path):
    info = json.loads(path.read_text())
    weights = _conv_weight_types(info)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no intended INT8 nodes given: never a NoInt8Warning
        report = precision_report(info, (), engine=path.name)
    layers = parse_engine_information(info)
    compute = [layer for layer in layers if layer.role is LayerRole.COMPUTE]
    convs = [layer for layer in compute if "Convolution" in layer.layer_type or layer.layer_type == "ConvActPool"]
    assert len(convs) == len(weights) > 15
    # every convolution is counted in the precision of its weights, as TensorRT wrote it
    assert [layer.precision for layer in convs] == [dtype_of(w) for w in weights]
    assert report.int8_layers + report.fp16_layers + report.fp32_layers + report.other_layers == len(compute)
    if "qat" in path.name:
        assert report.runs_int8 and report.int8_layers >= len(convs)
    elif "fp16" in path.name:
        assert report.int8_layers == 0 and report.fp16_layers >= len(convs)
    else:
        assert report.int8_layers == report.fp16_layers == 0 and report.fp32_layers >= len(convs)
    assert report.other_layers == 0  # every compute layer's data type was read


def test_missed_int8_on_a_real_qat_engine():
    """The QAT ResNet (A100): the Q/DQ-fed nodes TensorRT kept out of INT8 are named with their layer and precision.

    In the JSON: Conv_9 and the FC (Gemm_257) are fused into INT8-weight convolutions, MaxPool_12 is a
    TiledPooling layer on "Row major linear FP32" tensors, GlobalAveragePool_246 one on FP16 tensors.
    """
    info = _trex("A100__qat__resnet-qat")
    report = precision_report(info, ("Conv_9", "MaxPool_12", "GlobalAveragePool_246", "Gemm_257", "Gemm_311"),
                              engine="resnet-qat")
    assert (report.int8_layers, report.fp16_layers, report.fp32_layers) == (21, 1, 1)
    assert report.missed_int8 == (MissedInt8("MaxPool_12", "MaxPool_12", "fp32"),
                                  MissedInt8("GlobalAveragePool_246", "GlobalAveragePool_246", "fp16"))
    assert report.unplaced_int8_nodes == ("Gemm_311",)  # no such node in this engine


def test_defect3_constant_and_shape_layers_do_not_make_an_engine_int8():
    """A real FP16 engine plus one INT8 Constant layer (real engines hold them): still no INT8 compute."""
    info = copy.deepcopy(_trex("A100__fp16__resnet"))
    info["Layers"].append({"Name": "fc.weight_quantized", "LayerType": "Constant",
                           "Inputs": [], "Outputs": [{"Name": "w_q", "Format/Datatype": "Row major Int8 format"}]})
    info["Layers"].append({"Name": "shape_of_input", "LayerType": "Shape", "ParameterType": "Shape",
                           "Inputs": [{"Name": "x", "Format/Datatype": "Row major linear FP16 format"}],
                           "Outputs": [{"Name": "s", "Format/Datatype": "Row major linear Int64"}]})
    intended = [n for layer in parse_engine_information(info) if layer.role is LayerRole.COMPUTE for n in layer.onnx_nodes][:3]
    with pytest.warns(NoInt8Warning, match="runs no layer in INT8"):
        report = precision_report(info, intended, engine="resnet-fp16")
    assert not report.runs_int8 and report.int8_missing and report.int8_layers == 0
    assert report.constant_layers == 2 and report.other_layers == 0
