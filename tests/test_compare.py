"""The compare gate on hand-made saved runs: what is paired, and what is refused (no bench session needed)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from quantbench.decision.thresholds import Thresholds
from quantbench.outputs.compare import compare_runs
from quantbench.outputs.history import HistoryError, SavedRun
from quantbench.records import LatencyResult, LatencyStats

THRESHOLDS = 'baseline = "fp16"\nmax_abs_drop = 0.010\nmax_rel_drop = 0.03\n'


def _lat(model: str, variant: str, rounds: tuple[float, ...], device: str) -> LatencyResult:
    host = LatencyStats.from_samples(rounds)
    return LatencyResult(model, variant, "tensorrt", device, 1, host, 1e3 / host.median_ms)


def _run(path: str, *latencies: LatencyResult) -> SavedRun:
    return SavedRun(Path(path), None, None, (), latencies, {})


@pytest.fixture
def thresholds(tmp_path: Path) -> Thresholds:
    (tmp_path / "thresholds.toml").write_text(THRESHOLDS)
    return Thresholds.load(tmp_path / "thresholds.toml")


def test_pairs_of_one_device_are_compared_by_their_rounds(thresholds: Thresholds):
    base = _run("base.json", _lat("yolo11n", "fp16", (1.0, 1.1, 1.0), "H200"), _lat("yolo11n", "int8", (0.5, 0.5, 0.6), "H200"))
    new = _run("new.json", _lat("yolo11n", "fp16", (1.0, 1.0, 1.0), "H200"), _lat("yolo11n", "int8", (0.7, 0.7, 0.7), "H200"))
    c = compare_runs(base, new, thresholds)
    assert [(x.variant, x.failed) for x in c.lines if x.what.startswith("latency")] == [("fp16", False), ("int8", True)]


def test_a_model_timed_on_another_device_is_not_compared(thresholds: Thresholds):
    """A user comparing runs made on two GPUs gets a refusal naming both files, not a latency verdict."""
    fp16 = _lat("yolo11n", "fp16", (1.0, 1.0, 1.0), "NVIDIA H100")
    base = _run("base.json", fp16)
    new = _run("new.json", dataclasses.replace(fp16, device="NVIDIA H200"))
    with pytest.raises(HistoryError, match=r"yolo11n on tensorrt was measured on NVIDIA H100 in base\.json but on "
                                           r"NVIDIA H200 in new\.json; .*compare runs made on one device\."):
        compare_runs(base, new, thresholds)
