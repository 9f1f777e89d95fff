"""`pytest bench --qb-backend tensorrt` end to end on the FAKE TensorRT (``trt_fake_plugin``), in a child pytest.

The real bench suite and the real TensorRT backend code run; only the ``tensorrt`` module (generated
from the real 10.16 bindings' API surface; engines run the ONNX with ONNX Runtime) and, without a
GPU, the CUDA runtime (CPU stand-in) are fakes. The run must write engines and a timing cache,
carry the precision summary into the records, apply the TensorRT ``min_speedup`` of the gate, and
mark every figure SIMULATED in the records, the report and the selection. yolo11n-coco on 8 val500
images, INT8 calibrated on 8 calib500 images: about a minute on two CPU cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import trt_fake

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # about a minute on two CPU cores


# A TensorRT speed-up target the fake's CPU kernels cannot come near: fp32 and fp16 run at about the
# same speed on ONNX Runtime's CPU provider (either may be faster under load), so the gate must fail
# fp32 outright, whole interval below the target, not call it inconclusive or pass it on noise.
UNREACHABLE_SPEEDUP = 3.0


def _thresholds_for_the_asset(tmp_path: Path) -> tuple[Path, float]:
    """The repository's thresholds with yolo11n-coco's TensorRT target raised to ``UNREACHABLE_SPEEDUP``."""
    text = (ROOT / "thresholds.toml").read_text()
    own = tomllib.loads(text)["model"]["yolo11n-coco"]["min_speedup"]["tensorrt"]
    line = f"[model.yolo11n-coco]\nmin_speedup = {{ tensorrt = {own} }}"
    if line not in text:
        raise AssertionError(f"thresholds.toml no longer holds {line!r}; update this test's copy of it")
    path = tmp_path / "thresholds.toml"
    path.write_text(text.replace(line, f"[model.yolo11n-coco]\nmin_speedup = {{ tensorrt = {UNREACHABLE_SPEEDUP} }}"))
    return path, UNREACHABLE_SPEEDUP


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory, assets_dir):
    tmp = tmp_path_factory.mktemp("bench-fake-trt")
    thresholds, target = _thresholds_for_the_asset(tmp)
    args = [
        sys.executable, "-m", "pytest", "bench", "-p", "trt_fake_plugin", "-p", "no:cacheprovider",
        "--qb-backend", "tensorrt", "--qb-model", str(assets_dir / "models" / "yolo11n-coco.onnx"),
        "--qb-data", str(assets_dir / "coco" / "val500"), "--qb-calib-data", str(assets_dir / "coco" / "calib500"),
        "--qb-eval-images", "8", "--qb-calib-images", "8", "--qb-variants", "fp32,int8-max",
        "--qb-thresholds", str(thresholds), "--qb-warmup", "1", "--qb-rounds", "12", "--qb-min-time", "0",
        "--qb-cache-dir", str(tmp / "cache"), "--qb-report-dir", str(tmp / "reports"),
        f"--benchmark-json={tmp / 'benchmark.json'}",
    ]
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "QB_FAKE_TENSORRT_VERSION": "10.16.1.11"}
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return tmp, target, done


def test_the_gate_applies_the_tensorrt_speedup_target(bench_run):
    _, target, done = bench_run
    out = done.stdout
    assert "quantbench: backend tensorrt on " in out
    # fp32 vs the fp16 baseline on ONNX Runtime's CPU kernels is no TensorRT speed-up: the gate says so.
    assert done.returncode == 1, out[-3000:]
    assert "FAILED bench/test_latency.py::test_latency[yolo11n-coco-fp32-b1]" in out
    assert f"{target:.2f}x required on tensorrt" in out
    assert "XFAIL bench/test_latency.py::test_latency[yolo11n-coco-int8-max-b1] - not gated" in out  # fails too
    # int8-max's accuracy on 8 images: its drop's interval straddles the budget (inconclusive, an xfail)
    # or the drop passes outright; either way nothing else fails.
    summary = out.strip().splitlines()[-1]
    assert "1 failed" in summary and "error" not in summary
    assert ("3 passed, 2 xfailed" in summary and "test_accuracy[yolo11n-coco-int8-max] - inconclusive" in out) or \
        ("4 passed, 1 xfailed" in summary), summary


def test_engines_and_the_timing_cache_are_written(bench_run):
    tmp, _, _ = bench_run
    engines = sorted((tmp / "cache" / "trt-engine").glob("*.engine"))
    assert len(engines) == 3 and all(e.read_bytes().startswith(trt_fake.PLAN_MAGIC) for e in engines)
    assert all(e.with_suffix(".layers.json").is_file() for e in engines)
    (timing_cache,) = (tmp / "cache" / "trt-timing-cache").glob("*.cache")
    assert "trt10.16.1.11" in timing_cache.name
    assert len(json.loads(timing_cache.read_bytes()[len(trt_fake.TIMING_MAGIC):])["entries"]) == 3


def test_records_carry_the_precision_summary_and_say_simulated(bench_run):
    tmp, _, _ = bench_run
    rows = {b["params"]["qb_variant_name"]: b["extra_info"]["quantbench"]
            for b in json.loads((tmp / "benchmark.json").read_text())["benchmarks"]}
    assert set(rows) == {"fp16", "fp32", "int8-max"}
    for row in rows.values():
        latency = row["latency"]
        assert latency["backend"] == "tensorrt" and "fake TensorRT 10.16.1.11" in latency["simulated"]
        assert "fake TensorRT" in row["eval"]["simulated"]
        assert latency["device_ms"] is not None and latency["precision"]["layers"] > 100
    assert rows["int8-max"]["latency"]["precision"]["runs_int8"]
    assert rows["int8-max"]["latency"]["precision"]["intended_int8_nodes"] > 100
    assert rows["fp16"]["latency"]["precision"]["fp16_layers"] > 100 and rows["fp16"]["latency"]["precision"]["int8_layers"] == 0
    assert rows["fp32"]["latency"]["precision"]["fp32_layers"] > 100


def test_report_and_selection_say_simulated(bench_run):
    tmp, _, done = bench_run
    report = (tmp / "reports" / "report.md").read_text()
    assert report.count("SIMULATED") >= 3  # summary line, section banner, winner line
    assert report.splitlines()[2].startswith("SIMULATED (fake TensorRT 10.16.1.11")  # the CI verdict line too
    assert "**SIMULATED: fake TensorRT 10.16.1.11" in report and "No figure in this section is a tensorrt measurement" in report
    (selection,) = json.loads((tmp / "reports" / "selection.json").read_text())["selections"]
    assert selection["backend"] == "tensorrt" and "fake TensorRT" in selection["simulated"]
    assert selection["winner"] == "fp16"
    fp32 = next(o for o in selection["outcomes"] if o["variant"] == "fp32")
    assert not fp32["passed"] and any("required on tensorrt" in r for r in fp32["reasons"])
    assert "SIMULATED (fake TensorRT 10.16.1.11" in done.stdout  # the terminal table too
