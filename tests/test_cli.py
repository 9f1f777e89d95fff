"""The `quantbench` command line on real data: a thin adapter, one clear line per user error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from quantbench.cli import main


def test_eval_writes_the_result_record(tmp_path: Path, yolov5n_onnx: Path, val500: Path, capsys):
    out = tmp_path / "out.json"
    code = main(["eval", "--model", str(yolov5n_onnx), "--data", str(val500), "--limit", "4",
                 "--backend", "onnxruntime", "--cache-dir", str(tmp_path / "cache"), "--json", str(out), "-q"])
    assert code == 0
    record = json.loads(out.read_text())
    assert record["num_images"] == 4 and record["model"] == "yolov5n-coco" and record["variant"] == "base"
    assert 0.0 < record["metrics"]["map50_95"] < record["metrics"]["map50"] <= 1.0
    timing = record["timing"]
    assert 0 < timing["inference_s"] <= timing["total_s"]
    assert "mAP50-95" in capsys.readouterr().out


def test_quantize_then_eval_a_variant_reuses_the_cached_build(tmp_path: Path, yolov5n_onnx: Path, calib500: Path,
                                                              val500: Path, capsys):
    common = ["--model", str(yolov5n_onnx), "--cache-dir", str(tmp_path / "cache"), "--variant", "int8-max",
              "--calib-data", str(calib500), "--calib-images", "4", "-q"]
    assert main(["quantize", *common]) == 0
    build = json.loads(capsys.readouterr().out)
    assert build["variant"] == "int8-max" and build["quantized_nodes"] > 0 and not build["cached"]
    assert main(["eval", *common, "--data", str(val500), "--limit", "2", "--backend", "onnxruntime"]) == 0
    assert "int8-max on onnxruntime" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["eval", "--model", "/nonexistent/model.onnx", "--data", "."], "/nonexistent/model.onnx"),
        (["quantize", "--variant", "int8-typo"], "int8-typo"),
    ],
    ids=["missing-model", "unknown-variant"],
)
def test_user_errors_end_in_one_line_and_exit_code_2(argv, named, tmp_path: Path, yolov5n_onnx: Path, capsys):
    if "--model" not in argv:
        argv = [*argv, "--model", str(yolov5n_onnx)]
    assert main([*argv, "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("quantbench: error: ") and named in err and "\n" not in err
