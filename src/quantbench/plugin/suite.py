"""The standard bench tests: an accuracy test per (model, variant) and a latency test per (model,
variant, batch size). bench/ imports them, and so can any repository's test file::

    from quantbench.plugin.suite import test_accuracy, test_latency  # noqa: F401

**Accuracy**: each variant's COCO mAP50-95 against its model's baseline, within thresholds.toml.
Evaluated once per (model, variant) and kept in the results store: a re-run with nothing changed
reads it back and evaluates nothing. With interval verdicts (thresholds.toml ``verdicts``) the drop
is judged by its paired-bootstrap interval; an inconclusive variant is an expected failure (xfail)
naming the images that would decide it. Exploratory (not gated) variants that miss the budget are
expected failures; models with random weights (.yaml) have their mAP recorded and the gate skipped.

**Latency**: one synchronised inference of a fixed batch of real images. Serial runs time with
pytest-benchmark (``benchmark.pedantic``): ``--qb-warmup`` untimed rounds, then at least
``--qb-rounds`` timed ones lasting at least ``--qb-min-time`` seconds (see
`quantbench.evaluation.timing`), so ``--benchmark-json`` / ``--benchmark-compare`` work as usual;
``extra_info["quantbench"]`` carries the records ``quantbench select`` reads. Under pytest-xdist
pytest-benchmark switches itself off: a worker with a GPU of its own times with the backend's own
device timer (``Runner.time``) into the same records; any other worker skips, and the serial phase
of ``make bench`` times it. At the reference batch size the gate judges the speed-up over the
baseline timed in this same process (timed first when no test has yet).

The verdicts are the gate's (`quantbench.decision.gate.judge`, the function the selection and the
report use); each test asserts the part it measured (`quantbench.plugin.evidence.enforce`).
"""

from __future__ import annotations

import time

import pytest

from quantbench.backends import BackendKind
from quantbench.errors import QuantbenchError
from quantbench.evaluation.timing import rounds_for_loop, warm_up
from quantbench.plugin.evidence import enforce
from quantbench.plugin.extra_info import benchmark_info
from quantbench.plugin.latency import Timed


@pytest.mark.accuracy
def test_accuracy(qb, qb_model, qb_variant, qb_eval):
    if qb_eval.untrained:
        pytest.skip(f"{qb_model.name} has random weights (built from a .yaml): mAP50-95 "
                    f"{qb_eval.metrics.map50_95:.4f} recorded, accuracy gate skipped")
    try:
        outcome = qb.gate.accuracy_outcome(qb_model, qb_variant.name)
    except QuantbenchError as exc:
        baseline = qb.context.thresholds_for(qb_model.name).baseline
        pytest.fail(f"baseline {baseline} of {qb_model.name} has no accuracy, so no drop can be judged: {exc}",
                    pytrace=False)
    enforce(outcome, "accuracy")


@pytest.mark.latency
def test_latency(benchmark, qb, qb_model, qb_variant, qb_batch_size, qb_engine, qb_runner, qb_batch):
    context = qb.context
    if not context.device.times_latency:
        pytest.skip(f"timed in the serial phase ({context.device.reason})")
    # Warm-up outside pytest-benchmark: its duration sets how many rounds meet --qb-min-time.
    started = time.perf_counter()
    plan = context.options.timing
    rounds = warm_up(lambda: qb_runner.infer(qb_batch), plan)

    def runner_rounds() -> int:  # the runner's own loop costs a round differently: estimated on itself
        return rounds_for_loop(lambda n: qb_runner.time(qb_batch, warmup=0, iterations=n), plan)

    device = None
    if benchmark.enabled:
        benchmark.pedantic(qb_runner.infer, args=(qb_batch,), rounds=rounds, warmup_rounds=0, iterations=1)
        host_ms = tuple(seconds * 1e3 for seconds in benchmark.stats.stats.data)
        if context.pipeline.backend.kind is not BackendKind.ONNXRUNTIME:
            # GPU time from device events, copies apart: the backend's own timer adds what the host clock cannot see.
            device = qb_runner.time(qb_batch, warmup=0, iterations=runner_rounds())
    else:
        # pytest-benchmark is off (pytest-xdist, --benchmark-disable) and calls its target once:
        # the backend's own timer does the timed rounds.
        device = benchmark.pedantic(qb_runner.time, args=(qb_batch,), kwargs={"warmup": 0, "iterations": runner_rounds()})
        host_ms = device.host_ms
    qb.latency.note_timing(time.perf_counter() - started, host_ms)
    latency = qb.latency.record(Timed(qb_model, qb_variant.name, qb_batch_size, host_ms, device), qb_runner, qb_engine)
    benchmark.extra_info["quantbench"] = benchmark_info(context, qb.gate, qb_model, latency)

    if qb_batch_size != context.options.reference_batch:
        return
    enforce(qb.gate.latency_outcome(qb_model, qb_variant.name, latency), "latency")
