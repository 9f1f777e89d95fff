"""Accuracy gate: each variant's COCO mAP50-95 against its model's baseline, within thresholds.toml.

Evaluated once per (model, variant) and kept in the results store: a re-run with nothing changed
reads it back and evaluates nothing. With interval verdicts (thresholds.toml ``verdicts``) the drop
is judged by its paired-bootstrap interval; an inconclusive variant is an expected failure (xfail)
naming the images that would decide it. The verdict is the gate's (`quantbench.decision.gate.judge`, the same
function the selection and the report use); this test asserts its accuracy part. Exploratory (not
gated) variants that miss the budget are expected failures (xfail); models with random weights
(.yaml) have their mAP recorded and the gate skipped.
"""

from __future__ import annotations

import pytest

from quantbench.errors import QuantbenchError

pytestmark = pytest.mark.accuracy


def test_accuracy(qb, qb_model, qb_variant, qb_eval):
    if qb_eval.untrained:
        pytest.skip(f"{qb_model.name} has random weights (built from a .yaml): mAP50-95 "
                    f"{qb_eval.metrics.map50_95:.4f} recorded, accuracy gate skipped")
    try:
        outcome = qb.accuracy_outcome(qb_model, qb_variant.name)
    except QuantbenchError as exc:
        baseline = qb.thresholds_for(qb_model.name).baseline
        pytest.fail(f"baseline {baseline} of {qb_model.name} has no accuracy, so no drop can be judged: {exc}",
                    pytrace=False)
    qb.enforce(outcome, "accuracy")
