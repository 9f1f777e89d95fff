"""Which precision TensorRT really ran each layer in, from ``IEngineInspector`` JSON (pure Python).

A Q/DQ graph only *asks* for INT8: TensorRT fuses each DequantizeLinear into its consumer and runs
that layer in INT8 when it has an INT8 kernel for it, else in a higher precision. This module reads
the engine information that ``IEngineInspector.get_engine_information(LayerInformationFormat.JSON)``
returns for an engine built with ``ProfilingVerbosity.DETAILED`` and reports:

- how many layers compute in INT8 / FP16 / FP32 (others: BF16, INT32 maths...), and how many are
  reformats (layout copies), casts (data-type conversions, standalone Q/DQ scales included) or
  constants and shape layers (which compute no activation and never count as INT8 or FP16);
- the ONNX nodes the Q/DQ graph meant to be INT8 (nodes fed by a DequantizeLinear) that TensorRT ran
  in a higher precision, and those it cannot place (fused into an opaque region or eliminated).

Both JSON shapes are read: TensorRT 10 (``Bindings``; one ``Format/Datatype`` string per tensor,
either a long format description such as ``"Thirty-two wide channel vectorized row major Int8
format"`` or a short type such as ``"Half"``) and TensorRT 11 (``I/O Tensors``; separate
``DataType`` and ``Format`` fields). Engine layers name their ONNX nodes in ``Metadata``
(``[ONNX Layer: <node>]`` entries, 10.x+); without it the fused layer name (``a + b + c``) is used.
"""

from __future__ import annotations

import enum
import json
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from quantbench.build import onnx_graph
from quantbench.errors import BackendError

_CAST_KINDS = frozenset({"Cast", "Quantize", "Dequantize"})  # standalone type conversions
# Layers that hold or compute no activations: weights/constants and shape arithmetic. NVIDIA's
# trt-engine-explorer leaves them out of its precision views too; counted as compute, one INT8
# Constant would make an FP16 engine "run INT8".
_CONSTANT_KINDS = frozenset({"Constant", "Shape", "ShapeHostToDevice", "Assertion"})

# Data-type words found in inspector strings ("Row major linear FP32", "Half", "Int8", ...) -> canonical.
_DTYPE_WORDS = {
    "int8": "int8", "fp8": "fp8", "half": "fp16", "fp16": "fp16", "bfloat16": "bf16", "bf16": "bf16",
    "float": "fp32", "fp32": "fp32", "double": "fp64", "int32": "int32", "int64": "int64", "uint8": "uint8",
    "bool": "bool", "int4": "int4", "fp4": "fp4",
}
_FLOAT_PRECISIONS = ("fp32", "fp16", "bf16", "fp8")  # "higher than INT8" for the missed-INT8 list
_ONNX_LAYER = re.compile(r"\[ONNX Layer: (.+?)\](?=\s*(?:$|[\x1e\x1f]|\[ONNX Layer: ))")


class NoInt8Warning(UserWarning):
    """An engine built from a Q/DQ (INT8) graph runs no layer in INT8."""


class LayerRole(str, enum.Enum):
    COMPUTE = "compute"
    REFORMAT = "reformat"  # layout copy, same data type
    CAST = "cast"  # data-type conversion: Cast layers, standalone Quantize/Dequantize reformats
    NOOP = "noop"
    CONSTANT = "constant"  # constants and shape layers: no activation is computed


@dataclass(frozen=True)
class EngineLayer:
    name: str
    layer_type: str
    role: LayerRole
    precision: str  # int8 | fp16 | fp32 | bf16 | int32 | ... | unknown
    input_types: tuple[str, ...]
    output_types: tuple[str, ...]
    onnx_nodes: tuple[str, ...]


@dataclass(frozen=True)
class MissedInt8:
    """An ONNX node the Q/DQ graph meant to be INT8 that TensorRT ran in ``precision``."""

    node: str
    layer: str
    precision: str


@dataclass(frozen=True)
class PrecisionReport:
    """Per-precision layer counts of one engine and where INT8 was asked for but not delivered."""

    layers: int
    int8_layers: int
    fp16_layers: int
    fp32_layers: int
    other_layers: int  # compute layers in another precision (bf16, int32 shape maths, unknown)
    reformat_layers: int
    cast_layers: int
    intended_int8_nodes: int  # ONNX nodes fed by a DequantizeLinear
    missed_int8: tuple[MissedInt8, ...]  # ... of those, run in a higher precision
    unplaced_int8_nodes: tuple[str, ...]  # ... of those, in no compute layer (opaque fusion, eliminated)
    runs_int8: bool
    int8_missing: bool  # the graph asks for INT8 and the engine runs none: the variant is not INT8 at all
    constant_layers: int = 0  # constants and shape layers (not compute, not counted in the precisions)


def dtype_of(description: str | None) -> str:
    """Canonical data type of an inspector type/format string; ``unknown`` when none is named."""
    if not description:
        return "unknown"
    for word in re.split(r"[^A-Za-z0-9]+", description):
        canonical = _DTYPE_WORDS.get(word.lower())
        if canonical is not None:
            return canonical
    return "unknown"


def _tensor_dtype(tensor: Any) -> str:
    if isinstance(tensor, Mapping):
        # TensorRT 11: separate DataType; TensorRT 10: one "Format/Datatype" string.
        return dtype_of(tensor.get("DataType") or tensor.get("Format/Datatype") or tensor.get("Format"))
    return "unknown"


def _onnx_nodes(layer: Mapping[str, Any]) -> tuple[str, ...]:
    metadata = layer.get("Metadata")
    if isinstance(metadata, str) and "[ONNX Layer: " in metadata:
        return tuple(_ONNX_LAYER.findall(metadata))
    # Older engines, or no metadata: TensorRT names fused layers "a + b + c" after their nodes.
    return tuple(part.strip() for part in str(layer.get("Name", "")).split(" + ") if part.strip())


def _layer_type(layer: Mapping[str, Any]) -> str:
    return str(layer.get("LayerType") or layer.get("ParameterType") or "unknown")


def _role(layer: Mapping[str, Any], inputs: tuple[str, ...], outputs: tuple[str, ...]) -> LayerRole:
    kinds = {str(layer.get("LayerType", "")), str(layer.get("ParameterType", ""))}
    if "NoOp" in kinds:
        return LayerRole.NOOP
    if kinds & _CONSTANT_KINDS:
        return LayerRole.CONSTANT
    if kinds & _CAST_KINDS:
        return LayerRole.CAST
    if "Reformat" in kinds:
        return LayerRole.CAST if set(inputs) != set(outputs) else LayerRole.REFORMAT
    return LayerRole.COMPUTE


def _precision(layer: Mapping[str, Any], inputs: tuple[str, ...], outputs: tuple[str, ...]) -> str:
    # Weighted layers (convolutions, GEMMs) compute in their weights' type: the clearest evidence.
    for key in ("Weights", "ConvWeights", "KernelWeights"):
        weights = layer.get(key)
        if isinstance(weights, Mapping) and dtype_of(str(weights.get("Type", ""))) != "unknown":
            return dtype_of(str(weights["Type"]))
    tactic = str(layer.get("TacticName", "")).lower()
    if "i8i8" in tactic:  # INT8 tensor-core kernels are named ..._i8i8_i8i32_...
        return "int8"
    # Otherwise the first numeric input (masks and shape tensors don't decide), as trex does.
    for dtype in (*inputs, *outputs):
        if dtype not in ("bool", "int32", "int64", "unknown"):
            return dtype
    return next((d for d in (*inputs, *outputs) if d != "unknown"), "unknown")


def _load(inspector_json: str | bytes | Mapping[str, Any], where: str) -> Mapping[str, Any]:
    if isinstance(inspector_json, Mapping):
        return inspector_json
    try:
        data = json.loads(inspector_json)
    except (TypeError, ValueError) as exc:
        raise BackendError(f"the engine information of {where} is not JSON ({exc}); "
                           "ask IEngineInspector for LayerInformationFormat.JSON.") from None
    if not isinstance(data, Mapping):
        raise BackendError(f"the engine information of {where} is not a JSON object; "
                           "pass get_engine_information(LayerInformationFormat.JSON) as returned.")
    return data


def parse_engine_information(inspector_json: str | bytes | Mapping[str, Any], *,
                             where: str = "the engine") -> tuple[EngineLayer, ...]:
    """Every layer of the engine with its role, data types, precision and ONNX nodes."""
    data = _load(inspector_json, where)
    raw_layers = data.get("Layers")
    if not isinstance(raw_layers, list):
        raise BackendError(f"the engine information of {where} has no 'Layers' list; "
                           "pass get_engine_information(LayerInformationFormat.JSON) as returned.")
    if raw_layers and not all(isinstance(layer, Mapping) for layer in raw_layers):
        raise BackendError(
            f"the engine information of {where} lists layer names only; rebuild the engine with "
            "ProfilingVerbosity.DETAILED (quantbench's TensorRT backend does) to see layer precisions."
        )
    layers = []
    for raw in raw_layers:
        inputs = tuple(_tensor_dtype(t) for t in raw.get("Inputs", ()))
        outputs = tuple(_tensor_dtype(t) for t in raw.get("Outputs", ()))
        layers.append(EngineLayer(
            name=str(raw.get("Name", "")),
            layer_type=_layer_type(raw),
            role=_role(raw, inputs, outputs),
            precision=_precision(raw, inputs, outputs),
            input_types=inputs,
            output_types=outputs,
            onnx_nodes=_onnx_nodes(raw),
        ))
    return tuple(layers)


def qdq_layers(model: onnx.ModelProto | str | Path) -> tuple[str, ...]:
    """Names of the ONNX nodes a Q/DQ graph means to run in INT8: those fed by a DequantizeLinear.

    ``model`` is an ``onnx.ModelProto`` or a path to one (weights are not loaded).
    """
    if isinstance(model, (str, Path)):
        model = onnx_graph.load_graph(model)
    return tuple(node.name for node in onnx_graph.int8_intended_nodes(model))


def precision_report(
    inspector_json: str | bytes | Mapping[str, Any],
    qdq_layers: Iterable[str],
    *,
    engine: str = "the engine",
) -> PrecisionReport:
    """Count layer precisions and list the intended-INT8 nodes TensorRT ran in higher precision.

    Warns (:class:`NoInt8Warning`) when ``qdq_layers`` is not empty and no layer runs in INT8.
    """
    layers = parse_engine_information(inspector_json, where=engine)
    compute = [layer for layer in layers if layer.role is LayerRole.COMPUTE]
    by_node: dict[str, list[EngineLayer]] = {}
    for layer in compute:
        for node in layer.onnx_nodes:
            by_node.setdefault(node, []).append(layer)

    intended = list(dict.fromkeys(qdq_layers))  # ordered, unique
    missed, unplaced = [], []
    for node in intended:
        placed = by_node.get(node)
        if not placed:
            unplaced.append(node)
        elif not any(layer.precision == "int8" for layer in placed):
            worst = max(placed, key=lambda layer: _rank(layer.precision))
            missed.append(MissedInt8(node, worst.name, worst.precision))

    counts = {p: sum(1 for layer in compute if layer.precision == p) for p in ("int8", "fp16", "fp32")}
    runs_int8 = counts["int8"] > 0
    report = PrecisionReport(
        layers=len(layers),
        int8_layers=counts["int8"],
        fp16_layers=counts["fp16"],
        fp32_layers=counts["fp32"],
        other_layers=len(compute) - sum(counts.values()),
        reformat_layers=sum(1 for layer in layers if layer.role is LayerRole.REFORMAT),
        cast_layers=sum(1 for layer in layers if layer.role is LayerRole.CAST),
        constant_layers=sum(1 for layer in layers if layer.role is LayerRole.CONSTANT),
        intended_int8_nodes=len(intended),
        missed_int8=tuple(missed),
        unplaced_int8_nodes=tuple(unplaced),
        runs_int8=runs_int8,
        int8_missing=bool(intended) and not runs_int8,
    )
    if report.int8_missing:
        warnings.warn(
            f"{engine} runs no layer in INT8 although its ONNX asks for {len(intended)} INT8 nodes: "
            "this variant is not INT8 on this GPU; check that the TensorRT version supports the Q/DQ placement.",
            NoInt8Warning,
            stacklevel=2,
        )
    return report


def _rank(precision: str) -> int:
    """Higher for wider floats, so a node split over layers reports its widest one."""
    return _FLOAT_PRECISIONS[::-1].index(precision) + 1 if precision in _FLOAT_PRECISIONS else 0
