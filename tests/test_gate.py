"""The one gate: point and interval verdicts, and the same verdict for the bench tests and the selection."""

from __future__ import annotations

import json

import numpy as np
import pytest

from quantbench.decision.gate import FAIL, INCONCLUSIVE, PASS, Evidence, judge
from quantbench.decision.selection import select
from quantbench.decision.thresholds import ModelThresholds, Thresholds
from quantbench.decision.uncertainty import seed_spread
from quantbench.outputs.benchmark_json import records_from_benchmark_json, uncertainty_from_benchmark_json
from quantbench.outputs.report import format_selection_table
from quantbench.records import (
    AccuracyComparison,
    BootstrapInterval,
    CalibrationSpread,
    CocoMetrics,
    DropInterval,
    EvalResult,
    EvalTiming,
    LatencyResult,
    LatencyStats,
    to_dict,
)

BUDGET = ModelThresholds(baseline="fp16", max_abs_drop=0.010, max_rel_drop=0.05,
                         min_speedup={"tensorrt": 1.3})  # 1 point on a 0.40 baseline (5 % would be 2)
POINT = ModelThresholds(baseline="fp16", max_abs_drop=0.010, max_rel_drop=0.05, verdicts="point")


def _eval(variant: str, map50_95: float, images: int = 500) -> EvalResult:
    return EvalResult(model="m", variant=variant, backend="onnxruntime", device="CPU", dataset="val500",
                      num_images=images, skipped_images=(), untrained=False,
                      metrics=CocoMetrics(map50_95, map50_95 * 1.4, map50_95, 0.1, 0.2, 0.3, 0.4),
                      timing=EvalTiming(inference_s=1.0, total_s=2.0, images_per_s=250.0))


def _drop(point: float, lower: float, upper: float, images: int = 500) -> DropInterval:
    ci = BootstrapInterval(point=point, lower=lower, upper=upper, confidence=0.95, resamples=1000, images=images)
    return DropInterval(map50_95=ci, map50=ci, map50_95_relative=None)


def _accuracy(drop: DropInterval | None, t: ModelThresholds = BUDGET, point: float = 0.008):
    return judge(Evidence(model="m", variant="int8", backend="onnxruntime", accuracy=_eval("int8", 0.40 - point),
                          baseline_accuracy=_eval("fp16", 0.40), drop=drop, judge_latency=False), t)


@pytest.mark.parametrize(("lower", "upper", "verdict"), [
    (0.002, 0.0095, PASS),  # the whole interval within the 1-point budget
    (0.0105, 0.016, FAIL),  # the whole interval beyond it
    (0.004, 0.012, INCONCLUSIVE),  # straddles it
])
def test_a_drop_is_judged_by_its_whole_interval(lower: float, upper: float, verdict: str):
    o = _accuracy(_drop(0.008, lower, upper))
    assert o.accuracy_verdict == o.verdict == verdict and o.passed == (verdict == PASS)
    assert o.drop_interval == (lower, upper) and o.confidence == 0.95
    if verdict == INCONCLUSIVE:
        # Half-width towards the limit 0.004 at 500 images, 0.002 left: 500 * (0.004 / 0.002)^2.
        assert o.images_needed == 2000
        assert "straddles the 1.00-point budget" in o.reasons[0] and "about 2000 evaluation images" in o.reasons[0]
    else:
        assert o.images_needed is None


def test_the_relative_limit_tightens_the_interval_budget():
    t = ModelThresholds(baseline="fp16", max_abs_drop=0.010, max_rel_drop=0.01)  # 1 % of 0.40 = 0.4 points
    assert _accuracy(_drop(0.005, 0.0045, 0.0055), t, point=0.005).verdict == FAIL


def test_point_verdicts_ignore_the_interval_and_never_say_inconclusive():
    o = _accuracy(_drop(0.008, 0.004, 0.012), POINT)
    assert o.verdict == PASS and o.drop_interval is None and o.confidence is None
    assert _accuracy(_drop(0.012, 0.011, 0.013), POINT, point=0.012).verdict == FAIL


def test_without_an_interval_the_point_estimate_decides():
    assert _accuracy(None, point=0.008).verdict == PASS
    failed = _accuracy(None, point=0.012)
    assert failed.verdict == FAIL and failed.reasons[0].startswith("mAP50-95 drop 1.20 points > 1.00 allowed")


def _lat(variant: str, rounds: np.ndarray, backend: str = "tensorrt") -> LatencyResult:
    host = LatencyStats.from_samples(tuple(float(r) for r in rounds))
    return LatencyResult(model="m", variant=variant, backend=backend, device="GPU", batch_size=1, host=host,
                         images_per_s=1e3 / host.median_ms)


def _speed(variant_ms: float, spread: float, t: ModelThresholds = BUDGET):
    rng = np.random.default_rng(1)
    base = _lat("fp16", 1.0 + 0.01 * rng.standard_normal(60))
    mine = _lat("int8", variant_ms * np.exp(spread * rng.standard_normal(60)))
    return judge(Evidence(model="m", variant="int8", backend="tensorrt", latency=mine, baseline_latency=base), t)


def test_a_speedup_is_judged_by_its_interval_from_the_raw_rounds():
    assert _speed(0.5, 0.01).latency_verdict == PASS  # 2x, tight
    slow = _speed(0.95, 0.01)
    assert slow.latency_verdict == FAIL and "< 1.30x required on tensorrt" in slow.latency_reasons[0]
    noisy = _speed(1 / 1.3, 0.5)  # right at the target, very noisy rounds
    assert noisy.latency_verdict == INCONCLUSIVE and "straddles the 1.30x required" in noisy.latency_reasons[0]
    low, high = noisy.speedup_interval
    assert low < 1.3 < high and noisy.latency_interval_ms[0] < noisy.latency_ms < noisy.latency_interval_ms[1]


def test_the_accuracy_test_and_the_selection_give_the_same_verdict(tmp_path):
    """One gate: the outcome a bench accuracy test asserts is the accuracy part of the selected outcome."""
    thresholds = Thresholds.from_mapping({"baseline": "fp16", "max_abs_drop": 0.01, "max_rel_drop": 0.05})
    t = thresholds.for_model("m")
    evals = [_eval("fp16", 0.40), _eval("int8", 0.392), _eval("int8-bad", 0.385)]
    comparisons = [AccuracyComparison("m", "int8", "fp16", "onnxruntime", "val500", 500, _drop(0.008, 0.004, 0.012)),
                   AccuracyComparison("m", "int8-bad", "fp16", "onnxruntime", "val500", 500, _drop(0.015, 0.011, 0.02))]
    rng = np.random.default_rng(0)
    lats = [_lat(v, ms * (1 + 0.01 * rng.standard_normal(30)), "onnxruntime")
            for v, ms in (("fp16", 10.0), ("int8", 8.0), ("int8-bad", 7.0))]
    (selection,) = select(evals, lats, thresholds, comparisons=comparisons)
    for c in comparisons:
        in_test = judge(Evidence(model="m", variant=c.variant, backend="onnxruntime", accuracy=evals[1 + (c.variant == "int8-bad")],
                                 baseline_accuracy=evals[0], drop=c.drop, judge_latency=False), t)
        selected = selection.outcome(c.variant)
        assert (in_test.accuracy_verdict, in_test.accuracy_reasons) == (selected.accuracy_verdict, selected.accuracy_reasons)
    assert selection.outcome("int8").verdict == INCONCLUSIVE and selection.outcome("int8-bad").verdict == FAIL
    assert selection.winner == "fp16"  # an inconclusive variant never wins, however fast


def test_the_benchmark_json_carries_the_intervals_to_quantbench_select(tmp_path):
    """`quantbench select` on a saved run judges with the same intervals the run's own tests did."""
    comparison = AccuracyComparison("m", "int8", "fp16", "onnxruntime", "val500", 500, _drop(0.008, 0.004, 0.012))
    from_fp32 = AccuracyComparison("m", "int8", "fp32", "onnxruntime", "val500", 500, _drop(0.009, 0.005, 0.013))
    benchmarks = []
    for variant, map50_95, ms in (("fp16", 0.40, 10.0), ("int8", 0.392, 8.0)):
        latency = _lat(variant, ms * np.exp(0.01 * np.random.default_rng(0).standard_normal(30)), "onnxruntime")
        benchmarks.append({"name": f"test_latency[m-{variant}-b1]", "params": {"qb_variant_name": variant},
                           "extra_info": {"quantbench": {
                               "latency": to_dict(latency), "eval": to_dict(_eval(variant, map50_95)),
                               "comparison": to_dict(comparison) if variant == "int8" else None,
                               "reference_comparison": to_dict(from_fp32) if variant == "int8" else None}}})
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"benchmarks": benchmarks}))
    evals, lats, options = records_from_benchmark_json([path])
    comparisons, spreads = uncertainty_from_benchmark_json([path])
    assert comparisons == [comparison, from_fp32] and spreads == []
    (s,) = select(evals, lats, Thresholds.from_mapping({"baseline": "fp16"}), comparisons=comparisons)
    int8 = s.outcome("int8")
    assert int8.verdict == INCONCLUSIVE and int8.drop_interval == (0.004, 0.012)
    assert (int8.reference_variant, int8.reference_drop_interval) == ("fp32", (0.005, 0.013))  # reported, not gated
    assert int8.latency_interval_ms is not None and s.winner == "fp16"


def test_the_calibration_seed_spread_reaches_the_outcome_and_the_table():
    spread = CalibrationSpread(model="m", variant="int8", backend="onnxruntime", dataset="val500", num_images=500,
                               calib_images=128, seeds=(0, 1, 2), maps=(0.392, 0.396, 0.391),
                               spread=seed_spread((0.392, 0.396, 0.391)))
    evals = [_eval("fp16", 0.40), _eval("int8", 0.392)]
    (s,) = select(evals, [], Thresholds.from_mapping({"baseline": "fp16"}), spreads=[spread])
    o = s.outcome("int8")
    assert (o.calib_seeds, round(o.calib_seed_range, 6)) == (3, 0.005)
    assert ("calibration luck: int8 mAP50-95 spans 0.50 points over 3 calibration seeds (stdev 0.26); the seeds "
            "alone move it by 62 % of its drop") in format_selection_table(s)
