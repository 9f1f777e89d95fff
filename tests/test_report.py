"""Report: the terminal table, the winner line, report.md, selection.json (round trip) and pareto.png."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from quantbench.decision.selection import Selection, select
from quantbench.decision.thresholds import Thresholds
from quantbench.errors import ConfigError
from quantbench.outputs.report import format_selection_table, read_selection_json, winner_line, write_report
from quantbench.records import CocoMetrics, EvalResult, EvalTiming, LatencyResult, LatencyStats

REPO_THRESHOLDS = Path(__file__).resolve().parents[1] / "thresholds.toml"
GOLD = np.array([1.0, 215 / 255, 0.0])  # matplotlib's "gold": the winner's star


def _eval(model: str, variant: str, map50_95: float, backend: str = "onnxruntime") -> EvalResult:
    return EvalResult(
        model=model, variant=variant, backend=backend, device="CPU", dataset="val500", num_images=500,
        skipped_images=(), untrained=False,
        metrics=CocoMetrics(map50_95, map50_95 * 1.65, map50_95, 0.1, 0.2, 0.3, 0.35),
        timing=EvalTiming(inference_s=10.0, total_s=12.0, images_per_s=500 / 12.0),
    )


def _lat(model: str, variant: str, median_ms: float, backend: str = "onnxruntime") -> LatencyResult:
    return LatencyResult(
        model=model, variant=variant, backend=backend, device="test", batch_size=1,
        host=LatencyStats(median_ms, median_ms, median_ms, median_ms, 0.0, 20), images_per_s=1000.0 / median_ms,
    )


OPTIONS = {
    "fp16": {"kind": "fp16"},
    "int8-entropy": {"kind": "int8", "calibration_method": "entropy", "calib_images": 128},
    "int8-max": {"kind": "int8", "calibration_method": "max", "calib_images": 128},
    "int8-all": {"kind": "int8", "gated": False},
}


@pytest.fixture
def selections(tmp_path: Path) -> list[Selection]:
    """yolov5n-coco on ONNX Runtime (an INT8 winner) and yolo11n on TensorRT (nothing meets 1.33x)."""
    path = tmp_path / "thresholds.toml"
    path.write_text(REPO_THRESHOLDS.read_text())
    t = Thresholds.load(path)
    evals = [_eval("yolov5n-coco", v, a) for v, a in (("fp16", 0.2427), ("int8-entropy", 0.2388),
                                                      ("int8-max", 0.2322), ("int8-all", 0.2300))]
    evals += [_eval("yolo11n", v, a) for v, a in (("fp16", 0.3940), ("int8-entropy", 0.3900))]
    lats = [_lat("yolov5n-coco", "fp16", 40.0), _lat("yolov5n-coco", "int8-entropy", 30.0),
            _lat("yolov5n-coco", "int8-max", 28.0), _lat("yolov5n-coco", "int8-all", 25.0),
            _lat("yolo11n", "int8-entropy", 0.85, "tensorrt"), _lat("yolo11n", "fp16", 1.0, "tensorrt")]
    options = {(model, v): o for model in ("yolov5n-coco", "yolo11n") for v, o in OPTIONS.items()}  # keyed per model
    return select(evals, lats, t, variant_options=options, failures={("yolo11n", "int8-max"): "ModelOpt crashed"})


def test_table_lists_every_variant_ranked_with_its_verdict(selections: list[Selection]):
    v5 = next(s for s in selections if s.model == "yolov5n-coco")
    table = format_selection_table(v5)
    lines = table.splitlines()
    # No GPU memory was measured (ONNX Runtime on the CPU), so that criterion is not shown.
    assert lines[0] == ("yolov5n-coco on onnxruntime (batch 1, baseline fp16, drop <= 1.00 pt and <= 3.0 %, "
                        "verdicts from 95% intervals)")
    assert lines[1].split() == ["variant", "mAP50-95", "drop", "drop", "interval", "vs", "fp32", "latency", "ms", "img/s",
                                "speed-up", "speed-up", "interval", "result", "reason"]
    rows = lines[3:-1]
    assert [r.split()[0] for r in rows] == ["int8-entropy", "fp16", "int8-all", "int8-max"]
    # Hand-made records carry no match tables or raw rounds: no intervals, point verdicts.
    assert rows[0].split()[1:10] == ["0.2388", "+0.39", "pt", "/", "1.6%", "-", "-", "30.00", "33.3"] and "WINNER" in rows[0]
    assert "(baseline)" in rows[1] and rows[1].endswith(" pass")
    assert "fail (not gated)" in rows[2] and "mAP50-95 drop 1.27 points > 1.00 allowed" in rows[2]
    assert " FAIL " in rows[3] and rows[3].endswith("mAP50-95 drop 1.05 points > 1.00 allowed and 4.3 % > 3.0 % allowed (0.2322 vs baseline fp16 0.2427)")
    assert lines[-1] == "fastest passing: yolov5n-coco int8-entropy on onnxruntime (30.00 ms, mAP 0.2388)"


def test_winner_line_for_the_baseline_and_for_no_winner(selections: list[Selection]):
    v11 = next(s for s in selections if s.model == "yolo11n")
    assert v11.winner == "fp16"
    assert winner_line(v11) == ("fastest passing: yolo11n fp16 on tensorrt (1.00 ms, mAP 0.3940) "
                                "(the baseline: no faster variant passes)")
    table = format_selection_table(v11)
    assert "speed-up >= 1.33x" in table.splitlines()[0]
    assert "speed-up 1.18x < 1.33x required on tensorrt" in table
    assert "build failed: ModelOpt crashed" in table

    nobody = select([_eval("m", "int8", 0.1)], [_lat("m", "int8", 5.0)], Thresholds.load(REPO_THRESHOLDS))[0]
    assert winner_line(nobody) == "no variant passes for m on onnxruntime at batch 1: see the reasons above"


def test_write_report_writes_three_files_atomically(selections: list[Selection], tmp_path: Path):
    out = tmp_path / "reports" / "run1"
    command = "quantbench select reports/benchmark.json --thresholds thresholds.toml"
    paths = write_report(selections, out, rebuild_command=command)
    assert paths == {"report": out / "report.md", "selection": out / "selection.json", "pareto": out / "pareto.png"}
    assert sorted(p.name for p in out.iterdir()) == ["pareto.png", "report.md", "selection.json"]  # no temp files

    md = paths["report"].read_text()
    assert "- fastest passing: yolov5n-coco int8-entropy on onnxruntime (30.00 ms, mAP 0.2388)" in md
    assert "- fastest passing: yolo11n fp16 on tensorrt (1.00 ms, mAP 0.3940)" in md
    assert f"```sh\n{command}\n```" in md
    assert "![latency vs mAP50-95](pareto.png)" in md
    assert "Accuracy measured on onnxruntime (no tensorrt accuracy results)." in md
    # The winner's exact options, as JSON, so the build can be reproduced.
    block = md.split("Options of `int8-entropy` (as in the variants table):\n\n```json\n", 1)[1].split("```", 1)[0]
    assert json.loads(block) == OPTIONS["int8-entropy"]
    assert md.count("| int8-max |") == 2 and "| variant | mAP50-95 |" in md

    # selection.json is versioned and reads back to equal records.
    doc = json.loads(paths["selection"].read_text())
    assert doc["kind"] == "quantbench.selection" and doc["schema"] == 1
    assert read_selection_json(paths["selection"]) == selections

    # Writing again replaces the files in place.
    write_report(selections[:1], out, rebuild_command=command)
    assert len(read_selection_json(paths["selection"])) == 1
    assert sorted(p.name for p in out.iterdir()) == ["pareto.png", "report.md", "selection.json"]


def test_pareto_png_shows_a_winner_star_only_when_there_is_one(selections: list[Selection], tmp_path: Path):
    with_winner = write_report(selections[1:], tmp_path / "a", rebuild_command="x")["pareto"]
    nobody = select([_eval("m", "fp16", 0.3), _eval("m", "int8", 0.1)], [_lat("m", "fp16", 5.0), _lat("m", "int8", 4.0)],
                    Thresholds.from_mapping({"min_map": 0.5}))
    without = write_report(nobody, tmp_path / "b", rebuild_command="x")["pareto"]
    for path, expect_star in ((with_winner, True), (without, False)):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = imread(path)
        assert img.shape[0] >= 400 and img.shape[1] >= 600
        gold = np.all(np.abs(img[..., :3] - GOLD) < 0.02, axis=-1).sum()
        assert bool(gold > 20) is expect_star, gold

    # Two panels side by side for two selections.
    both = write_report(selections, tmp_path / "c", rebuild_command="x")["pareto"]
    assert imread(both).shape[1] == 2 * imread(with_winner).shape[1]


def test_nothing_measured_still_plots_and_reports(tmp_path: Path):
    only_failures = select([], [], Thresholds.load(REPO_THRESHOLDS), failures={("yolo11s", "int8"): "export failed"})
    paths = write_report(only_failures, tmp_path, rebuild_command="x")
    assert "no variant passes for yolo11s on none" in paths["report"].read_text()
    assert imread(paths["pareto"]).ndim == 3


def test_empty_selection_list_is_refused(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"nothing to report into .*: no results were selected"):
        write_report([], tmp_path, rebuild_command="x")


def test_selection_json_of_another_kind_or_version_is_refused(selections: list[Selection], tmp_path: Path):
    path = write_report(selections, tmp_path, rebuild_command="x")["selection"]
    doc = json.loads(path.read_text())
    doc["schema"] = 2
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=r"schema version 2, not 1"):
        read_selection_json(path)
    path.write_text(json.dumps({"benchmarks": []}))
    with pytest.raises(ConfigError, match=r"is not a quantbench selection.json"):
        read_selection_json(path)


def test_report_states_the_images_each_evaluation_used_and_skipped(tmp_path: Path):
    """Issue 22: a skipped image is not in the mAP; report.md says how many and why."""
    t = Thresholds.load(REPO_THRESHOLDS)
    skipping = dataclasses.replace(_eval("yolov5n-coco", "int8-max", 0.2400), num_images=497,
                                   skipped_images=("a.jpg", "b.jpg", "c.jpg"),
                                   skip_reasons={"unreadable": 1, "size differs from the annotations": 2})
    old_record = dataclasses.replace(_eval("yolov5n-coco", "int8-entropy", 0.2410), num_images=499,
                                     skipped_images=("d.jpg",))  # written before skip_reasons existed
    selection, = select([_eval("yolov5n-coco", "fp16", 0.2427), skipping, old_record],
                        [_lat("yolov5n-coco", "fp16", 40.0), _lat("yolov5n-coco", "int8-max", 28.0),
                         _lat("yolov5n-coco", "int8-entropy", 30.0)], t)
    markdown = (write_report([selection], tmp_path, rebuild_command="quantbench select x")["report"]).read_text()
    line = next(text for text in markdown.splitlines() if text.startswith("Evaluated: "))
    assert line == ("Evaluated: fp16 500 images, 0 skipped; int8-max 497 images, 3 skipped (2 size differs from "
                    "the annotations, 1 unreadable); int8-entropy 499 images, 1 skipped (1 unreadable).")
