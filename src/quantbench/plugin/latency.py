"""Latency records of one process: each timed (model, variant, batch) as a `LatencyResult` in the run
ledger, the baseline's latency for the gate (timed on demand), and the time spent measuring."""

from __future__ import annotations

from dataclasses import dataclass

from quantbench.backends import Engine, Runner, TimingSamples
from quantbench.build.export import ModelInfo
from quantbench.errors import QuantbenchError
from quantbench.evaluation.timing import host_rounds, warm_up
from quantbench.outputs.provenance import collect_provenance
from quantbench.plugin.context import BenchContext
from quantbench.records import LatencyResult, LatencyStats


@dataclass(frozen=True)
class Timed:
    """One latency measurement: host rounds, and the backend's device timings where it has them."""

    model: ModelInfo
    variant: str
    batch_size: int
    host_ms: tuple[float, ...]
    device: TimingSamples | None = None


@dataclass(frozen=True)
class TimingTotals:
    """Seconds inside the latency tests' timing loops (warm-up included) and in timed rounds alone."""

    loops_s: float = 0.0
    rounds_s: float = 0.0


class LatencyRecords:
    """The latencies measured in this process, by (model, variant, batch size)."""

    def __init__(self, context: BenchContext):
        self.context = context
        self._latencies: dict[tuple[str, str, int], LatencyResult] = {}
        self.totals = TimingTotals()

    def record(self, timed: Timed, runner: Runner, engine: Engine) -> LatencyResult:
        """The measurement as a `LatencyResult`, written into the run ledger."""
        info = runner.info()
        backend = self.context.pipeline.backend
        host = LatencyStats.from_samples(timed.host_ms)
        device = timed.device
        result = LatencyResult(
            model=timed.model.name, variant=timed.variant, backend=backend.kind.value,
            device=info.device or backend.device_description(), batch_size=timed.batch_size,
            host=host, images_per_s=timed.batch_size * 1e3 / host.median_ms,
            provenance=collect_provenance(info),  # versions, GPU, driver, commit: what `quantbench history` marks
            device_ms=TimingSamples.median(device.device_ms) if device else None,
            h2d_ms=TimingSamples.median(device.h2d_ms) if device else None,
            d2h_ms=TimingSamples.median(device.d2h_ms) if device else None,
            engine_memory_bytes=info.engine_memory_bytes,
            peak_memory_bytes=device.peak_memory_bytes if device else None,
            precision=engine.meta.get("precision") or (dict(info.precision) if info.precision else None),
            simulated=info.simulated or engine.meta.get("simulated"),
        )
        self.context.ledger.add_latency(result)
        self._latencies[timed.model.name, timed.variant, timed.batch_size] = result
        return result

    def note_timing(self, loop_s: float, host_ms: tuple[float, ...]) -> None:
        """Account one latency test's timing loop, for the session's "measurement share" line."""
        self.totals = TimingTotals(self.totals.loops_s + loop_s, self.totals.rounds_s + sum(host_ms) / 1e3)

    def baseline(self, model: ModelInfo, batch_size: int) -> LatencyResult | None:
        """The baseline's latency measured in this process (same device); timed now when no test has yet.

        None when the baseline cannot be built or opened (its own tests say why). When the baseline's
        own test runs later, it times it again for pytest-benchmark and its record replaces this one.
        """
        c = self.context
        name = c.thresholds_for(model.name).baseline
        found = self._latencies.get((model.name, name, batch_size))
        if found is not None:
            return found
        try:
            engine = c.engine(model, name)
            batch = c.latency_batch(model, batch_size)
            with c.open(engine) as runner:
                rounds = warm_up(lambda: runner.infer(batch), c.options.timing)
                host_ms = host_rounds(lambda: runner.infer(batch), rounds)
                return self.record(Timed(model, name, batch_size, host_ms), runner, engine)
        except QuantbenchError:
            return None
