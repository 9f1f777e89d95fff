"""``extra_info["quantbench"]`` of a latency benchmark: the records `quantbench select` reads back
from pytest-benchmark JSON, plus build, accuracy and device facts."""

from __future__ import annotations

from typing import Any

from quantbench.build.export import ModelInfo
from quantbench.decision.gate import Evidence, judge
from quantbench.plugin.context import BenchContext
from quantbench.plugin.evidence import GateEvidence
from quantbench.records import LatencyResult, to_dict


def _record(value: Any) -> Any:
    return to_dict(value) if value is not None else None


def benchmark_info(context: BenchContext, gate: GateEvidence, model: ModelInfo, latency: LatencyResult) -> dict[str, Any]:
    """The variant's records; only what is stored already: a latency test never evaluates (a
    latency-only run selects on the accuracy measured earlier)."""
    name = latency.variant
    t = context.thresholds_for(model.name)
    evaluation = context.stored_evaluation(model, name)
    baseline = context.stored_evaluation(model, t.baseline) if name != t.baseline else evaluation
    accuracy = comparison = reference = spread = None
    if evaluation is not None and baseline is not None:
        o = judge(Evidence(model=model.name, variant=name, backend=latency.backend, accuracy=evaluation,
                           baseline_accuracy=baseline, judge_latency=False), t)  # the point drops
        accuracy = {"baseline": t.baseline, "map50_95": evaluation.metrics.map50_95,
                    "baseline_map50_95": baseline.metrics.map50_95, "drop_abs": o.drop_abs, "drop_rel": o.drop_rel}
        comparison = gate.stored_comparison(model, name, t.baseline)
    if evaluation is not None:
        reference_name = gate.reference_name(model)
        reference = gate.stored_comparison(model, name, reference_name) if reference_name else None
        spread = gate.measured_spread(model, name)
    return {
        "latency": to_dict(latency),
        "eval": _record(evaluation),
        "comparison": _record(comparison),
        "reference_comparison": _record(reference),
        "calibration_spread": _record(spread),
        "variant_options": context.reported_options(name),
        "build": to_dict(context.build(model, name)),
        "accuracy": accuracy,
        "device": {"assignment": context.device.describe(), "device_id": context.device.device_id},
    }
