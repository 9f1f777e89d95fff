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
- Verdicts (``verdicts`` in thresholds.toml): with ``"interval"`` (the default) a drop is judged by
  its paired-bootstrap confidence interval (`quantbench.decision.uncertainty`): ``pass`` when the whole
  interval is within the budget, ``fail`` when the whole interval is beyond it, ``inconclusive``
  when it straddles the limit; the same for the speed-up interval against ``min_speedup``. The
  budget of an interval is the tighter of ``max_abs_drop`` and ``max_rel_drop`` x the baseline's
  mAP50-95 (the relative limit taken at the baseline's measured mAP). An inconclusive variant is
  reported with the number of evaluation images that would likely decide it; it never wins, and its
  tests are expected failures (``xfail``), not red: a nightly gate does not flap on sampling noise,
  and a variant that stops passing still loses the selection. Where no interval exists (records
  from before intervals, too few timed rounds) and with ``"point"``, the point estimates decide and
  nothing is inconclusive.
- A failed build explains its missing records: the outcome says so instead of "no accuracy".
- A variant passes when nothing fails and nothing is missing. Not-gated (exploratory) variants,
  from ``thresholds.not_gated`` or ``gated = false`` in the variant table, are judged the same way
  but never win, and their failures are never red.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from quantbench.decision.thresholds import ModelThresholds
from quantbench.decision.uncertainty import (
    BootstrapInterval,
    DropInterval,
    MedianInterval,
    images_needed,
    latency_interval,
    speedup_interval,
)
from quantbench.errors import DataError
from quantbench.records import AccuracyComparison, CalibrationSpread, EvalResult, LatencyResult
from quantbench.rules import is_number, within

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"
_MIB = 1024 * 1024
SPEEDUP_RESAMPLES = 2000  # bootstrap resamples of the speed-up (two medians' ratio; cheap)


@dataclass(frozen=True)
class Finding:
    """What one check found: a failure or an undecided comparison, with its one-sentence reason."""

    verdict: str  # FAIL or INCONCLUSIVE
    reason: str
    images_needed: int | None = None  # evaluation images that would likely decide an inconclusive drop


@dataclass(frozen=True)
class Evidence:
    """What is known of one variant on one (model, backend): the gate's whole input besides thresholds."""

    model: str
    variant: str
    backend: str
    reference_batch: int = 1
    accuracy: EvalResult | None = None
    baseline_accuracy: EvalResult | None = None
    drop: DropInterval | None = None  # paired bootstrap of the drop vs the baseline, same images
    spread: CalibrationSpread | None = None  # mAP over seeded calibration subsets (reported, not gated)
    reference: AccuracyComparison | None = None  # the paired drop from the FP32 model (reported, not gated)
    latency: LatencyResult | None = None  # at the reference batch size
    baseline_latency: LatencyResult | None = None
    build_failure: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # the variant's build options, plus "gated"
    accuracy_backend: str | None = None  # backend whose accuracy is judged (when not the timed one)
    other_batches: tuple[int, ...] = ()  # batch sizes timed besides the reference one (the "no latency" hint)
    judge_latency: bool = True  # False: only the accuracy part is asked for (the accuracy test)


@dataclass(frozen=True)
class VariantOutcome:
    """One variant's joined measurements on one (model, backend), and the gate's verdict."""

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
    passed: bool  # verdict == "pass"
    reasons: tuple[str, ...]  # why it fails or is inconclusive; empty when it passes
    options: dict[str, Any]
    accuracy_backend: str | None = None  # backend whose EvalResult gave the mAP
    untrained: bool = False  # random weights: the mAP means nothing
    peak_memory_bytes: int | None = None
    memory_increase: float | None = None  # vs the baseline, as a fraction
    latency_noise_ms: float | None = None  # standard error of the latency median (`median_standard_error`)
    latency_min_ms: float | None = None  # fastest timed round at the reference batch size
    accuracy_reasons: tuple[str, ...] = ()  # the accuracy part of ``reasons`` (what the accuracy test asserts)
    latency_reasons: tuple[str, ...] = ()  # the latency part (what the latency test asserts)
    verdict: str = PASS  # pass | fail | inconclusive
    accuracy_verdict: str = PASS
    latency_verdict: str = PASS
    confidence: float | None = None  # of the intervals below; None: point estimates only
    drop_interval: tuple[float, float] | None = None  # mAP50-95 drop (fraction), paired bootstrap
    map50_drop_interval: tuple[float, float] | None = None
    images: int | None = None  # evaluation images the drop was measured on
    images_needed: int | None = None  # for an inconclusive drop: images that would likely decide it
    latency_interval_ms: tuple[float, float] | None = None  # order-statistic interval of the median
    speedup_interval: tuple[float, float] | None = None  # bootstrap of baseline median / this median
    reference_variant: str | None = None  # what ``reference_drop`` is measured from (the FP32 model)
    reference_drop: float | None = None  # mAP50-95 drop from it (fraction), reported only
    reference_drop_interval: tuple[float, float] | None = None
    calib_seeds: int | None = None  # calibration subsets the variant was also built from (`CalibrationSpread`)
    calib_seed_range: float | None = None  # max - min mAP50-95 over them
    calib_seed_stdev: float | None = None
    skipped: dict[str, int] = field(default_factory=dict)  # evaluation images skipped, by reason (EvalResult)


def judge(e: Evidence, t: ModelThresholds) -> VariantOutcome:
    """The gate (see the module docstring)."""
    ev, lr = e.accuracy, e.latency
    drop_abs, drop_rel, accuracy = _accuracy(e, t)
    speedup, memory_increase, speed_ci, latency = _latency(e, t) if e.judge_latency else (None, None, None, [])
    failed = [Finding(FAIL, f"build failed: {e.build_failure}")] if e.build_failure else []
    if e.build_failure and ev is None:
        accuracy = []
    if e.build_failure and lr is None:
        latency = []
    base = e.baseline_accuracy if e.variant != t.baseline else ev
    drop = e.drop if e.drop is not None and e.variant != t.baseline and t.verdicts == "interval" else None
    interval = drop.map50_95 if drop is not None else None
    median_ci = _median_interval(lr, t)
    verdict = _verdict(failed + accuracy + latency)
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
        passed=verdict == PASS,
        reasons=tuple(f.reason for f in failed + accuracy + latency),
        options=dict(e.options),
        accuracy_backend=ev.backend if ev else None,
        untrained=bool(ev and ev.untrained) or bool(base and base.untrained),
        peak_memory_bytes=lr.peak_memory_bytes if lr else None,
        memory_increase=memory_increase,
        accuracy_reasons=tuple(f.reason for f in failed + accuracy),
        latency_reasons=tuple(f.reason for f in failed + latency),
        verdict=verdict,
        accuracy_verdict=_verdict(failed + accuracy), latency_verdict=_verdict(failed + latency),
        confidence=t.confidence if interval or speed_ci or median_ci else None,
        drop_interval=(interval.lower, interval.upper) if interval else None,
        map50_drop_interval=(drop.map50.lower, drop.map50.upper) if drop is not None else None,
        images=ev.num_images if ev else None,
        # records from before skip_reasons counted every skipped image as unreadable
        skipped=(ev.skip_reasons or ({"unreadable": len(ev.skipped_images)} if ev.skipped_images else {})) if ev else {},
        images_needed=next((f.images_needed for f in accuracy if f.images_needed), None),
        latency_interval_ms=(median_ci.lower, median_ci.upper) if median_ci else None,
        speedup_interval=(speed_ci.lower, speed_ci.upper) if speed_ci else None,
        reference_variant=e.reference.baseline if e.reference else None,
        reference_drop=e.reference.drop.map50_95.point if e.reference else None,
        reference_drop_interval=((e.reference.drop.map50_95.lower, e.reference.drop.map50_95.upper)
                                 if e.reference else None),
        calib_seeds=e.spread.spread.count if e.spread else None,
        calib_seed_range=e.spread.spread.range if e.spread else None,
        calib_seed_stdev=e.spread.spread.stdev if e.spread else None,
    )


def _verdict(findings: list[Finding]) -> str:
    verdicts = {f.verdict for f in findings}
    return FAIL if FAIL in verdicts else INCONCLUSIVE if INCONCLUSIVE in verdicts else PASS


def _failures(reasons: Sequence[str | None]) -> list[Finding]:
    return [Finding(FAIL, r) for r in reasons if r]


def _accuracy(e: Evidence, t: ModelThresholds) -> tuple[float | None, float | None, list[Finding]]:
    ev, source = e.accuracy, e.accuracy_backend or e.backend
    if ev is None:
        return None, None, _failures([f"no accuracy result for {e.variant} on {source}"])
    base = ev if e.variant == t.baseline else e.baseline_accuracy
    untrained = ["untrained model (random weights): its mAP cannot gate accuracy"] if (
        ev.untrained or (base is not None and base.untrained)) else []
    if e.variant == t.baseline:
        floor = check_accuracy(t, e.variant, ev.metrics.map50_95, ev.metrics.map50_95)
        return 0.0, 0.0, _failures([floor, *untrained])
    if base is None:
        return None, None, _failures([f"baseline {t.baseline} has no accuracy result on {source}, so no drop can "
                                      "be computed"])
    mine, theirs = ev.metrics.map50_95, base.metrics.map50_95
    drops = (theirs - mine, relative_drop(mine, theirs))
    if (ev.dataset, ev.num_images) != (base.dataset, base.num_images):
        return *drops, _failures([f"accuracy measured on {ev.dataset} ({ev.num_images} images) but the baseline on "
                                  f"{base.dataset} ({base.num_images} images): not comparable"])
    if check_accuracy(t, t.baseline, theirs, theirs):
        return *drops, _failures([f"baseline {t.baseline} fails its mAP floor, so no drop is trusted"])
    interval = e.drop.map50_95 if e.drop is not None and t.verdicts == "interval" else None
    if interval is None:
        return *drops, _failures([check_accuracy(t, e.variant, mine, theirs), *untrained])
    return *drops, [*_drop_findings(interval, t, theirs), *_failures(untrained)]


def drop_limit(t: ModelThresholds, baseline_map: float) -> float:
    """The absolute mAP50-95 drop both limits allow: the tighter of max_abs_drop and max_rel_drop x baseline."""
    return min(t.max_abs_drop, t.max_rel_drop * baseline_map) if baseline_map > 0 else t.max_abs_drop


def interval_verdict(ci: BootstrapInterval, limit: float) -> str:
    """The rule for one drop interval against its limit: PASS when the whole interval is within the
    limit, FAIL when the whole interval is beyond it, INCONCLUSIVE when it straddles the limit.
    """
    if within(ci.upper, limit):
        return PASS
    return INCONCLUSIVE if within(ci.lower, limit) else FAIL


def drop_verdict(drop: float, ci: BootstrapInterval | None, limit: float) -> str:
    """The verdict on one drop against its limit: by its interval where there is one
    (`interval_verdict`), else by the point alone (pass or fail, the ``"point"`` mode's rule).

    Shared with `quantbench search`'s trials and its verifying build.
    """
    if ci is not None:
        return interval_verdict(ci, limit)
    return PASS if within(drop, limit) else FAIL


def limits_broken(t: ModelThresholds, drop: float, baseline_map: float) -> list[str]:
    """Which of ``t``'s two drop limits an mAP50-95 ``drop`` from ``baseline_map`` breaks, each as
    "<measured> > <allowed> allowed"; empty exactly when ``within(drop, drop_limit(t, baseline_map))``."""
    broken = []
    if not within(drop, t.max_abs_drop):
        broken.append(f"{drop * 100:.2f} points > {t.max_abs_drop * 100:.2f} allowed")
    if baseline_map > 0 and not within(drop, t.max_rel_drop * baseline_map):
        broken.append(f"{drop / baseline_map * 100:.1f} % > {t.max_rel_drop * 100:.1f} % allowed")
    return broken


def _drop_findings(ci: BootstrapInterval, t: ModelThresholds, baseline_map: float) -> list[Finding]:
    limit = drop_limit(t, baseline_map)
    verdict = interval_verdict(ci, limit)
    if verdict == PASS:
        return []
    measured = (f"mAP50-95 drop {ci.point * 100:.2f} points ({ci.confidence:.0%} interval "
                f"{ci.lower * 100:.2f} to {ci.upper * 100:.2f}, {ci.images} images)")
    budget = (f"the {limit * 100:.2f}-point budget (max_abs_drop {t.max_abs_drop * 100:.2f} points, max_rel_drop "
              f"{t.max_rel_drop:.1%} of baseline {t.baseline} {baseline_map:.4f})")
    if verdict == FAIL:
        return [Finding(FAIL, f"{measured} is beyond {budget}")]
    needed = images_needed(ci, limit)
    decide = (f"about {needed} evaluation images would likely decide it" if needed else
              "its point sits on the limit: no number of images is likely to decide it")
    return [Finding(INCONCLUSIVE, f"{measured} straddles {budget}; {decide}", needed)]


def _latency(e: Evidence, t: ModelThresholds
             ) -> tuple[float | None, float | None, BootstrapInterval | None, list[Finding]]:
    lr, base, batch = e.latency, e.baseline_latency, e.reference_batch
    if lr is None:
        elsewhere = f" (measured at batch {', '.join(map(str, e.other_batches))})" if e.other_batches else ""
        return None, None, None, _failures([f"no latency for {e.variant} on {e.backend} at batch {batch}{elsewhere}"])
    if e.variant == t.baseline:
        return 1.0, (0.0 if lr.peak_memory_bytes else None), None, []
    if base is None:
        return None, None, None, _failures([f"baseline {t.baseline} has no latency on {e.backend} at batch {batch}"])
    ms, base_ms = lr.host.median_ms, base.host.median_ms
    speedup = base_ms / ms if ms > 0 else None
    memory_increase = (lr.peak_memory_bytes / base.peak_memory_bytes - 1.0
                       if lr.peak_memory_bytes is not None and base.peak_memory_bytes else None)
    memory = _failures([check_memory(t, lr.peak_memory_bytes, base.peak_memory_bytes)])
    ci = _speedup_interval(base, lr, t)
    required = t.min_speedup.get(e.backend)
    if ci is None or required is None:
        return speedup, memory_increase, ci, _failures([check_speedup(t, e.backend, ms, base_ms)]) + memory
    return speedup, memory_increase, ci, _speedup_findings(ci, required, e.backend, t) + memory


def _speedup_findings(ci: BootstrapInterval, required: float, backend: str, t: ModelThresholds) -> list[Finding]:
    if within(required, ci.lower):
        return []
    measured = (f"speed-up {ci.point:.2f}x ({ci.confidence:.0%} interval {ci.lower:.2f}x to {ci.upper:.2f}x) "
                f"over baseline {t.baseline}")
    if not within(required, ci.upper):
        return [Finding(FAIL, f"{measured} < {required:.2f}x required on {backend}")]
    return [Finding(INCONCLUSIVE, f"{measured} straddles the {required:.2f}x required on {backend}; time more "
                                  "rounds (--qb-rounds, --qb-min-time) on an idle machine to decide it")]


def _speedup_interval(base: LatencyResult, lr: LatencyResult, t: ModelThresholds) -> BootstrapInterval | None:
    """The speed-up's bootstrap interval from both raw rounds; None in point mode or without rounds."""
    if t.verdicts != "interval" or len(base.host.samples_ms) < 2 or len(lr.host.samples_ms) < 2:
        return None
    return speedup_interval(base.host.samples_ms, lr.host.samples_ms, confidence=t.confidence,
                            resamples=SPEEDUP_RESAMPLES)


def _median_interval(lr: LatencyResult | None, t: ModelThresholds) -> MedianInterval | None:
    if lr is None or t.verdicts != "interval" or not lr.host.samples_ms:
        return None
    try:
        return latency_interval(lr.host.samples_ms, t.confidence)
    except DataError:  # too few rounds for the confidence level: the median stands alone
        return None


def median_standard_error(stddev_ms: float, rounds: int) -> float:
    """Standard error of a sample median: sqrt(pi/2) * sigma / sqrt(n) (large-sample, near-normal).

    Latency samples have a long right tail, so this is a yardstick for "could a re-run swap these
    two?", not a confidence interval to quote.
    """
    return math.sqrt(math.pi / 2) * stddev_ms / math.sqrt(rounds) if rounds > 0 else math.inf


# --- point rules: the gate's checks of point estimates (the "point" mode, and where no interval exists)


def check_accuracy(t: ModelThresholds, variant: str, map_variant: float, map_baseline: float) -> str | None:
    """Why ``variant``'s mAP50-95 fails ``t`` (the drop within `drop_limit`: both limits), or None."""
    if not is_number(map_variant):
        return f"mAP50-95 of {variant} is {map_variant}, not a number"
    if variant == t.baseline:
        if t.min_map is not None and not within(t.min_map, map_variant):
            return f"baseline {variant} mAP50-95 {map_variant:.4f} < {t.min_map:.4f} floor (min_map)"
        return None
    if not is_number(map_baseline):
        return f"mAP50-95 of baseline {t.baseline} is {map_baseline}, not a number"
    broken = limits_broken(t, map_baseline - map_variant, map_baseline)
    if not broken:
        return None
    return f"mAP50-95 drop {' and '.join(broken)} ({map_variant:.4f} vs baseline {t.baseline} {map_baseline:.4f})"


def check_speedup(t: ModelThresholds, backend: str, variant_ms: float, baseline_ms: float) -> str | None:
    """Why the speed-up over the baseline misses ``backend``'s minimum, or None (also when none is set)."""
    required = t.min_speedup.get(backend)
    if required is None:
        return None
    if not (variant_ms > 0 and baseline_ms > 0):
        return f"latency {variant_ms} ms vs baseline {baseline_ms} ms cannot give a speed-up (not positive)"
    speedup = baseline_ms / variant_ms
    if not within(required, speedup):
        return (
            f"speed-up {speedup:.2f}x < {required:.2f}x required on {backend} "
            f"({variant_ms:.2f} ms vs baseline {t.baseline} {baseline_ms:.2f} ms)"
        )
    return None


def check_memory(t: ModelThresholds, variant_bytes: int | None, baseline_bytes: int | None) -> str | None:
    """Why peak device memory grew more than allowed over the baseline's, or None.

    None also when no limit is set or either side was not measured (ONNX Runtime on the CPU).
    """
    if t.max_memory_increase is None or variant_bytes is None or not baseline_bytes:
        return None
    increase = variant_bytes / baseline_bytes - 1.0
    if not within(increase, t.max_memory_increase):
        return (
            f"GPU memory {increase * 100:+.1f} % > {t.max_memory_increase * 100:+.1f} % allowed "
            f"({variant_bytes / _MIB:.1f} MiB vs baseline {t.baseline} {baseline_bytes / _MIB:.1f} MiB)"
        )
    return None


def relative_drop(map_variant: float, map_baseline: float) -> float | None:
    """Drop as a fraction of the baseline's mAP; None when the baseline's mAP is not positive."""
    return (map_baseline - map_variant) / map_baseline if map_baseline > 0 else None
