"""Latency: one synchronised inference of a fixed batch of real images, per (model, variant, batch).

Serial runs time with pytest-benchmark (``benchmark.pedantic``): ``--qb-warmup`` untimed rounds,
then at least ``--qb-rounds`` timed ones lasting at least ``--qb-min-time`` seconds (see
`quantbench.evaluation.timing`), so ``--benchmark-json`` / ``--benchmark-compare`` work as usual;
``extra_info["quantbench"]`` carries the records ``quantbench select`` reads. Under pytest-xdist
pytest-benchmark switches itself off: a worker with a GPU of its own times with the backend's own
device timer (``Runner.time``) into the same records; any other worker skips, and the serial
phase of ``make bench`` times it. At the reference batch size the gate (`quantbench.decision.gate.judge`)
judges the speed-up over the baseline timed in this same process (timed first when no test has
yet): a gated variant that misses its backend's minimum speed-up fails.
"""

from __future__ import annotations

import time

import pytest

from quantbench.backends import BackendKind
from quantbench.evaluation.timing import rounds_for_loop, warm_up

pytestmark = pytest.mark.latency


def test_latency(benchmark, qb, qb_model, qb_variant, qb_batch_size, qb_engine, qb_runner, qb_batch):
    if not qb.device.times_latency:
        pytest.skip(f"timed in the serial phase ({qb.device.reason})")
    # Warm-up outside pytest-benchmark: its duration sets how many rounds meet --qb-min-time.
    started = time.perf_counter()
    plan = qb.options.timing
    rounds = warm_up(lambda: qb_runner.infer(qb_batch), plan)

    def runner_rounds() -> int:  # the runner's own loop costs a round differently: estimated on itself
        return rounds_for_loop(lambda n: qb_runner.time(qb_batch, warmup=0, iterations=n), plan)

    device = None
    if benchmark.enabled:
        benchmark.pedantic(qb_runner.infer, args=(qb_batch,), rounds=rounds, warmup_rounds=0, iterations=1)
        host_ms = tuple(seconds * 1e3 for seconds in benchmark.stats.stats.data)
        if qb.pipeline.backend.kind is not BackendKind.ONNXRUNTIME:
            # GPU time from device events, copies apart: the backend's own timer adds what the host clock cannot see.
            device = qb_runner.time(qb_batch, warmup=0, iterations=runner_rounds())
    else:
        # pytest-benchmark is off (pytest-xdist, --benchmark-disable) and calls its target once:
        # the backend's own timer does the timed rounds.
        device = benchmark.pedantic(qb_runner.time, args=(qb_batch,), kwargs={"warmup": 0, "iterations": runner_rounds()})
        host_ms = device.host_ms
    qb.note_timing(time.perf_counter() - started, host_ms)
    latency = qb.record_latency(qb_model, qb_variant.name, qb_batch_size, host_ms, device, qb_runner, qb_engine)
    benchmark.extra_info["quantbench"] = qb.benchmark_info(qb_model, qb_variant.name, latency)

    if qb_batch_size != qb.options.reference_batch:
        return
    outcome = qb.latency_outcome(qb_model, qb_variant.name, latency)
    qb.enforce(outcome, "latency")
