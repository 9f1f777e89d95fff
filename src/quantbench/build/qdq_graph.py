"""Q/DQ graph surgery on a ModelOpt INT8 ONNX: its quantized layer groups, any subset of them put
back into high precision without re-calibrating, and the FLOPs each one carries.

A *layer group* is one node ModelOpt quantized (its *anchor*: a Conv, MatMul, Add, MaxPool,
Resize, ...) together with the QuantizeLinear -> DequantizeLinear pairs on its inputs. That is
the unit TensorRT fuses (DQ -> Conv(+act) -> Q; the Q/DQ pairs feeding an Add) and the unit
ModelOpt's ``nodes_to_exclude`` takes, so a group's name is exactly its anchor's node name.

`QdqModel.materialize(quantized)` re-emits the graph with only the groups in ``quantized`` left
in INT8, mimicking what ModelOpt's ``nodes_to_exclude`` builds, but reusing the calibrated
scales of everything else:

* ModelOpt quantizes a tensor once and shares the Q/DQ pair between all its consumers. A pair
  that no remaining INT8 group wants is removed (every consumer reads the float tensor again).
* An excluded *linear* op (Conv, ConvTranspose, Gemm, MatMul) reads float inputs even where the
  tensor's Q/DQ pair stays for another consumer (ModelOpt's
  ``classify_partially_quantized_weighted_ops``), except where ModelOpt itself cannot find the
  pair (a graph input, a Split's second output); any other excluded op keeps reading a shared
  pair, as in ModelOpt's build.

Weights are Q/DQ'd from their FP32 (or FP16) initializers in ModelOpt's default output, so
bypassing a weight pair restores the exact original weight.

Lives in ``build/`` because the builds derive INT8 variants from one shared calibration with it
(`build.shared_calibration`); the analysis (sensitivity, split search) measures its subsets.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import shape_inference

from quantbench.build import onnx_graph
from quantbench.build.onnx_graph import DEQUANTIZE, QUANTIZE
from quantbench.errors import ModelError

# Ops whose cost is multiply-accumulates over a weight or a second operand.
LINEAR_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
# Everything ModelOpt's INT8 mode can quantize (modelopt/onnx/quantization/int8.py lists these;
# Resize comes in through its KGEN-head rule). Concat, Reshape, Shape... only ever *read* a
# shared DQ: they are never groups of their own.
QUANTIZABLE_OPS = LINEAR_OPS | frozenset(
    {"Add", "AveragePool", "BatchNormalization", "Clip", "GlobalAveragePool", "MaxPool", "Mul", "Resize"}
)


@dataclass(frozen=True)
class QdqPair:
    """One QuantizeLinear -> DequantizeLinear pair and the float tensor it quantizes."""

    source: str  # the float tensor the Q reads: an activation or a weight initializer
    quantize_node: str
    dequantize_node: str
    dequantized: str  # the DQ's output, read by the consumers
    is_weight: bool


@dataclass(frozen=True)
class LayerGroup:
    """One quantized node (the anchor) and the Q/DQ pairs on its inputs."""

    name: str  # the anchor's node name: what ModelOpt's nodes_to_exclude matches
    op_type: str
    quantized_inputs: tuple[str, ...]  # float tensors quantized on the anchor's inputs
    flops: int  # 2 x MACs for linear ops, output elements otherwise (batch 1)

    @property
    def is_linear(self) -> bool:
        return self.op_type in LINEAR_OPS


class QdqModel:
    """A ModelOpt INT8 Q/DQ ONNX, parsed into layer groups; never modified in place."""

    def __init__(self, model: onnx.ModelProto, *, source: str = "<memory>", input_size: int = 640):
        self.model = model
        self.source = source
        self.input_size = input_size
        nodes = list(model.graph.node)
        producers = onnx_graph.producers(model.graph)
        self._initializers = set(onnx_graph.initializers(model.graph))
        self._graph_outputs = {out.name for out in model.graph.output}

        pairs: dict[str, QdqPair] = {}  # keyed by the DQ output
        for node in nodes:
            if node.op_type != DEQUANTIZE:
                continue
            q_node = producers.get(node.input[0])
            if q_node is None or q_node.op_type != QUANTIZE:
                raise ModelError(
                    f"{source}: DequantizeLinear {node.name!r} reads stored INT8 data, not a QuantizeLinear, so the "
                    "high-precision original is gone; quantize with ModelOpt's default Q/DQ output (no dq_only)."
                )
            pairs[node.output[0]] = QdqPair(
                source=q_node.input[0],
                quantize_node=q_node.name,
                dequantize_node=node.name,
                dequantized=node.output[0],
                is_weight=q_node.input[0] in self._initializers,
            )
        if not pairs:
            raise ModelError(
                f"{source} has no QuantizeLinear/DequantizeLinear pairs; pass an INT8 variant built by ModelOpt "
                "(quantbench quantize --variant int8-...), not the FP32 or FP16 model."
            )
        self.pairs = pairs

        anchors = []
        for node in nodes:
            if node.op_type in QUANTIZABLE_OPS and any(i in pairs for i in node.input):
                if not node.name:
                    raise ModelError(f"{source}: a quantized {node.op_type} node has no name; re-export the model.")
                anchors.append(node)
        linear_names = [n.name for n in nodes if n.op_type in LINEAR_OPS and n.name]
        flops = node_flops(model, input_size, {n.name for n in anchors} | set(linear_names))
        self.groups: tuple[LayerGroup, ...] = tuple(
            LayerGroup(n.name, n.op_type, tuple(pairs[i].source for i in n.input if i in pairs), flops[n.name])
            for n in anchors
        )
        self._group_by_name = {g.name: g for g in self.groups}
        # Total cost of every linear op in the graph, quantized or not: the INT8 share's denominator.
        self.linear_flops_total = sum(flops[name] for name in linear_names)
        # dq output -> anchors reading it (a DQ also feeds Shape, Concat... which are not groups)
        readers = onnx_graph.consumers(model.graph)
        self._group_readers = {dq_out: names for dq_out in pairs
                               if (names := [n.name for n in readers.get(dq_out, []) if n.name in self._group_by_name])}
        # ModelOpt 0.47 (graph_utils.remove_partial_input_qdq) finds the Q/DQ pair to bypass for an
        # excluded linear op through its producer's *first* output; a tensor that is a graph input,
        # or a later output of a Split, keeps feeding the excluded op through its shared pair.
        self._first_outputs = {node.output[0] for node in nodes if node.output}

    @classmethod
    def load(cls, path: str | Path, *, input_size: int = 640) -> QdqModel:
        path = Path(path)
        try:
            model = onnx.load(str(path))
        except (OSError, DecodeError, ValueError) as exc:
            raise ModelError(f"{path} could not be read as ONNX ({exc}); rebuild the INT8 variant.") from exc
        return cls(model, source=str(path), input_size=input_size)

    @property
    def group_names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.groups)

    def group(self, name: str) -> LayerGroup:
        try:
            return self._group_by_name[name]
        except KeyError:
            raise ModelError(
                f"{name!r} is not a quantized layer of {self.source}; pick one of the names the sensitivity "
                "report lists."
            ) from None

    def check_names(self, names: Iterable[str]) -> frozenset[str]:
        return frozenset(self.group(n).name for n in names)

    def int8_flop_share(self, excluded: Collection[str]) -> float:
        """Share of all linear-op FLOPs that still run INT8 with ``excluded`` groups in high precision."""
        if self.linear_flops_total == 0:
            return 0.0
        excluded = self.check_names(excluded)
        int8 = sum(g.flops for g in self.groups if g.is_linear and g.name not in excluded)
        return int8 / self.linear_flops_total

    def fp16_linear_layers(self, excluded: Collection[str]) -> int:
        """Linear ops (convolutions, matmuls) kept out of INT8: ModelOpt's own exclusions plus ``excluded``."""
        excluded = self.check_names(excluded)
        linear_total = sum(1 for n in self.model.graph.node if n.op_type in LINEAR_OPS)
        int8 = sum(1 for g in self.groups if g.is_linear and g.name not in excluded)
        return linear_total - int8

    def with_excluded(self, excluded: Collection[str]) -> onnx.ModelProto:
        """The graph with ``excluded`` groups in high precision and every other group INT8."""
        excluded = self.check_names(excluded)
        return self.materialize([g for g in self.group_names if g not in excluded])

    def with_only(self, quantized: Collection[str]) -> onnx.ModelProto:
        """The high-precision graph with only ``quantized`` groups INT8 (their scales as calibrated)."""
        return self.materialize(quantized)

    def materialize(self, quantized: Collection[str]) -> onnx.ModelProto:
        """A new ModelProto with only the ``quantized`` groups' Q/DQ in effect (see the module doc)."""
        keep = self.check_names(quantized)
        model = copy.deepcopy(self.model)
        graph = model.graph
        rewires: dict[tuple[str, str], str] = {}  # (consumer node name, dq output) -> float source
        drop_pairs: set[str] = set()
        for dq_out, pair in self.pairs.items():
            readers = self._group_readers.get(dq_out, [])
            wanted = [r for r in readers if r in keep]
            if not wanted:
                if dq_out in self._graph_outputs:
                    continue  # a DQ that is itself a model output stays: renaming outputs breaks callers
                drop_pairs.add(dq_out)
                continue
            if pair.source not in self._first_outputs:
                continue  # ModelOpt cannot bypass this pair for an excluded reader either (see __init__)
            for reader in readers:
                if reader not in keep and self._group_by_name[reader].is_linear:
                    rewires[(reader, dq_out)] = pair.source

        dropped_nodes: set[str] = set()
        for dq_out in drop_pairs:
            pair = self.pairs[dq_out]
            dropped_nodes.update((pair.quantize_node, pair.dequantize_node))
        kept_nodes = []
        for node in graph.node:
            if node.op_type in (QUANTIZE, DEQUANTIZE) and node.name in dropped_nodes:
                continue
            for idx, name in enumerate(node.input):
                if name in drop_pairs:
                    node.input[idx] = self.pairs[name].source
                elif (node.name, name) in rewires:
                    node.input[idx] = rewires[(node.name, name)]
            kept_nodes.append(node)
        del graph.node[:]
        graph.node.extend(kept_nodes)
        _drop_unused_initializers(graph)
        return model


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input}
    used.update(out.name for out in graph.output)
    kept = [init for init in graph.initializer if init.name in used]
    if len(kept) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(kept)


def _fixed_input_model(model: onnx.ModelProto, input_size: int) -> onnx.ModelProto:
    """A shallow-typed copy whose symbolic input dims are fixed: batch 1, spatial ``input_size``."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for inp in fixed.graph.input:
        dims = inp.type.tensor_type.shape.dim
        for axis, dim in enumerate(dims):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                continue
            dim.Clear()
            dim.dim_value = 1 if axis == 0 else input_size
    return fixed


def tensor_shapes(model: onnx.ModelProto, input_size: int) -> dict[str, tuple[int, ...]]:
    """Static shapes of every tensor onnx shape inference can resolve at batch 1, ``input_size`` px."""
    inferred = shape_inference.infer_shapes(_fixed_input_model(model, input_size), data_prop=True)
    shapes: dict[str, tuple[int, ...]] = {}
    infos = list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output)
    for info in infos:
        dims = info.type.tensor_type.shape.dim
        if info.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[info.name] = tuple(int(d.dim_value) for d in dims)
    for init in inferred.graph.initializer:
        shapes[init.name] = tuple(int(d) for d in init.dims)
    return shapes


def node_flops(model: onnx.ModelProto, input_size: int, names: Collection[str]) -> dict[str, int]:
    """FLOPs of the named nodes at batch 1: 2 x MACs for linear ops, output elements for the others.

    A Q/DQ graph works as well as its FP32 source: shapes flow through the Q/DQ pairs unchanged.
    """
    shapes = tensor_shapes(model, input_size)
    out: dict[str, int] = {}
    for node in model.graph.node:
        if node.name not in names:
            continue
        out_shape = shapes.get(node.output[0])
        if out_shape is None:
            raise ModelError(
                f"the output shape of {node.op_type} {node.name!r} cannot be inferred at {input_size} px; "
                "export the model with a static input size or with onnx shape information."
            )
        out_elems = int(np.prod(out_shape))
        if node.op_type in ("Conv", "ConvTranspose"):
            weight = _shape_of(shapes, node, 1)
            if node.op_type == "Conv":  # every output element sums Cin/groups x kernel products
                macs = out_elems * int(np.prod(weight[1:]))
            else:  # every input element scatters into Cout/groups x kernel outputs
                macs = int(np.prod(_shape_of(shapes, node, 0))) * int(np.prod(weight[1:]))
        elif node.op_type == "MatMul":
            macs = out_elems * _shape_of(shapes, node, 0)[-1]
        elif node.op_type == "Gemm":
            trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
            a_shape = _shape_of(shapes, node, 0)
            macs = out_elems * (a_shape[0] if trans_a else a_shape[-1])
        else:
            out[node.name] = out_elems
            continue
        out[node.name] = 2 * macs
    return out


def _shape_of(shapes: dict[str, tuple[int, ...]], node: onnx.NodeProto, index: int) -> tuple[int, ...]:
    shape = shapes.get(node.input[index])
    if shape is None:
        raise ModelError(
            f"input {index} of {node.op_type} {node.name!r} has no static shape; export the model with a static "
            "input size or with onnx shape information."
        )
    return shape
