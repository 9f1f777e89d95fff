"""One INT8 calibration per (model, calibration images, method, seed, EP), shared by the variants that
differ from it only in which nodes they keep out of INT8.

Why this design (issue 21): per-tensor ranges from max or entropy calibration do not depend on
which nodes are later excluded, yet each INT8 variant used to run ModelOpt, i.e. calibrate the
same FP32 graph on the same images again (21 of 22 minutes of a cold bench on yolo11n-coco).
Two ways exist to reuse one calibration:

* ModelOpt's ``calibration_cache_path``: it does *not* skip calibration (``int8.py`` still runs
  ``quantize_static`` over the data reader, then swaps the scales), so it saves nothing.
* Q/DQ re-emission (`build.qdq_graph.QdqModel.with_excluded`, the surgery the sensitivity
  analysis and the split search already trust): ModelOpt builds the variant *without* exclusions
  once (its calibration, Q/DQ placement, ``high_precision_dtype`` conversion of the rest and
  ``concat_elimination`` pass all run there), and each variant with exclusions is that graph with
  the Q/DQ pairs of its excluded nodes removed. Nothing is calibrated again; a derivation takes
  about a second.

The shared build is an ordinary cached variant build (the variant with ``nodes_to_exclude`` and
``exclude_head`` cleared; names are not part of cache keys), so the table's own ``int8-max`` /
``int8-entropy`` *are* the shared calibrations and cost nothing extra.

What keeps its own ModelOpt build (`own_calibration_reason`): anything not INT8, variants with no
exclusions (they are the calibration), ``calibrate_per_node`` (a different calibrator),
``op_types_to_quantize`` (it replaces ModelOpt's placement, and a broad list calibrates tensors the
default build never sees). A different ``calib_images``, seed, method, dtype, passes or op types to
exclude is simply another shared calibration: they are all in its key.

Equivalence with ModelOpt's own per-variant build is checked, not assumed: `compare_qdq` (node by
node placement, scales with a tolerance, weights exactly) is what the slow test
``tests/test_shared_calibration.py`` and ``tools/shared_calibration_check.py`` run on every INT8
variant of the default table. ModelOpt's placement *does* react to exclusions in one way the
re-emission cannot see: its partitioning takes the excluded nodes as already partitioned
(``int8.py``: ``partitioned_nodes``), so excluding a node can change which neighbours are fused
and quantized. Measured on the default table (``tools/shared_calibration_check.py``): YOLO11's
``int8-entropy-head-attn-fp16`` excludes the attention's ``proj`` conv, and ModelOpt then leaves
the residual ``/model.10/m/m.0/Add`` fused behind it unquantized, where the re-emission kept its
Q/DQ. `fusion_conflicts` finds that pattern before anything is built, with ModelOpt's own
partitioning (``find_fusible_partitions``): a residual Add in the partition of an excluded linear
op, not itself excluded. Such a variant keeps its own ModelOpt build.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from quantbench.build.onnx_graph import DEQUANTIZE, QDQ_OPS, QUANTIZE
from quantbench.build.qdq_graph import QUANTIZABLE_OPS, QdqModel
from quantbench.build.variants import Variant, VariantKind

# Scales compared with np.allclose at these tolerances (float32 scales of the same calibration
# agree exactly; fp16-stored ones agree to the last fp16 bit at worst).
SCALE_RTOL = 1e-6
SCALE_ATOL = 0.0


def own_calibration_reason(variant: Variant) -> str | None:
    """Why ``variant`` is built by ModelOpt itself rather than derived from a shared calibration, or None."""
    if variant.kind is not VariantKind.INT8:
        return f"a {variant.kind.value} variant is not calibrated for INT8"
    if not variant.nodes_to_exclude and not variant.exclude_head:
        return "it excludes no node: its own build is the shared calibration"
    if variant.calibrate_per_node:
        return "calibrate_per_node calibrates with another calibrator"
    if variant.op_types_to_quantize:
        return "op_types_to_quantize replaces ModelOpt's Q/DQ placement and calibrates other tensors"
    return None


def calibration_variant(variant: Variant) -> Variant | None:
    """The variant whose ModelOpt build is ``variant``'s shared calibration (its exclusions cleared), or
    None when ``variant`` keeps its own build."""
    if own_calibration_reason(variant) is not None:
        return None
    return dataclasses.replace(
        variant, name=f"{variant.calibration_method}-calibration", nodes_to_exclude=(), exclude_head=False,
        gated=False, models=(), description=f"shared {variant.calibration_method} calibration")


def fusion_conflicts(base: onnx.ModelProto, excluded: Collection[str], *,
                     op_types_excluded: Collection[str] = ()) -> tuple[str, ...]:
    """Nodes of ``base`` (FP32; residual Adds in practice) that ModelOpt quantizes as part of an excluded
    linear op's fusible partition and that are not excluded themselves: ModelOpt's per-variant
    placement of these differs from the re-emission's.

    ModelOpt quantizes a residual Add (its residual input) as part of its backbone's CASK partition
    (Conv -> act -> Add). Excluded nodes count as already partitioned, so with the backbone excluded
    the partition does not form and the Add stays unquantized, which the shared build, calibrated
    with the backbone included, cannot show. The partitions are ModelOpt's own
    (``find_fusible_partitions`` on the graph as the shared build saw it: nodes of
    ``op_types_excluded`` count as partitioned there too), so this is exactly its rule.
    """
    import onnx_graphsurgeon as gs
    from modelopt.onnx.quantization.graph_utils import build_non_residual_input_map, is_const_input
    from modelopt.onnx.quantization.partitioning import (
        find_fusible_partitions,
        find_non_quantizable_partitions_from_patterns,
    )

    excluded = set(excluded)
    graph = gs.import_onnx(base)
    modelopt_log = logging.getLogger("modelopt.onnx")
    level = modelopt_log.level
    modelopt_log.setLevel(logging.WARNING)  # its partitioning logs INFO lines through its own handler
    try:
        non_residual, _ = build_non_residual_input_map(graph)
        partitioned = {name for partition in find_non_quantizable_partitions_from_patterns(graph)
                       for name in partition}
        partitioned.update(node.name for node in graph.nodes if node.op in set(op_types_excluded))
        cask, _ = find_fusible_partitions(graph, partitioned, non_residual)
    finally:
        modelopt_log.setLevel(level)
    found: set[str] = set()
    for partition in cask:
        if partition[0].name not in excluded:
            continue
        inside = {out.name for node in partition for out in node.outputs}
        # What ModelOpt's classify_partition_nodes quantizes in a partition: members with an input
        # from outside it (a residual Add's residual input); members fed only from inside get nothing.
        found.update(node.name for node in partition[1:] if node.name not in excluded and node.op in QUANTIZABLE_OPS
                     and any(t.name not in inside and not is_const_input(t) for t in node.inputs))
    return tuple(sorted(found))


def derive(shared: onnx.ModelProto, excluded: Collection[str], *, source: str = "<shared>") -> onnx.ModelProto:
    """``shared`` (a ModelOpt INT8 build without exclusions) with ``excluded`` nodes out of INT8.

    Excluded nodes that are no quantized layer group of ``shared`` (a Concat, a Sigmoid, a node
    ModelOpt left in high precision anyway) need no change.
    """
    qdq = QdqModel(shared, source=source)
    groups = set(qdq.group_names)
    return qdq.with_excluded([name for name in excluded if name in groups])


# ---------------------------------------------------------------------------------------------
# Equivalence with ModelOpt's own per-variant build


@dataclass(frozen=True)
class QdqComparison:
    """How a derived build compares with ModelOpt's own build of the same variant."""

    placement_equal: bool  # same nodes, same inputs (a DQ input named by the tensor it quantizes)
    scales_equal: bool  # every Q/DQ scale and zero point within SCALE_RTOL/ATOL
    weights_equal: bool  # every other initializer bit-identical
    max_scale_difference: float  # largest |scale difference| over the Q/DQ pairs both have
    quantized_reference: int  # Q/DQ pairs (activations and weights) in ModelOpt's build
    quantized_derived: int
    differences: tuple[str, ...]  # the first few differences, for a person to read

    @property
    def equal(self) -> bool:
        return self.placement_equal and self.scales_equal and self.weights_equal


def _resolver(model: onnx.ModelProto) -> tuple[dict[str, str], dict[str, onnx.NodeProto]]:
    """DQ output -> ``q(<quantized tensor>)``, and quantized tensor -> its QuantizeLinear node."""
    producers = {out: n for n in model.graph.node for out in n.output}
    names: dict[str, str] = {}
    quantizers: dict[str, onnx.NodeProto] = {}
    for node in model.graph.node:
        if node.op_type == DEQUANTIZE:
            q = producers.get(node.input[0])
            source = q.input[0] if q is not None and q.op_type == QUANTIZE else node.input[0]
            names[node.output[0]] = f"q({source})"
            if q is not None:
                quantizers[source] = q
    return names, quantizers


def _describe(model: onnx.ModelProto) -> tuple[dict[str, tuple], dict[str, onnx.NodeProto]]:
    names, quantizers = _resolver(model)
    nodes = {}
    for node in model.graph.node:
        if node.op_type in QDQ_OPS:
            continue
        inputs = tuple(names.get(i, i) for i in node.input)
        attributes = tuple(sorted(onnx.helper.printable_attribute(a) for a in node.attribute))
        nodes[node.name or "|".join(node.output)] = (node.op_type, inputs, tuple(node.output), attributes)
    return nodes, quantizers


def _initializer(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:  # some exporters write scales as Constant nodes
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def compare_qdq(reference: onnx.ModelProto, derived: onnx.ModelProto, *, limit: int = 8) -> QdqComparison:
    """Node-by-node placement, Q/DQ scales and weights of ``derived`` against ModelOpt's ``reference``."""
    ref_nodes, ref_q = _describe(reference)
    der_nodes, der_q = _describe(derived)
    differences: list[str] = []
    for name in sorted(set(ref_nodes) | set(der_nodes)):
        a, b = ref_nodes.get(name), der_nodes.get(name)
        if a != b:
            differences.append(f"node {name}: ModelOpt {a[:2] if a else 'absent'} vs derived {b[:2] if b else 'absent'}")
    for tensor in sorted(set(ref_q) ^ set(der_q)):
        differences.append(f"tensor {tensor} quantized {'by ModelOpt only' if tensor in ref_q else 'in derived only'}")
    placement_equal = not differences

    max_diff = 0.0
    scales_equal = True
    for tensor in sorted(set(ref_q) & set(der_q)):
        for index, what in ((1, "scale"), (2, "zero point")):
            qa, qb = ref_q[tensor], der_q[tensor]
            va = _initializer(reference, qa.input[index]) if len(qa.input) > index else None
            vb = _initializer(derived, qb.input[index]) if len(qb.input) > index else None
            if va is None or vb is None or va.shape != vb.shape or va.dtype != vb.dtype:
                scales_equal = False
                differences.append(f"{what} of {tensor}: {None if va is None else (va.dtype, va.shape)} vs "
                                   f"{None if vb is None else (vb.dtype, vb.shape)}")
                continue
            fa, fb = va.astype(np.float64), vb.astype(np.float64)
            if index == 1:
                max_diff = max(max_diff, float(np.max(np.abs(fa - fb))) if fa.size else 0.0)
            if not np.allclose(fa, fb, rtol=SCALE_RTOL, atol=SCALE_ATOL):
                scales_equal = False
                differences.append(f"{what} of {tensor} differs by up to {float(np.max(np.abs(fa - fb))):.3g}")

    weights_equal = True
    scale_names = {i for q in (*ref_q.values(), *der_q.values()) for i in q.input[1:]}
    ref_init = {i.name: i for i in reference.graph.initializer if i.name not in scale_names}
    der_init = {i.name: i for i in derived.graph.initializer if i.name not in scale_names}
    for name in sorted(set(ref_init) | set(der_init)):
        a_init, b_init = ref_init.get(name), der_init.get(name)
        if a_init is None or b_init is None:
            weights_equal = False
            differences.append(f"initializer {name} {'only in ModelOpt' if b_init is None else 'only derived'}")
            continue
        a_arr, b_arr = numpy_helper.to_array(a_init), numpy_helper.to_array(b_init)
        if a_arr.dtype != b_arr.dtype or a_arr.shape != b_arr.shape or not np.array_equal(a_arr, b_arr):
            weights_equal = False
            differences.append(f"initializer {name}: {a_arr.dtype}{a_arr.shape} vs {b_arr.dtype}{b_arr.shape}")
    return QdqComparison(
        placement_equal=placement_equal, scales_equal=scales_equal, weights_equal=weights_equal,
        max_scale_difference=max_diff, quantized_reference=len(ref_q), quantized_derived=len(der_q),
        differences=tuple(differences[:limit]) + ((f"... {len(differences) - limit} more",)
                                                  if len(differences) > limit else ()),
    )


def load(path: str | Path) -> onnx.ModelProto:
    return onnx.load(str(path))
