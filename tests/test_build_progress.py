"""Progress lines of a cold bench (issue 21): one line per finished artefact in the user's terminal, from a
serial session and from the parallel build phase's pytest-xdist workers (relayed on their reports).

The real bench suite in subprocesses on yolov5n-coco, 8 calibration and 8 evaluation images.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_bench_harness import SuiteRun, run_suite

pytestmark = pytest.mark.slow

TABLE = """
[[variant]]
name = "fp32"
kind = "fp32"

[[variant]]
name = "fp16"
kind = "fp16"
calib_images = 2

[[variant]]
name = "int8-max"
kind = "int8"
calibration_method = "max"
calib_images = 8

[[variant]]
name = "int8-head-fp16"
kind = "int8"
calibration_method = "max"
calib_images = 8
exclude_head = true
"""
SECONDS = r"\d+(\.\d+)? s"


@pytest.fixture(scope="module")
def parallel(tmp_path_factory: pytest.TempPathFactory, assets_dir: Path) -> SuiteRun:
    root = tmp_path_factory.mktemp("progress-parallel")
    return run_suite(root / "run", root / "cache", assets_dir, "--qb-build-workers", "2", "--qb-calibration-eps",
                     "cpu", table=TABLE)


@pytest.fixture(scope="module")
def serial(tmp_path_factory: pytest.TempPathFactory, assets_dir: Path) -> SuiteRun:
    root = tmp_path_factory.mktemp("progress-serial")
    return run_suite(root / "run", root / "cache", assets_dir, "--qb-variants", "fp32,int8-head-fp16",
                     "--qb-calibration-eps", "cpu", table=TABLE)


def test_the_build_phase_relays_one_line_per_artefact_with_what_remains(parallel: SuiteRun):
    build_phase = parallel.output.split("quantbench: parallel build phase finished", 1)[0]
    lines = [line for line in build_phase.splitlines() if line.startswith("quantbench: yolov5n-coco/")]
    # The max calibration runs once, in whichever worker needs it first: as int8-max's own build, or as
    # the shared calibration of int8-head-fp16 (then int8-max finds it cached).
    modelopt = [line for line in lines if re.search(r"int8-max: built by ModelOpt in|max-calibration: calibrated in", line)]
    assert len(modelopt) == 1, lines
    if "max-calibration" in modelopt[0]:
        assert re.search(rf"calibrated in {SECONDS} on cpu \(shared by 2 variants\)", modelopt[0])
    derived = [line for line in lines if "int8-head-fp16: derived from the shared max calibration in" in line]
    assert len(derived) == 1
    evaluated = sorted(re.sub(r" \[.*", "", line).split("/")[1].split(":")[0] for line in lines if "evaluated 8 images in" in line)
    assert evaluated == ["fp16", "fp32", "int8-head-fp16", "int8-max"]
    assert sum("fp16: built by ModelOpt in" in line for line in lines) == 1
    for line in lines:
        assert re.search(r"\[\d/4 tests done\]$", line), line
    assert re.search(r"mAP50-95 0\.\d{4} \[", next(line for line in lines if "evaluated" in line))
    # Each on a line of its own, not glued to xdist's progress dots.
    assert not re.search(r"[.xFEs]quantbench: yolov5n-coco/", build_phase)
    summary = next(line for line in build_phase.splitlines() if line.startswith("quantbench: variants built by ModelOpt"))
    assert "derived from a shared calibration: 1 (yolov5n-coco/int8-head-fp16);" in summary


def test_a_serial_cold_run_prints_the_same_lines_at_once(serial: SuiteRun):
    lines = [line for line in serial.output.splitlines() if line.startswith("quantbench [serial]: yolov5n-coco/")]
    assert any(re.search(rf"max-calibration: calibrated in {SECONDS} on cpu \(shared by 1 variant\)$", line)
               for line in lines), lines
    assert any("int8-head-fp16: derived from the shared max calibration in" in line for line in lines)
    assert sum("evaluated 8 images in" in line for line in lines) == 3  # and the baseline, fp16
