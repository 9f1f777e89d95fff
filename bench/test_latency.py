"""Latency: one synchronised inference of a fixed batch of real images, per (model, variant, batch).

The test is quantbench's standard one (`quantbench.plugin.suite`, where its timing and gate are
described), the same any repository that installs quantbench imports.
"""

from quantbench.plugin.suite import test_latency  # noqa: F401
