"""The `quantbench` command line on real data: a thin adapter, one clear line per user error."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from quantbench.analysis.setup import AnalysisOptions
from quantbench.build.variants import load_variants
from quantbench.cache import ArtifactCache
from quantbench.cli import main
from quantbench.defaults import VARIANTS


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


@pytest.mark.slow
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


# `sensitivity` and `search`: kept small as in test_sensitivity.py (max calibration on 2 images, a few
# probe and proxy images, three layer groups). YOLO11n from its YAML has random weights: every mAP
# is 0, which is fine for the plumbing; the unmet budget needs real weights (yolov5n-coco).
Y11_GROUPS = ["/model.10/m/m.0/attn/MatMul", "/model.23/dfl/conv/Conv", "/model.0/conv/Conv"]


def _small_analysis(model: Path, calib500: Path, cache: ArtifactCache, out: Path, *, imgsz: int) -> list[str]:
    return ["--model", str(model), "--calib-data", str(calib500), "--calibration-method", "max",
            "--calib-images", "2", "--imgsz", str(imgsz), "--proxy-images", "2", "--batch-size", "2",
            "--cache-dir", str(cache.root), "--out-dir", str(out), "-q"]


def test_analysis_option_defaults_are_the_library_defaults():
    from quantbench.analysis.cli import analysis_options, search_config
    from quantbench.analysis.search import SearchConfig
    from quantbench.cli import build_parser

    assert analysis_options(build_parser().parse_args(["sensitivity"])) == AnalysisOptions()
    args = build_parser().parse_args(["search"])
    assert analysis_options(args) == AnalysisOptions()
    assert search_config(args) == SearchConfig()  # min_int8_flop_share included: one default, 0.85
    assert search_config(build_parser().parse_args(["search", "--no-verify"])).max_verify == 0


@pytest.mark.slow
def test_sensitivity_writes_the_ranked_report(yolo11n_onnx: Path, calib500: Path, session_cache: ArtifactCache,
                                              tmp_path: Path, capsys):
    out = tmp_path / "sensitivity"
    argv = ["sensitivity", *_small_analysis(yolo11n_onnx, calib500, session_cache, out, imgsz=320),
            "--probe-images", "3", "--top-k", "1", "--groups", *Y11_GROUPS]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("109 quantized layer groups of yolo11n, most sensitive first:")
    with open(out / "sensitivity.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["group"] for r in rows) == sorted(Y11_GROUPS)
    assert [r["probe_score"] != "" for r in rows] == [True, False, False]  # --top-k 1
    assert "Proxies on 2 calibration images" in (out / "sensitivity.md").read_text()
    assert (out / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    assert all(name in printed for name in Y11_GROUPS) and str(out / "sensitivity.csv") in printed


@pytest.mark.slow
def test_search_takes_its_budget_from_thresholds_and_verifies(yolo11n_onnx: Path, calib500: Path,
                                                              session_cache: ArtifactCache, tmp_path: Path, capsys):
    thresholds = tmp_path / "thresholds.toml"
    thresholds.write_text("max_abs_drop = 0.02\n[model.yolo11n]\nmax_abs_drop = 0.004\n")
    out = tmp_path / "search"
    argv = ["search", *_small_analysis(yolo11n_onnx, calib500, session_cache, out, imgsz=320),
            "--probe-images", "3", "--top-k", "1", "--groups", *Y11_GROUPS, "--thresholds", str(thresholds),
            "--strategy", "greedy", "--max-steps", "5", "--variant-name", "int8-cli"]
    assert main(argv) == 0  # random weights: every split scores 0 mAP, no drop
    printed = capsys.readouterr().out
    assert printed.startswith("int8-cli: 0 layer groups kept out of INT8") and "within the budget" in printed
    assert {p.name for p in out.iterdir()} == {"sensitivity.md", "sensitivity.csv", "sensitivity.png", "search.md",
                                               "search_curve.png", "int8-cli.toml", "search_state.json"}
    state = json.loads((out / "search_state.json").read_text())
    assert state["header"]["budget"] == 0.004 and state["header"]["verify"]
    assert (state["header"]["config"]["strategy"], state["header"]["config"]["max_steps"]) == ("greedy", 5)
    assert [s["action"] for s in state["steps"]] == ["start", "verify"]
    (variant,) = load_variants(out / "int8-cli.toml")
    assert variant.name == "int8-cli" and variant.high_precision_dtype == "fp16" and variant.calib_images == 2


@pytest.mark.slow
def test_search_exits_1_when_the_budget_is_not_met(yolov5n_onnx: Path, calib500: Path, session_cache: ArtifactCache,
                                                  tmp_path: Path, capsys):
    """yolov5n-coco, INT8 from 2 calibration images, no group allowed out of INT8 (the floor is 100 %).

    Measured: the probe (16 images) scores 0.3227 in FP32 and 0.3157 in INT8, a drop of 0.0070.
    """
    out = tmp_path / "search"
    argv = ["search", *_small_analysis(yolov5n_onnx, calib500, session_cache, out, imgsz=640),
            "--probe-images", "16", "--top-k", "0", "--groups", "/model.0/conv/Conv", "/model.24/m.0/Conv",
            "--budget", "0", "--min-int8-flop-share", "1", "--no-verify"]
    assert main(argv) == 1
    printed = capsys.readouterr().out
    assert "NOT within the budget" in printed
    state = json.loads((out / "search_state.json").read_text())
    assert not state["header"]["verify"] and [s["action"] for s in state["steps"]] == ["start"]
    assert state["steps"][0]["drop"] > 0
    assert "budget NOT met" in (out / "search.md").read_text()


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["sensitivity", "--calib-data", "/nonexistent/calib"], "/nonexistent/calib"),
        (["search", "--budget", "0.01", "--imgsz", "100"], "imgsz=100"),
        (["search", "--budget", "0.01", "--min-int8-flop-share", "85"], "min_int8_flop_share=85"),
        (["search", "--budget", "-0.5"], "search budget -0.5"),
        (["search", "--thresholds", "/nonexistent/thresholds.toml"], "/nonexistent/thresholds.toml"),
    ],
    ids=["missing-calib-folder", "imgsz", "flop-share-as-percent", "negative-budget", "missing-thresholds"],
)
def test_analysis_user_errors_end_in_one_line_and_exit_code_2(argv, named, yolo11n_onnx: Path, tmp_path: Path,
                                                              capsys):
    out = tmp_path / "out"
    argv = [*argv, "--model", str(yolo11n_onnx), "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("quantbench: error: ") and named in err and "\n" not in err
    assert not out.exists()


def test_bad_counts_are_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sensitivity", "--proxy-images", "0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "quantbench sensitivity: error: argument --proxy-images: '0' must be at least 1")


def test_quantize_needs_a_variant(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["quantize"])
    assert exited.value.code == 2
    assert "the following arguments are required: --variant" in capsys.readouterr().err


def test_an_unwritable_json_path_is_refused_before_any_work(tmp_path: Path, capsys):
    (tmp_path / "file").write_text("x")
    cases = {
        "/sys/quantbench/out.json": "the folder of --json file /sys/quantbench cannot be written",
        str(tmp_path / "file" / "out.json"): f"the folder of --json file {tmp_path / 'file'} is a file, not a folder",
        str(tmp_path): f"--json file {tmp_path} is a folder; pass a file path",
    }
    for target, named in cases.items():
        # The model does not exist: the output path is checked first, before anything is resolved or run.
        assert main(["eval", "--model", str(tmp_path / "absent.onnx"), "--json", target,
                     "--cache-dir", str(tmp_path / "cache")]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"quantbench: error: {err.removeprefix('quantbench: error: ')}" and named in err, err
        assert "\n" not in err


def test_the_variant_table_is_found_from_any_folder_and_its_error_names_the_option(
        tmp_path: Path, yolov5n_onnx: Path, capsys, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)  # no bench/ here: the table shipped in the package is used
    assert main(["quantize", "--variant", "int8-typo", "--model", str(yolov5n_onnx),
                 "--cache-dir", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert f"variant 'int8-typo' is not in {VARIANTS.shipped_path};" in err and "--variants-file" in err
    assert main(["quantize", "--variant", "int8-max", "--variants-file", "nope.toml", "--model", str(yolov5n_onnx),
                 "--cache-dir", str(tmp_path / "cache")]) == 2
    assert capsys.readouterr().err.strip() == (
        "quantbench: error: variant table nope.toml (--variants-file) does not exist; pass an existing file to "
        "--variants-file.")


@pytest.mark.slow
def test_a_quantize_run_logs_each_modelopt_line_once_without_nvml_noise_and_records_its_images(
        tmp_path: Path, yolov5n_onnx: Path, calib500: Path):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "quantbench.cli", "quantize", "--variant", "int8-max", "--model", str(yolov5n_onnx),
         "--calib-data", str(calib500), "--calib-images", "4", "--cache-dir", str(tmp_path / "cache"), "-q"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["options"]["calib_images"] == 4 == record["options"]["calibration"]["num_images"]
    assert "NVML" not in done.stderr and "Failed to get GPU count" not in done.stderr  # CPU machine: no GPU to count
    modelopt_lines = [line for line in done.stderr.splitlines() if "Found QuantizeLinear/DequantizeLinear nodes" in line]
    assert len(modelopt_lines) == 1, done.stderr  # ModelOpt prints it; the root logger does not print it again


@pytest.mark.parametrize(("argv", "named"), [
    (["eval", "--model", "{tmp}/absent.onnx", "--cache-dir", "/sys/quantbench-cache"],
     "cache folder (--cache-dir or QUANTBENCH_CACHE) /sys/quantbench-cache cannot be written"),
    (["eval", "--model", "{tmp}/absent.onnx", "--cache-dir", "{tmp}/file/cache"],
     "cache folder (--cache-dir or QUANTBENCH_CACHE) {tmp}/file/cache cannot be written"),
    (["calibrate", "--cache-dir", "{tmp}/file"], "cache folder (--cache-dir or QUANTBENCH_CACHE) {tmp}/file is a file"),
    (["select", "{tmp}/absent.json", "--report-dir", "{tmp}/file"], "--report-dir {tmp}/file is a file, not a folder"),
    (["select", "{tmp}/absent.json", "--report-dir", "/sys/qb-report"], "--report-dir /sys/qb-report cannot be written"),
    (["history", "{tmp}/absent.json", "--out-dir", "{tmp}/file"], "--out-dir {tmp}/file is a file, not a folder"),
    (["history", "{tmp}/absent.json", "--out-dir", "/sys/qb-history"], "--out-dir /sys/qb-history cannot be written"),
    (["compare", "{tmp}/a.json", "{tmp}/b.json", "--markdown", "{tmp}"],
     "--markdown file {tmp} is a folder; pass a file path such as {tmp}/comparison.md."),
    (["compare", "{tmp}/a.json", "{tmp}/b.json", "--markdown", "/sys/qb/compare.md"],
     "the folder of --markdown file /sys/qb cannot be written"),
], ids=["eval-readonly-cache", "eval-cache-under-a-file", "calibrate-cache-is-a-file", "select-report-on-a-file",
        "select-report-readonly", "history-on-a-file", "history-readonly", "compare-on-a-folder", "compare-readonly"])
def test_output_folders_and_the_cache_are_checked_before_any_work(argv, named, tmp_path: Path, capsys):
    """Issue 22 (5): these gave PermissionError/FileExistsError tracebacks after the work was done.
    The inputs do not even exist: the output places are checked first."""
    (tmp_path / "file").write_text("x")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("quantbench: error: ") and named.replace("{tmp}", str(tmp_path)) in err, err
    assert "\n" not in err


def test_eval_refuses_a_baseline_that_its_table_keeps_off_the_model(tmp_path: Path, yolov5n_onnx: Path, capsys,
                                                                    monkeypatch):
    """Issue 22 (4): the variant table's `models` key kept the baseline off yolov5n-coco."""
    (tmp_path / "variants.toml").write_text(
        '[[variant]]\nname = "fp16"\nkind = "fp16"\nmodels = ["yolo11*"]\n\n[[variant]]\nname = "fp32x"\nkind = "fp32"\n')
    (tmp_path / "thresholds.toml").write_text('baseline = "fp16"\n')
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--model", str(yolov5n_onnx), "--variant", "fp32x", "--variants-file", "variants.toml",
                 "--cache-dir", str(tmp_path / "cache"), "--limit", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"quantbench: error: {tmp_path / 'thresholds.toml'} makes 'fp16' the baseline of yolov5n-coco, but variants.toml "
                   "restricts 'fp16' to yolo11* (its 'models' key); add yolov5n-coco to its models or choose another "
                   "baseline for it.")


def test_eval_names_each_skip_reason(tmp_path: Path, yolov5n_onnx: Path, val500: Path, capsys):
    """Issue 22 (2): an image re-saved at another size than instances.json declares is skipped and said."""
    import shutil

    import cv2

    data = json.loads((val500 / "instances.json").read_text())
    data["images"] = sorted(data["images"], key=lambda im: im["id"])[:2]
    ids = {im["id"] for im in data["images"]}
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
    (tmp_path / "images").mkdir()
    for im in data["images"]:
        shutil.copy(val500 / "images" / im["file_name"], tmp_path / "images")
    (tmp_path / "instances.json").write_text(json.dumps(data))
    resized = tmp_path / "images" / data["images"][1]["file_name"]
    cv2.imwrite(str(resized), cv2.resize(cv2.imread(str(resized)), (1000, 1000)))
    assert main(["eval", "--model", str(yolov5n_onnx), "--data", str(tmp_path), "--cache-dir",
                 str(tmp_path / "cache"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "over 1 images" in out
    assert f"skipped 1 images (1 size differs from the annotations), not in the mAP: {resized}" in out
