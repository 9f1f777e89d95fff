"""Progress a person can follow: one line per finished artefact, in the terminal the user started.

``yolo11n-coco/entropy-calibration: calibrated in 241 s (shared by 4 variants)``,
``yolo11n-coco/int8-entropy-head-fp16: derived from the shared entropy calibration in 0.4 s``,
``yolo11n-coco/int8-entropy: evaluated 500 images in 38 s, mAP50-95 0.3474``.

A serial session writes each line at once (past pytest's capture, `BenchContext.say`). A
pytest-xdist worker's output is captured and its stderr interleaves with the controller's dots, so
there the lines travel the way pytest-xdist relays everything else: on the test's report, as
``user_properties`` entries named `PROPERTY` (xdist serialises them to the controller), attached
to the report of the phase (setup, call) that produced them. The controlling process of the build
phase prints them with ``write_line`` (a line of its own, after the dots), with how many of the
phase's tests are done.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from quantbench.records import EvalResult, VariantBuild

PROPERTY = "quantbench_progress"


def build_line(build: VariantBuild) -> str | None:
    """The line of a variant ONNX this process made (None: found in the cache, or the FP32 model itself)."""
    if build.cached or build.kind == "fp32":
        return None
    calibration = build.options.get("calibration", {})
    if calibration.get("derived_from"):
        method = build.options.get("calibration_method", "")
        return f"{build.model}/{build.variant}: derived from the shared {method} calibration in {build.seconds:.1f} s"
    eps = ",".join(calibration.get("eps", ()))
    return (f"{build.model}/{build.variant}: built by ModelOpt in {build.seconds:.0f} s"
            + (f" (calibrated on {eps})" if eps else ""))


def calibration_line(build: VariantBuild, shared_by: int) -> str | None:
    """The line of a shared calibration this process ran (None when it was cached)."""
    if build.cached:
        return None
    eps = ",".join(build.options.get("calibration", {}).get("eps", ()))
    return (f"{build.model}/{build.variant}: calibrated in {build.seconds:.0f} s on {eps} "
            f"(shared by {shared_by} variant{'s' if shared_by != 1 else ''})")


def eval_line(result: EvalResult) -> str:
    return (f"{result.model}/{result.variant}: evaluated {result.num_images} images in {result.timing.total_s:.0f} s, "
            f"mAP50-95 {result.metrics.map50_95:.4f}")


class ProgressLines:
    """Where this process's progress lines go: written now (serial) or kept for the next report (a worker)."""

    def __init__(self, write: Callable[[str], None], *, in_worker: bool):
        self._write, self.in_worker = write, in_worker
        self._pending: list[str] = []

    def emit(self, line: str | None) -> None:
        if line is None:
            return
        if self.in_worker:
            self._pending.append(line)
        else:
            self._write(line)

    def attach(self, report: Any) -> None:
        """A worker: move the pending lines onto ``report`` (a new list: pytest shares the item's)."""
        if self._pending:
            report.user_properties = [*report.user_properties, *((PROPERTY, line) for line in self._pending)]
            self._pending.clear()


class PhaseProgress:
    """The build phase's controlling process: prints the lines its workers' reports carry, and how far it is."""

    def __init__(self, write_line: Callable[[str], None]):
        self.write_line = write_line
        self.total: int | None = None
        self.done = 0

    def collected(self, count: int) -> None:
        self.total = count if self.total is None else max(self.total, count)

    def report(self, report: Any) -> None:
        if report.when == "call" or (report.when == "setup" and not report.passed):
            self.done += 1
        lines = [value for name, value in getattr(report, "user_properties", ()) if name == PROPERTY]
        left = f"{self.done}/{self.total} tests done" if self.total else f"{self.done} tests done"
        for line in lines:
            self.write_line(f"quantbench: {line} [{left}]")
