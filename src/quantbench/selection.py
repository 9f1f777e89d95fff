"""Pure selection over result records: join, gate, rank, and name the fastest passing variant.

Rules (the report and the CLI repeat them to the user):

- One `Selection` per (model, backend) that has latency results; a model with accuracy results
  only gets one per backend of those, so every variant still shows up, failing "no latency".
- Accuracy comes from the same backend's `EvalResult`s. Where a backend has none for a model
  (TensorRT timed, accuracy measured on ONNX Runtime, the faithful Q/DQ simulator), the group
  borrows every accuracy of that model from one other backend, chosen once per group so the
  baseline and the variants are compared on the same numbers; `VariantOutcome.accuracy_backend`
  says where they came from.
- Latency is the host-clock median (`LatencyResult.host.median_ms`) at `reference_batch`, the
  synchronised per-batch time pytest-benchmark measures; speed-up = baseline / variant latency on
  the same backend and batch size.
- A variant passes when every check of `thresholds` passes (accuracy: both the absolute and the
  relative drop; speed-up and memory where set) and nothing is missing. Missing accuracy or
  latency, a failed build (``failures``), a baseline that is missing or below its floor, accuracy
  of an untrained (random-weight) model, and accuracy measured on another dataset than the
  baseline's are failures, each with its reason.
- The baseline is gated only by the `min_map` floor; its speed-up is 1 by definition.
- Ranking: passing variants by latency, then failing ones by latency (unmeasured last).
- Winner: the fastest variant that passes AND is gated. Passing gated variants whose median is
  within measurement noise of the winner's (the difference under twice the combined standard
  error of the two medians, `median_standard_error`) are named in `Selection.within_noise`:
  the winner stands, and the report says which others a re-run could rank first.
- Disturbed timing: a variant whose median is more than `DISTURBED_SPREAD` above its own minimum
  was timed while something else loaded the machine (measured here: a shared 2-core VM that
  switched between 37 ms and 63 ms per yolov5n inference for minutes); `Selection.disturbed`
  names them so the report can say the ranking may not repeat. Non-gated (exploratory) variants, from
  `thresholds.not_gated` or ``gated = false`` in the variants table, are listed and checked but
  never win, and their failures are never red.
- Duplicate records (same model, variant, backend[, batch]): the last one given wins.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .records import EvalResult, LatencyResult
from .thresholds import ModelThresholds, Thresholds, check_accuracy, check_memory, check_speedup, relative_drop

# A failed build: keyed by variant name (every model) or by (model, variant).
FailureKey = str | tuple[str, str]


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


@dataclass(frozen=True)
class Selection:
    """The ranked outcomes of one (model, backend) and the fastest passing gated variant."""

    model: str
    backend: str
    baseline: str
    reference_batch: int
    outcomes: tuple[VariantOutcome, ...]  # passing by latency first, then failing
    winner: str | None
    criteria: dict[str, Any] = field(default_factory=dict)  # the ModelThresholds applied, as a dict
    within_noise: tuple[str, ...] = ()  # passing gated variants statistically as fast as the winner
    disturbed: tuple[str, ...] = ()  # variants whose timing shows outside interference (see module docstring)
    simulated: str | None = None  # set when a record of the group is simulated (a test fake): no real measurement

    def outcome(self, variant: str) -> VariantOutcome:
        for o in self.outcomes:
            if o.variant == variant:
                return o
        raise KeyError(variant)

    @property
    def winning_outcome(self) -> VariantOutcome | None:
        return self.outcome(self.winner) if self.winner else None


def select(
    evals: Iterable[EvalResult],
    latencies: Iterable[LatencyResult],
    thresholds: Thresholds,
    *,
    reference_batch: int = 1,
    variant_options: Mapping[tuple[str, str], dict] | None = None,
    failures: Mapping[FailureKey, str] | None = None,
) -> list[Selection]:
    """Gate and rank every variant, one `Selection` per (model, backend), sorted by model then backend;
    ``variant_options`` are keyed by (model, variant), as two models may build one variant name differently."""
    options = dict(variant_options or {})
    failures = dict(failures or {})
    acc: dict[tuple[str, str, str], EvalResult] = {(e.model, e.backend, e.variant): e for e in evals}
    lat: dict[tuple[str, str, str, int], LatencyResult] = {
        (r.model, r.backend, r.variant, r.batch_size): r for r in latencies
    }
    models = sorted({k[0] for k in acc} | {k[0] for k in lat} | {k[0] for k in failures if isinstance(k, tuple)})
    selections = []
    for model in models:
        t = thresholds.for_model(model)
        timed_backends = sorted({b for m, b, _, _ in lat if m == model})
        eval_backends = sorted({b for m, b, _ in acc if m == model})
        # A model whose every build failed has no records at all: its group is named "none".
        for backend in timed_backends or eval_backends or ["none"]:
            source = _accuracy_source(backend, eval_backends, acc, model, t.baseline)
            variants = sorted(
                {v for m, b, v in acc if m == model and b == source}
                | {v for m, b, v, _ in lat if m == model and b == backend}
                | {k[1] if isinstance(k, tuple) else k for k in failures if not isinstance(k, tuple) or k[0] == model}
            )
            group = _Group(
                model=model, backend=backend, accuracy_backend=source, reference_batch=reference_batch, t=t,
                accuracy={v: acc[model, source, v] for v in variants if (model, source, v) in acc},
                latency={v: lat[model, backend, v, reference_batch] for v in variants
                         if (model, backend, v, reference_batch) in lat},
                batches={v: sorted(bs for m, b, vv, bs in lat if (m, b, vv) == (model, backend, v)) for v in variants},
            )
            outcomes = [
                group.outcome(v, failures.get((model, v)) or failures.get(v), dict(options.get((model, v), {})))
                for v in variants
            ]
            ranked = tuple(sorted(outcomes, key=_rank_key))
            winner = next((o for o in ranked if o.passed and o.gated), None)
            selections.append(
                Selection(
                    model=model,
                    backend=backend,
                    baseline=t.baseline,
                    reference_batch=reference_batch,
                    outcomes=ranked,
                    winner=winner.variant if winner else None,
                    criteria=_criteria(t),
                    within_noise=_within_noise(winner, ranked),
                    disturbed=tuple(o.variant for o in ranked if _disturbed(o)),
                    simulated=next((r.simulated for r in (*group.latency.values(), *group.accuracy.values())
                                    if r.simulated), None),
                )
            )
    return selections


def median_standard_error(stddev_ms: float, rounds: int) -> float:
    """Standard error of a sample median: sqrt(pi/2) * sigma / sqrt(n) (large-sample, near-normal).

    Latency samples have a long right tail, so this is a yardstick for "could a re-run swap these
    two?", not a confidence interval to quote.
    """
    return math.sqrt(math.pi / 2) * stddev_ms / math.sqrt(rounds) if rounds > 0 else math.inf


# Median above minimum by more than this: ONNX Runtime's CPU provider on an idle machine and
# TensorRT engines stay well within it (yolov5n here: +7 %); interference from other processes does not.
DISTURBED_SPREAD = 0.25


def _disturbed(o: VariantOutcome) -> bool:
    return bool(o.latency_ms and o.latency_min_ms) and o.latency_ms > (1 + DISTURBED_SPREAD) * o.latency_min_ms


def _within_noise(winner: VariantOutcome | None, ranked: Sequence[VariantOutcome]) -> tuple[str, ...]:
    if winner is None or winner.latency_noise_ms is None:
        return ()
    tied = []
    for o in ranked:
        if o is winner or not (o.passed and o.gated) or o.latency_ms is None or o.latency_noise_ms is None:
            continue
        if o.latency_ms - winner.latency_ms <= 2 * math.hypot(o.latency_noise_ms, winner.latency_noise_ms):
            tied.append(o.variant)
    return tuple(tied)


def _accuracy_source(backend: str, eval_backends: list[str], acc: Mapping, model: str, baseline: str) -> str | None:
    """The backend whose accuracy results a (model, backend) group uses (see the module rules)."""
    if backend in eval_backends:
        return backend
    # Prefer a backend that measured the baseline, so drops can be computed at all.
    with_baseline = [b for b in eval_backends if (model, b, baseline) in acc]
    candidates = with_baseline or eval_backends
    return candidates[0] if candidates else None


@dataclass(frozen=True)
class _Group:
    """The records of one (model, backend) at the reference batch, keyed by variant."""

    model: str
    backend: str
    accuracy_backend: str | None
    reference_batch: int
    t: ModelThresholds
    accuracy: Mapping[str, EvalResult]
    latency: Mapping[str, LatencyResult]
    batches: Mapping[str, list[int]]  # every batch size timed, for the "measured at" hint

    def outcome(self, variant: str, build_failure: str | None, options: dict[str, Any]) -> VariantOutcome:
        ev, lr = self.accuracy.get(variant), self.latency.get(variant)
        # A failed build explains its missing records: say that, not "no accuracy", "no latency".
        reasons = [f"build failed: {build_failure}"] if build_failure else []
        drop_abs, drop_rel, accuracy_reasons = self._accuracy(variant, ev)
        speedup, memory_increase, latency_reasons = self._latency(variant, lr)
        if not build_failure or ev is not None:
            reasons += accuracy_reasons
        if not build_failure or lr is not None:
            reasons += latency_reasons
        base_acc = self.accuracy.get(self.t.baseline)
        return VariantOutcome(
            model=self.model,
            variant=variant,
            backend=self.backend,
            gated=self.t.is_gated(variant) and options.get("gated", True) is not False,
            map50_95=ev.metrics.map50_95 if ev else None,
            map50=ev.metrics.map50 if ev else None,
            drop_abs=drop_abs,
            drop_rel=drop_rel,
            latency_ms=lr.host.median_ms if lr else None,
            latency_noise_ms=median_standard_error(lr.host.stddev_ms, lr.host.rounds) if lr else None,
            latency_min_ms=lr.host.min_ms if lr else None,
            images_per_s=lr.images_per_s if lr else None,
            speedup=speedup,
            passed=not reasons,
            reasons=tuple(reasons),
            options=options,
            accuracy_backend=ev.backend if ev else None,
            untrained=bool(ev and ev.untrained) or bool(base_acc and base_acc.untrained),
            peak_memory_bytes=lr.peak_memory_bytes if lr else None,
            memory_increase=memory_increase,
        )

    def _accuracy(self, variant: str, ev: EvalResult | None) -> tuple[float | None, float | None, list[str]]:
        t, source = self.t, self.accuracy_backend or self.backend
        if ev is None:
            return None, None, [f"no accuracy result for {variant} on {source}"]
        base = self.accuracy.get(t.baseline)
        untrained = ["untrained model (random weights): its mAP cannot gate accuracy"] if (
            ev.untrained or (base is not None and base.untrained)) else []
        if variant == t.baseline:
            floor = check_accuracy(t, variant, ev.metrics.map50_95, ev.metrics.map50_95)
            return 0.0, 0.0, [r for r in (floor,) if r] + untrained
        if base is None:
            return None, None, [f"baseline {t.baseline} has no accuracy result on {source}, so no drop can be computed"]
        mine, theirs = ev.metrics.map50_95, base.metrics.map50_95
        drops = (theirs - mine, relative_drop(mine, theirs))
        if (ev.dataset, ev.num_images) != (base.dataset, base.num_images):
            return *drops, [
                f"accuracy measured on {ev.dataset} ({ev.num_images} images) but the baseline on "
                f"{base.dataset} ({base.num_images} images): not comparable"
            ]
        if check_accuracy(t, t.baseline, theirs, theirs):
            return *drops, [f"baseline {t.baseline} fails its mAP floor, so no drop is trusted"]
        reason = check_accuracy(t, variant, mine, theirs)
        return *drops, [r for r in (reason,) if r] + untrained

    def _latency(self, variant: str, lr: LatencyResult | None) -> tuple[float | None, float | None, list[str]]:
        t, batch = self.t, self.reference_batch
        if lr is None:
            measured = [b for b in self.batches.get(variant, []) if b != batch]
            elsewhere = f" (measured at batch {', '.join(map(str, measured))})" if measured else ""
            return None, None, [f"no latency for {variant} on {self.backend} at batch {batch}{elsewhere}"]
        if variant == t.baseline:
            return 1.0, (0.0 if lr.peak_memory_bytes else None), []
        base = self.latency.get(t.baseline)
        if base is None:
            return None, None, [f"baseline {t.baseline} has no latency on {self.backend} at batch {batch}"]
        ms, base_ms = lr.host.median_ms, base.host.median_ms
        speedup = base_ms / ms if ms > 0 else None
        memory_increase = (
            lr.peak_memory_bytes / base.peak_memory_bytes - 1.0
            if lr.peak_memory_bytes is not None and base.peak_memory_bytes else None
        )
        reasons = [r for r in (check_speedup(t, self.backend, ms, base_ms),
                               check_memory(t, lr.peak_memory_bytes, base.peak_memory_bytes)) if r]
        return speedup, memory_increase, reasons


def _rank_key(o: VariantOutcome) -> tuple:
    return (not o.passed, o.latency_ms is None, o.latency_ms or 0.0, o.variant)


def _criteria(t: ModelThresholds) -> dict[str, Any]:
    return {
        "baseline": t.baseline,
        "max_abs_drop": t.max_abs_drop,
        "max_rel_drop": t.max_rel_drop,
        "min_map": t.min_map,
        "min_speedup": dict(t.min_speedup),
        "max_memory_increase": t.max_memory_increase,
        "not_gated": list(t.not_gated),
    }
