"""The one gate: a variant's measurements and its model's thresholds -> `VariantOutcome`.

`judge` is the only place that decides pass or fail. The bench's accuracy and latency tests
assert on its outcome (each on the part it measured: `VariantOutcome.accuracy_reasons`,
`VariantOutcome.latency_reasons`), `selection.select` ranks its outcomes, and the report and
``selection.json`` print them, so the three can never disagree.

Rules (the report repeats them):

- Accuracy: both the absolute and the relative mAP50-95 drop against the model's baseline must be
  within ``max_abs_drop``/``max_rel_drop``; the baseline itself is held only to the ``min_map``
  floor. Missing accuracy, a missing baseline or one below its floor, accuracy measured on other
  images than the baseline's, and an untrained (random-weight) model are failures with a reason.
- Latency: the host-clock median at the reference batch; speed-up = baseline / variant latency on
  the same backend and batch size, held to the backend's ``min_speedup`` where one is set; peak
  device memory to ``max_memory_increase``. The baseline's speed-up is 1 by definition.
- A failed build explains its missing records: the outcome says so instead of "no accuracy".
- A variant passes when nothing fails and nothing is missing. Not-gated (exploratory) variants,
  from ``thresholds.not_gated`` or ``gated = false`` in the variant table, are judged the same way
  but never win, and their failures are never red.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .records import EvalResult, LatencyResult
from .thresholds import ModelThresholds, check_accuracy, check_memory, check_speedup, relative_drop


@dataclass(frozen=True)
class Evidence:
    """What is known of one variant on one (model, backend): the gate's whole input besides thresholds."""

    model: str
    variant: str
    backend: str
    reference_batch: int = 1
    accuracy: EvalResult | None = None
    baseline_accuracy: EvalResult | None = None
    latency: LatencyResult | None = None  # at the reference batch size
    baseline_latency: LatencyResult | None = None
    build_failure: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # the variant's build options, plus "gated"
    accuracy_backend: str | None = None  # backend whose accuracy is judged (when not the timed one)
    other_batches: tuple[int, ...] = ()  # batch sizes timed besides the reference one (the "no latency" hint)
    judge_latency: bool = True  # False: only the accuracy part is asked for (the accuracy test)


@dataclass(frozen=True)
class VariantOutcome:
    """One variant's joined measurements on one (model, backend), and whether it passes."""

    model: str
    variant: str
    backend: str
    gated: bool
    map50_95: float | None
    map50: float | None
    drop_abs: float | None  # baseline - variant mAP50-95 (fraction; 0.01 = 1 point)
    drop_rel: float | None  # drop_abs / baseline mAP50-95
    latency_ms: float | None  # host median per batch at the reference batch size
    images_per_s: float | None
    speedup: float | None  # baseline latency / this latency
    passed: bool
    reasons: tuple[str, ...]  # why it fails; empty when it passes
    options: dict[str, Any]
    accuracy_backend: str | None = None  # backend whose EvalResult gave the mAP
    untrained: bool = False  # random weights: the mAP means nothing
    peak_memory_bytes: int | None = None
    memory_increase: float | None = None  # vs the baseline, as a fraction
    latency_noise_ms: float | None = None  # standard error of the latency median (`median_standard_error`)
    latency_min_ms: float | None = None  # fastest timed round at the reference batch size
    accuracy_reasons: tuple[str, ...] = ()  # the accuracy part of ``reasons`` (what the accuracy test asserts)
    latency_reasons: tuple[str, ...] = ()  # the latency part (what the latency test asserts)


def judge(e: Evidence, t: ModelThresholds) -> VariantOutcome:
    """The gate (see the module docstring)."""
    ev, lr = e.accuracy, e.latency
    drop_abs, drop_rel, accuracy_reasons = _accuracy(e, t)
    speedup, memory_increase, latency_reasons = _latency(e, t) if e.judge_latency else (None, None, [])
    failed = [f"build failed: {e.build_failure}"] if e.build_failure else []
    if e.build_failure and ev is None:
        accuracy_reasons = []
    if e.build_failure and lr is None:
        latency_reasons = []
    base = e.baseline_accuracy if e.variant != t.baseline else ev
    return VariantOutcome(
        model=e.model, variant=e.variant, backend=e.backend,
        gated=t.is_gated(e.variant) and e.options.get("gated", True) is not False,
        map50_95=ev.metrics.map50_95 if ev else None, map50=ev.metrics.map50 if ev else None,
        drop_abs=drop_abs, drop_rel=drop_rel,
        latency_ms=lr.host.median_ms if lr else None,
        latency_noise_ms=median_standard_error(lr.host.stddev_ms, lr.host.rounds) if lr else None,
        latency_min_ms=lr.host.min_ms if lr else None,
        images_per_s=lr.images_per_s if lr else None,
        speedup=speedup,
        passed=not (failed or accuracy_reasons or latency_reasons),
        reasons=tuple(failed + accuracy_reasons + latency_reasons),
        options=dict(e.options),
        accuracy_backend=ev.backend if ev else None,
        untrained=bool(ev and ev.untrained) or bool(base and base.untrained),
        peak_memory_bytes=lr.peak_memory_bytes if lr else None,
        memory_increase=memory_increase,
        accuracy_reasons=tuple(failed + accuracy_reasons),
        latency_reasons=tuple(failed + latency_reasons),
    )


def _accuracy(e: Evidence, t: ModelThresholds) -> tuple[float | None, float | None, list[str]]:
    ev, source = e.accuracy, e.accuracy_backend or e.backend
    if ev is None:
        return None, None, [f"no accuracy result for {e.variant} on {source}"]
    base = ev if e.variant == t.baseline else e.baseline_accuracy
    untrained = ["untrained model (random weights): its mAP cannot gate accuracy"] if (
        ev.untrained or (base is not None and base.untrained)) else []
    if e.variant == t.baseline:
        floor = check_accuracy(t, e.variant, ev.metrics.map50_95, ev.metrics.map50_95)
        return 0.0, 0.0, [r for r in (floor,) if r] + untrained
    if base is None:
        return None, None, [f"baseline {t.baseline} has no accuracy result on {source}, so no drop can be computed"]
    mine, theirs = ev.metrics.map50_95, base.metrics.map50_95
    drops = (theirs - mine, relative_drop(mine, theirs))
    if (ev.dataset, ev.num_images) != (base.dataset, base.num_images):
        return *drops, [f"accuracy measured on {ev.dataset} ({ev.num_images} images) but the baseline on "
                        f"{base.dataset} ({base.num_images} images): not comparable"]
    if check_accuracy(t, t.baseline, theirs, theirs):
        return *drops, [f"baseline {t.baseline} fails its mAP floor, so no drop is trusted"]
    reason = check_accuracy(t, e.variant, mine, theirs)
    return *drops, [r for r in (reason,) if r] + untrained


def _latency(e: Evidence, t: ModelThresholds) -> tuple[float | None, float | None, list[str]]:
    lr, base, batch = e.latency, e.baseline_latency, e.reference_batch
    if lr is None:
        elsewhere = f" (measured at batch {', '.join(map(str, e.other_batches))})" if e.other_batches else ""
        return None, None, [f"no latency for {e.variant} on {e.backend} at batch {batch}{elsewhere}"]
    if e.variant == t.baseline:
        return 1.0, (0.0 if lr.peak_memory_bytes else None), []
    if base is None:
        return None, None, [f"baseline {t.baseline} has no latency on {e.backend} at batch {batch}"]
    ms, base_ms = lr.host.median_ms, base.host.median_ms
    speedup = base_ms / ms if ms > 0 else None
    memory_increase = (lr.peak_memory_bytes / base.peak_memory_bytes - 1.0
                       if lr.peak_memory_bytes is not None and base.peak_memory_bytes else None)
    reasons = [r for r in (check_speedup(t, e.backend, ms, base_ms),
                           check_memory(t, lr.peak_memory_bytes, base.peak_memory_bytes)) if r]
    return speedup, memory_increase, reasons


def median_standard_error(stddev_ms: float, rounds: int) -> float:
    """Standard error of a sample median: sqrt(pi/2) * sigma / sqrt(n) (large-sample, near-normal).

    Latency samples have a long right tail, so this is a yardstick for "could a re-run swap these
    two?", not a confidence interval to quote.
    """
    return math.sqrt(math.pi / 2) * stddev_ms / math.sqrt(rounds) if rounds > 0 else math.inf
