"""Accuracy gate: each variant's COCO mAP50-95 against its model's baseline, within thresholds.toml.

Evaluated once per (model, variant) and kept in the results store: a re-run with nothing changed
reads it back and evaluates nothing. The baseline's own test checks the optional mAP floor.
Exploratory (not gated) variants that miss the budget are expected failures (xfail); models
with random weights (.yaml) have their mAP recorded and the gate skipped.
"""

from __future__ import annotations

import pytest

from quantbench.errors import QuantbenchError
from quantbench.thresholds import check_accuracy

pytestmark = pytest.mark.accuracy


def test_accuracy(qb, qb_model, qb_variant, qb_eval):
    t = qb.thresholds_for(qb_model.name)
    measured = qb_eval.metrics.map50_95
    if qb_eval.untrained:
        pytest.skip(f"{qb_model.name} has random weights (built from a .yaml): mAP50-95 {measured:.4f} "
                    "recorded, accuracy gate skipped")
    if qb_variant.name == t.baseline:
        baseline_map = measured
    else:
        try:
            baseline_map = qb.evaluation(qb_model, t.baseline).metrics.map50_95
        except QuantbenchError as exc:
            pytest.fail(f"baseline {t.baseline} of {qb_model.name} has no accuracy, so no drop can be judged: {exc}",
                        pytrace=False)
    reason = check_accuracy(t, qb_variant.name, measured, baseline_map)
    if reason is None:
        return
    if not qb.is_gated(qb_model.name, qb_variant.name):
        pytest.xfail(f"not gated: {reason}")
    pytest.fail(reason, pytrace=False)
