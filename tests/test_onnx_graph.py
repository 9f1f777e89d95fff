"""`onnx_graph`: the graph queries export, quantize, the analysis and the backends share."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantbench.build import onnx_graph


def _qdq_model(imgsz: str | None = None):
    """x -> Q -> DQ -> Relu -> Add(relu, x) -> y; the scale and zero point are initializers (and, as in
    old IR versions, also listed among the inputs)."""
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "scale")
    zero = numpy_helper.from_array(np.array(0, np.int8), "zero")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "scale", "zero"], ["xdq"], name="dq"),
        helper.make_node("Relu", ["xdq"], ["r"], name="relu"),
        helper.make_node("Add", ["r", "x"], ["y"], name="add"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "h", 8])
    graph = helper.make_graph(nodes, "g", [x, helper.make_tensor_value_info("scale", TensorProto.FLOAT, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [scale, zero])
    model = helper.make_model(graph)
    if imgsz is not None:
        helper.set_model_props(model, {"imgsz": imgsz})
    return model


def test_producers_consumers_and_the_int8_nodes():
    model = _qdq_model()
    graph = model.graph
    assert onnx_graph.producers(graph)["xdq"].name == "dq" and "x" not in onnx_graph.producers(graph)
    assert [n.name for n in onnx_graph.consumers(graph)["x"]] == ["q", "add"]
    assert set(onnx_graph.initializers(graph)) == {"scale", "zero"}
    assert [i.name for i in onnx_graph.graph_inputs(model)] == ["x"]  # the listed initializer is no input
    assert onnx_graph.dims(graph.input[0]) == ["batch", 3, "h", 8]
    assert onnx_graph.dequantized_tensors(graph) == {"xdq"}
    assert [n.name for n in onnx_graph.int8_intended_nodes(model)] == ["relu"]  # Add reads no DQ output


@pytest.mark.parametrize(("text", "expected"), [
    ("[640, 640]", (640, 640)), ("[480, 640]", (480, 640)), ("640", (640, 640)), ("[320]", (320, 320)),
    ("[1, 2, 3]", None), ("'640'", None), ("not python", None), (None, None),
])
def test_imgsz_metadata(text, expected):
    assert onnx_graph.metadata_imgsz(_qdq_model(text)) == expected
