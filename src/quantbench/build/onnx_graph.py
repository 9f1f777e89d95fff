"""Read-only queries on an ONNX graph: who produces and who reads a tensor, which nodes a Q/DQ graph
means to run in INT8, the real inputs, tensor dims and Ultralytics' metadata.

One home for what export, quantize, the Q/DQ analysis and both backends ask of a graph, so that
"fed by a DequantizeLinear" or "the image input" means the same thing everywhere. Nothing here
changes a model.
"""

from __future__ import annotations

import ast
import collections
from pathlib import Path

import onnx

QUANTIZE = "QuantizeLinear"
DEQUANTIZE = "DequantizeLinear"
QDQ_OPS = frozenset({QUANTIZE, DEQUANTIZE})


def load_graph(path: str | Path) -> onnx.ModelProto:
    """The model at ``path`` without its external weights: enough for any query on its structure."""
    return onnx.load(str(path), load_external_data=False)


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """Tensor name -> the node that writes it (graph inputs and initializers have none)."""
    return {out: node for node in graph.node for out in node.output if out}


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes that read it, in graph order."""
    readers: dict[str, list[onnx.NodeProto]] = collections.defaultdict(list)
    for node in graph.node:
        for name in node.input:
            if name:
                readers[name].append(node)
    return dict(readers)


def initializers(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Initializer (weight) name -> its tensor."""
    return {init.name: init for init in graph.initializer}


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The inputs a caller feeds: older IR versions also list the initializers among the inputs."""
    weights = initializers(model.graph)
    return [i for i in model.graph.input if i.name not in weights]


def dims(value_info: onnx.ValueInfoProto) -> list[int | str | None]:
    """Static dims as ints, symbolic ones as their name (None when unnamed)."""
    return [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
        for d in value_info.type.tensor_type.shape.dim
    ]


def dequantized_tensors(graph: onnx.GraphProto) -> frozenset[str]:
    """Every tensor a DequantizeLinear writes."""
    return frozenset(out for node in graph.node if node.op_type == DEQUANTIZE for out in node.output)


def int8_intended_nodes(model: onnx.ModelProto) -> tuple[onnx.NodeProto, ...]:
    """The nodes a Q/DQ graph means to run in INT8: those (other than Q/DQ) fed by a DequantizeLinear."""
    dequantized = dequantized_tensors(model.graph)
    return tuple(node for node in model.graph.node
                 if node.op_type not in QDQ_OPS and any(i in dequantized for i in node.input))


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    """The model's ``metadata_props`` as a dict."""
    return {prop.key: prop.value for prop in model.metadata_props}


def metadata_imgsz(model: onnx.ModelProto) -> tuple[int, int] | None:
    """(height, width) from Ultralytics' ``imgsz`` metadata (``'[640, 640]'`` or ``'640'``), if readable."""
    text = metadata(model).get("imgsz")
    if text is None:
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    sides = [value] if isinstance(value, int) else list(value) if isinstance(value, (list, tuple)) else []
    if len(sides) not in (1, 2) or not all(isinstance(s, int) and not isinstance(s, bool) for s in sides):
        return None
    return int(sides[0]), int(sides[-1])
