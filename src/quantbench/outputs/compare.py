"""The compare gate between two saved runs: latency regressions and mAP changes of the same variant.

``quantbench compare BASE.json NEW.json --thresholds thresholds.toml --fail-latency median:10%``
exits 1 when, for any (model, variant, backend, batch size) timed in both runs,

- a latency check fails. Checks are pytest-benchmark's own (``--benchmark-compare-fail``
  syntax and classes, `pytest_benchmark.utils.parse_compare_fail`): ``median:10%`` fails when the
  new median is more than 10 % above the base's, ``mean:0.002`` when it is more than 2 ms above.
  They read quantbench's latency record (the same samples pytest-benchmark timed), in seconds as
  pytest-benchmark does, for the fields that record keeps: min, max, mean, median, stddev;
- or the variant's mAP50-95 moved between the runs by more than the model's accuracy budget in
  ``thresholds.toml``, by the gate's rule (`gate.drop_limit`, `gate.limits_broken`): more than
  ``max_abs_drop`` points or ``max_rel_drop`` of the base's value.
  Both directions fail: the same variant on the same data should score the same, so a rise beyond
  the budget means the measurement changed (data, pipeline, recipe) and the base run no longer
  stands for it. Accuracy measured on other data (dataset or image count) is not comparable: a failure.

Runs of one model on different devices of one backend are refused (HistoryError, exit 2): a
latency change there says nothing about the code; so are two runs with nothing in common. Variants
present in only one run, changed build options and changed versions (TensorRT, driver, ONNX
Runtime, ModelOpt) are listed as notes.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from quantbench.decision.gate import limits_broken
from quantbench.decision.thresholds import ModelThresholds, Thresholds
from quantbench.outputs.history import HistoryError, HistoryRow, SavedRun, build_history, what_changed
from quantbench.records import EvalResult, LatencyResult
from quantbench.rules import is_number

# The fields of `records.LatencyStats` that pytest-benchmark's checks can name.
LATENCY_FIELDS = ("min", "max", "mean", "median", "stddev")
DEFAULT_LATENCY_CHECK = "median:10%"


def parse_latency_check(text: str) -> Any:
    """argparse ``type=``: pytest-benchmark's ``--benchmark-compare-fail`` syntax, limited to recorded fields."""
    from pytest_benchmark.utils import parse_compare_fail

    check = parse_compare_fail(text)  # ArgumentTypeError for anything pytest-benchmark would refuse
    if check.field not in LATENCY_FIELDS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: quantbench's latency record keeps {', '.join(LATENCY_FIELDS)}, not {check.field}")
    return check


def latency_check(text: str) -> Any:
    """argparse ``type=`` of ``quantbench compare --fail-latency`` (`parse_latency_check`)."""
    return parse_latency_check(text)


def describe_check(check: Any) -> str:
    """``median:10%`` / ``mean:0.002`` back from a pytest-benchmark check."""
    from pytest_benchmark.utils import PercentageRegressionCheck

    if isinstance(check, PercentageRegressionCheck):
        return f"{check.field}:{check.threshold}%"
    return f"{check.field}:{check.threshold:g}"


@dataclass(frozen=True)
class CompareLine:
    """One comparison: a latency check, an mAP change, or a note; ``failed`` decides the gate."""

    model: str
    variant: str
    backend: str
    what: str  # "latency b1 median:10%", "mAP50-95", "note"
    base: str
    new: str
    change: str
    failed: bool
    reason: str = ""


@dataclass(frozen=True)
class Comparison:
    base: str
    new: str
    lines: tuple[CompareLine, ...]

    @property
    def failed(self) -> bool:
        return any(line.failed for line in self.lines)

    @property
    def failures(self) -> tuple[CompareLine, ...]:
        return tuple(line for line in self.lines if line.failed)


def compare_runs(base: SavedRun, new: SavedRun, thresholds: Thresholds,
                 latency_checks: Sequence[Any] = ()) -> Comparison:
    """Gate ``new`` against ``base`` (module docstring); HistoryError when a model's device differs
    between them or when they have nothing in common to compare."""
    checks = tuple(latency_checks) or (parse_latency_check(DEFAULT_LATENCY_CHECK),)
    before = _rows(base, thresholds)
    after = _rows(new, thresholds)
    for (model, backend), row in after.items():
        old = before.get((model, backend))
        if old is not None and old.device != row.device:
            raise HistoryError(
                f"{model} on {backend} was measured on {old.device} in {base.path} but on {row.device} in "
                f"{new.path}; their latencies say nothing about the change: compare runs made on one device.")
    measured = [*_latency_lines(base, new, checks), *_accuracy_lines(base, new, thresholds)]
    if not measured:
        raise HistoryError(f"{base.path} and {new.path} share no (model, variant, backend): nothing to compare; "
                           "pass two runs of the same bench configuration.")
    return Comparison(str(base.path), str(new.path), tuple([*measured, *_notes(before, after)]))


def _rows(run: SavedRun, thresholds: Thresholds) -> dict[tuple[str, str], HistoryRow]:
    """The run's one history row per (model, backend)."""
    return {(h.model, r.backend): r for h in build_history([run], thresholds, mix=True) for r in h.rows}


def _latency_lines(base: SavedRun, new: SavedRun, checks: Sequence[Any]) -> list[CompareLine]:
    before = {(r.model, r.variant, r.backend, r.batch_size): r for r in base.latencies}
    lines = []
    for r in new.latencies:
        old = before.get((r.model, r.variant, r.backend, r.batch_size))
        if old is None:
            continue
        current, compared = _stats_s(r), _stats_s(old)
        for check in checks:
            field = check.field
            verdict = check.fails(current, compared)  # pytest-benchmark's message, or None
            change = (f"{(current[field] / compared[field] - 1) * 100:+.1f} %" if compared[field]
                      else f"{(current[field] - compared[field]) * 1e3:+.3f} ms")
            lines.append(CompareLine(r.model, r.variant, r.backend, f"latency b{r.batch_size} {describe_check(check)}",
                                     f"{compared[field] * 1e3:.3f} ms", f"{current[field] * 1e3:.3f} ms", change,
                                     failed=verdict is not None, reason=verdict or ""))
    return lines


def _stats_s(r: LatencyResult) -> dict[str, float]:
    """The record's host statistics in seconds, keyed as pytest-benchmark's ``stats``."""
    h = r.host
    return {"min": h.min_ms / 1e3, "max": h.max_ms / 1e3, "mean": h.mean_ms / 1e3, "median": h.median_ms / 1e3,
            "stddev": h.stddev_ms / 1e3}


def _accuracy_lines(base: SavedRun, new: SavedRun, thresholds: Thresholds) -> list[CompareLine]:
    before = {(e.model, e.variant, e.backend): e for e in base.evals}
    lines = []
    for e in new.evals:
        old = before.get((e.model, e.variant, e.backend))
        if old is not None:
            lines.append(_accuracy_line(old, e, thresholds.for_model(e.model)))
    return lines


def _accuracy_line(old: EvalResult, e: EvalResult, t: ModelThresholds) -> CompareLine:
    was, now = old.metrics.map50_95, e.metrics.map50_95
    line = CompareLine(e.model, e.variant, e.backend, "mAP50-95", f"{was:.4f}", f"{now:.4f}",
                       f"{(now - was) * 100:+.2f} pt", failed=False)
    if (old.dataset, old.num_images) != (e.dataset, e.num_images):
        return _failed(line, f"measured on {e.dataset} ({e.num_images} images), the base run on {old.dataset} "
                             f"({old.num_images} images): not comparable")
    reason = map_change_reason(t, was, now)
    return _failed(line, reason) if reason else line


def map_change_reason(t: ModelThresholds, was: float, now: float) -> str | None:
    """Why an mAP50-95 change of one variant between two runs is beyond ``t``'s budget, or None."""
    if not (is_number(was) and is_number(now)):
        return f"mAP50-95 {was} -> {now} is not a number"
    change = now - was
    # The gate's accuracy budget, held to the change in either direction (the module docstring).
    broken = limits_broken(t, abs(change), was)
    if not broken:
        return None
    return f"mAP50-95 {'fell' if change < 0 else 'rose'} {' and '.join(broken)} ({was:.4f} -> {now:.4f})"


def _failed(line: CompareLine, reason: str) -> CompareLine:
    return CompareLine(line.model, line.variant, line.backend, line.what, line.base, line.new, line.change,
                       failed=True, reason=reason)


def _notes(before: dict[tuple[str, str], HistoryRow], after: dict[tuple[str, str], HistoryRow]) -> list[CompareLine]:
    """(model, backend)s in the new run only, and what changed in the environment or the variant table."""
    lines = []
    for (model, backend), row in after.items():
        old = before.get((model, backend))
        if old is None:
            lines.append(CompareLine(model, "-", backend, "note", "-", "-", "-", False,
                                     "not in the base run: nothing to compare"))
            continue
        lines += [CompareLine(model, "-", backend, "note", "", "", "", False, change) for change in what_changed(old, row)]
    return lines


def comparison_markdown(c: Comparison) -> str:
    """The comparison as Markdown (a CI step summary): the verdict first, then every line."""
    verdict = (f"**FAIL**: {len(c.failures)} of {len(c.lines)} comparisons beyond their limits"
               if c.failed else f"**PASS**: {len(c.lines)} comparisons within their limits")
    lines = ["## quantbench compare", "", verdict, "", f"base `{c.base}`, new `{c.new}`", "",
             "| model | variant | backend | check | base | new | change | result |", "|---|---|---|---|---|---|---|---|"]
    for x in sorted(c.lines, key=lambda x: (not x.failed, x.what == "note", x.model, x.variant, x.what)):
        result = "FAIL: " + x.reason if x.failed else (x.reason or "pass")
        cells = [x.model, x.variant, x.backend, x.what, x.base, x.new, x.change, result]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") or " " for cell in cells) + " |")
    return "\n".join(lines) + "\n"

