"""Accuracy gate: each variant's COCO mAP50-95 against its model's baseline, within thresholds.toml.

The test is quantbench's standard one (`quantbench.plugin.suite`, where its rules are described),
the same any repository that installs quantbench imports.
"""

from quantbench.plugin.suite import test_accuracy  # noqa: F401
