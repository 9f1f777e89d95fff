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

from quantbench.decision.gate import Evidence, VariantOutcome, judge
from quantbench.decision.thresholds import ModelThresholds, Thresholds
from quantbench.records import AccuracyComparison, CalibrationSpread, DropInterval, EvalResult, LatencyResult

# A failed build: keyed by variant name (every model) or by (model, variant).
FailureKey = str | tuple[str, str]


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
    comparisons: Iterable[AccuracyComparison] = (),
    spreads: Iterable[CalibrationSpread] = (),
) -> list[Selection]:
    """Gate and rank every variant, one `Selection` per (model, backend), sorted by model then backend;
    ``variant_options`` are keyed by (model, variant), as two models may build one variant name differently."""
    records = _Records(
        acc={(e.model, e.backend, e.variant): e for e in evals},
        lat={(r.model, r.backend, r.variant, r.batch_size): r for r in latencies},
        options=dict(variant_options or {}), failures=dict(failures or {}), reference_batch=reference_batch,
        drops={(c.model, c.backend, c.variant, c.baseline): c for c in comparisons},
        spreads={(sp.model, sp.backend, sp.variant): sp for sp in spreads},
    )
    models = sorted({k[0] for k in records.acc} | {k[0] for k in records.lat}
                    | {k[0] for k in records.failures if isinstance(k, tuple)})
    selections = []
    for model in models:
        timed_backends = sorted({b for m, b, _, _ in records.lat if m == model})
        eval_backends = sorted({b for m, b, _ in records.acc if m == model})
        # A model whose every build failed has no records at all: its group is named "none".
        for backend in timed_backends or eval_backends or ["none"]:
            selections.append(records.selection(model, backend, eval_backends, thresholds.for_model(model)))
    return selections


@dataclass(frozen=True)
class _Records:
    """Every record given to `select`, keyed for the joins."""

    acc: dict[tuple[str, str, str], EvalResult]  # (model, backend, variant)
    lat: dict[tuple[str, str, str, int], LatencyResult]  # (model, backend, variant, batch)
    options: dict[tuple[str, str], dict]  # (model, variant) -> build options, plus "gated"
    failures: dict[FailureKey, str]
    reference_batch: int
    drops: dict[tuple[str, str, str, str], AccuracyComparison]  # (model, backend, variant, measured against)
    spreads: dict[tuple[str, str, str], CalibrationSpread]  # (model, backend, variant)

    def selection(self, model: str, backend: str, eval_backends: list[str], t: ModelThresholds) -> Selection:
        """Judge every variant of (model, backend) with the gate, rank, and name the winner."""
        batch = self.reference_batch
        source = _accuracy_source(backend, eval_backends, self.acc, model, t.baseline)
        variants = sorted(
            {v for m, b, v in self.acc if m == model and b == source}
            | {v for m, b, v, _ in self.lat if m == model and b == backend}
            | {k[1] if isinstance(k, tuple) else k for k in self.failures if not isinstance(k, tuple) or k[0] == model}
        )
        # Keyed by variant alone: ``source`` is None where no backend measured accuracy (nothing matches then).
        measured = {v: r for (m, b, v), r in self.acc.items() if (m, b) == (model, source)}
        accuracy = {v: measured[v] for v in variants if v in measured}
        spreads = {v: s for (m, b, v), s in self.spreads.items() if (m, b) == (model, source)}
        latency = {v: self.lat[model, backend, v, batch] for v in variants if (model, backend, v, batch) in self.lat}
        outcomes = [judge(Evidence(
            model=model, variant=v, backend=backend, reference_batch=batch,
            accuracy=accuracy.get(v), baseline_accuracy=accuracy.get(t.baseline),
            drop=self._drop(model, source, v, t.baseline, accuracy), spread=spreads.get(v),
            reference=self._reference(model, source, v, t.baseline, accuracy),
            latency=latency.get(v), baseline_latency=latency.get(t.baseline),
            build_failure=self.failures.get((model, v)) or self.failures.get(v),
            options=dict(self.options.get((model, v), {})), accuracy_backend=source,
            other_batches=tuple(sorted(bs for m, b, vv, bs in self.lat if (m, b, vv) == (model, backend, v) and bs != batch)),
        ), t) for v in variants]
        ranked = tuple(sorted(outcomes, key=_rank_key))
        records: list[LatencyResult | EvalResult] = [*latency.values(), *accuracy.values()]
        winner = next((o for o in ranked if o.passed and o.gated), None)
        return Selection(
            model=model, backend=backend, baseline=t.baseline, reference_batch=batch, outcomes=ranked,
            winner=winner.variant if winner else None, criteria=_criteria(t),
            within_noise=_within_noise(winner, ranked),
            disturbed=tuple(o.variant for o in ranked if _disturbed(o)),
            simulated=next((r.simulated for r in records if r.simulated), None),
        )

    def _drop(self, model: str, source: str | None, variant: str, baseline: str,
              accuracy: Mapping[str, EvalResult]) -> DropInterval | None:
        """The paired drop of ``variant``, when it was measured against this baseline on the judged images."""
        if source is None:
            return None
        c = self.drops.get((model, source, variant, baseline))
        ev = accuracy.get(variant)
        if c is None or ev is None or (c.dataset, c.num_images) != (ev.dataset, ev.num_images):
            return None
        return c.drop

    def _reference(self, model: str, source: str | None, variant: str, baseline: str,
                   accuracy: Mapping[str, EvalResult]) -> AccuracyComparison | None:
        """The variant's paired drop from another variant than the baseline (the FP32 model): reported only."""
        ev = accuracy.get(variant)
        return next((c for (m, b, v, against), c in self.drops.items()
                     if (m, b, v) == (model, source, variant) and against != baseline and ev is not None
                     and (c.dataset, c.num_images) == (ev.dataset, ev.num_images)), None)


# Median above minimum by more than this: ONNX Runtime's CPU provider on an idle machine and
# TensorRT engines stay well within it (yolov5n here: +7 %); interference from other processes does not.
DISTURBED_SPREAD = 0.25


def _disturbed(o: VariantOutcome) -> bool:
    ms, fastest = o.latency_ms, o.latency_min_ms
    return bool(ms and fastest) and ms is not None and fastest is not None and ms > (1 + DISTURBED_SPREAD) * fastest


def _within_noise(winner: VariantOutcome | None, ranked: Sequence[VariantOutcome]) -> tuple[str, ...]:
    """Passing gated variants a re-run could rank first: latency intervals that overlap the winner's
    (where both have one), else a median difference under twice the combined standard error."""
    if winner is None or winner.latency_noise_ms is None or winner.latency_ms is None:
        return ()
    tied = []
    for o in ranked:
        if o is winner or not (o.passed and o.gated) or o.latency_ms is None or o.latency_noise_ms is None:
            continue
        if o.latency_interval_ms and winner.latency_interval_ms:
            if o.latency_interval_ms[0] <= winner.latency_interval_ms[1]:
                tied.append(o.variant)
        elif o.latency_ms - winner.latency_ms <= 2 * math.hypot(o.latency_noise_ms, winner.latency_noise_ms):
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
        "verdicts": t.verdicts,
        "confidence": t.confidence,
    }
