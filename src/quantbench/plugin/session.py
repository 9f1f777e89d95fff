"""What the ``qb`` fixture hands a bench test: the process's context, the gate's evidence and the
latency records, three objects with one job each, kept in ``config.stash`` (`SESSION_KEY`)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from quantbench.plugin.context import BenchContext
from quantbench.plugin.evidence import GateEvidence
from quantbench.plugin.latency import LatencyRecords


@dataclass(frozen=True)
class BenchSession:
    context: BenchContext  # options, tables, device, the pipeline
    gate: GateEvidence  # comparisons, spreads, the gate's outcomes
    latency: LatencyRecords  # timed results, the baseline's latency, time spent measuring

    @classmethod
    def of(cls, context: BenchContext) -> BenchSession:
        latency = LatencyRecords(context)
        return cls(context, GateEvidence(context, latency.baseline), latency)


SESSION_KEY = pytest.StashKey[BenchSession]()


def bench_session(config: pytest.Config) -> BenchSession | None:
    """This process's bench session; None while the plugin is dormant."""
    return config.stash.get(SESSION_KEY, None)
