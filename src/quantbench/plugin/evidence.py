"""The gate's evidence for one process: paired comparisons and calibration spreads, each measured
once and recorded in the run ledger, handed with the records to `quantbench.decision.gate.judge`.

Pass/fail is never decided here: `accuracy_outcome` and `latency_outcome` collect the evidence and
ask the gate; `enforce` turns its verdict into the pytest outcome of a bench test.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from quantbench.build.export import ModelInfo
from quantbench.build.variants import VariantKind
from quantbench.decision.gate import INCONCLUSIVE, PASS, Evidence, VariantOutcome, judge
from quantbench.plugin.context import BenchContext
from quantbench.records import AccuracyComparison, CalibrationSpread, LatencyResult

# (model, batch size) -> the baseline's latency measured in this process, or None (`LatencyRecords.baseline`).
BaselineLatency = Callable[[ModelInfo, int], LatencyResult | None]


class GateEvidence:
    """Comparisons and spreads of this process, and the gate's outcomes built from them."""

    def __init__(self, context: BenchContext, baseline_latency: BaselineLatency):
        self.context = context
        self.baseline_latency = baseline_latency
        self._comparisons: dict[tuple[str, str, str], AccuracyComparison] = {}  # (model, variant, measured against)
        self._spreads: dict[tuple[str, str], CalibrationSpread] = {}

    def accuracy_outcome(self, model: ModelInfo, name: str) -> VariantOutcome:
        """The gate's outcome of the variant's accuracy (the baseline is evaluated first when needed)."""
        c = self.context
        t = c.thresholds_for(model.name)
        evaluation = c.evaluation(model, name)
        baseline = evaluation if name == t.baseline else c.evaluation(model, t.baseline)
        comparison = self.comparison(model, name)
        self.reference_comparison(model, name)  # reported (selection, report), not gated
        return judge(Evidence(model=model.name, variant=name, backend=c.pipeline.backend.kind.value,
                              accuracy=evaluation, baseline_accuracy=baseline,
                              drop=comparison.drop if comparison else None,
                              spread=self.calibration_spread(model, name),
                              options=c.reported_options(name), judge_latency=False), t)

    def latency_outcome(self, model: ModelInfo, name: str, latency: LatencyResult) -> VariantOutcome:
        """The gate's outcome of the variant's latency at the reference batch size against the baseline's."""
        t = self.context.thresholds_for(model.name)
        baseline = latency if name == t.baseline else self.baseline_latency(model, latency.batch_size)
        return judge(Evidence(model=model.name, variant=name, backend=latency.backend,
                              reference_batch=latency.batch_size, latency=latency, baseline_latency=baseline,
                              options=self.context.reported_options(name)), t)

    def calibration_spread(self, model: ModelInfo, name: str) -> CalibrationSpread | None:
        """--qb-calib-seeds K > 1: the INT8 variant's mAP over K calibration seeds (recorded in the ledger once)."""
        c = self.context
        variant = c.variants[name]
        if c.options.calib_seeds < 2 or variant.kind is not VariantKind.INT8:
            return None
        if (model.name, name) not in self._spreads:
            self._spreads[model.name, name] = c.pipeline.seed_spread(model, variant, c.options.calib_seeds)
            c.ledger.add_spread(self._spreads[model.name, name])
        return self._spreads[model.name, name]

    def measured_spread(self, model: ModelInfo, name: str) -> CalibrationSpread | None:
        """The spread the accuracy test measured in this process, if it ran; never measures."""
        return self._spreads.get((model.name, name))

    def comparison(self, model: ModelInfo, name: str, against: str | None = None) -> AccuracyComparison | None:
        """The paired-bootstrap drop from ``against`` (default: the baseline), recorded in the ledger once;
        None for the variant itself and where the thresholds ask for point-estimate verdicts."""
        c = self.context
        t = c.thresholds_for(model.name)
        against = against or t.baseline
        if name == against or t.verdicts != "interval":
            return None
        if (model.name, name, against) not in self._comparisons:
            comparison = c.pipeline.comparison(model, c.variants[name], c.variants[against], confidence=t.confidence)
            self._comparisons[model.name, name, against] = comparison
            c.ledger.add_comparison(comparison)
        return self._comparisons[model.name, name, against]

    def reference_comparison(self, model: ModelInfo, name: str) -> AccuracyComparison | None:
        """The drop from the FP32 model itself (the table's fp32 variant), reported beside the gated one."""
        reference = self.reference_name(model)
        return self.comparison(model, name, against=reference) if reference else None

    def reference_name(self, model: ModelInfo) -> str | None:
        """The table's FP32 variant, unless it is the model's baseline (then the gated drop is that drop)."""
        c = self.context
        reference = next((v.name for v in c.variants.values() if v.kind is VariantKind.FP32), None)
        return None if reference == c.thresholds_for(model.name).baseline else reference

    def stored_comparison(self, model: ModelInfo, name: str, against: str) -> AccuracyComparison | None:
        """The paired drop, when both match tables are stored (a comparison then evaluates nothing)."""
        c = self.context
        stored = all(c.stored_evaluation(model, v) is not None and c.pipeline.has_matches(model, c.variants[v])
                     for v in (name, against))
        return self.comparison(model, name, against=against) if stored else None


def enforce(outcome: VariantOutcome, part: str) -> None:
    """The pytest outcome of the gate's verdict on one ``part`` ("accuracy" or "latency") of a variant.

    pass: the test passes; inconclusive: an expected failure, never red (a nightly gate must not
    flap on sampling noise); fail: a failure, or an expected one for a not-gated variant.
    """
    verdict, reasons = getattr(outcome, f"{part}_verdict"), getattr(outcome, f"{part}_reasons")
    if verdict == PASS:
        return
    reason = "; ".join(reasons)
    if verdict == INCONCLUSIVE:
        pytest.xfail(f"inconclusive: {reason}")
    if not outcome.gated:
        pytest.xfail(f"not gated: {reason}")
    pytest.fail(reason, pytrace=False)
