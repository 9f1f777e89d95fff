"""thresholds.toml: defaults, per-model inheritance, every refused value, and the check functions."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantbench.decision.gate import check_accuracy, check_memory, check_speedup
from quantbench.decision.thresholds import ModelThresholds, Thresholds
from quantbench.errors import ConfigError

REPO_THRESHOLDS = Path(__file__).resolve().parents[1] / "thresholds.toml"

# Measured on coco/val500 with ORT CPU and pycocotools (shared NOTES.md): yolov5n FP32 and INT8 builds.
YOLOV5N_FP32 = 0.2427
YOLOV5N_INT8_MAX = 0.2322
YOLOV5N_INT8_ENTROPY = 0.2355
YOLOV5N_INT8_ENTROPY_HEAD_EXCLUDED = 0.2388


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "thresholds.toml"
    path.write_text(text)
    return path


def test_repo_file_holds_the_users_criteria():
    t = Thresholds.load(REPO_THRESHOLDS)
    assert t.source == REPO_THRESHOLDS
    d = t.default
    assert (d.baseline, d.max_abs_drop, d.max_rel_drop, d.min_map) == ("fp16", 0.010, 0.03, None)
    assert d.max_memory_increase == 0.10 and d.min_speedup == {} and d.not_gated == ()
    assert t.for_model("yolo11n").min_speedup == {"tensorrt": 1.33}
    assert t.for_model("yolo11s").min_speedup == {"tensorrt": 1.25}
    # A model without its own table gets the top level: no speed-up target, on any backend.
    assert t.for_model("yolov5n-coco") == d
    # The per-model tables inherit everything they do not set.
    assert t.for_model("yolo11n").max_abs_drop == 0.010 and t.for_model("yolo11n").baseline == "fp16"


def test_model_table_inherits_scalars_and_merges_speedups(tmp_path: Path):
    path = _write(tmp_path, """
baseline = "fp32"
max_rel_drop = 0.05
not_gated = ["int8-all"]
[min_speedup]
tensorrt = 1.1
onnxruntime = 0.5
[model.yolo11s]
max_abs_drop = 0.02
not_gated = []
min_speedup = { tensorrt = 1.25 }
""")
    t = Thresholds.load(path)
    s = t.for_model("yolo11s")
    assert s.baseline == "fp32" and s.max_rel_drop == 0.05  # inherited
    assert s.max_abs_drop == 0.02  # overridden
    assert s.min_speedup == {"tensorrt": 1.25, "onnxruntime": 0.5}  # merged backend by backend
    assert s.not_gated == ()  # a list replaces the top-level list
    assert t.default.not_gated == ("int8-all",) and not t.default.is_gated("int8-all")


def test_empty_file_gives_the_dataclass_defaults(tmp_path: Path):
    assert Thresholds.load(_write(tmp_path, "")).default == ModelThresholds()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("max_abs_dorp = 0.01", r"unknown key 'max_abs_dorp' in the top level \(did you mean 'max_abs_drop'\?\)"),
        ("[model.yolo11n]\nbasline = 'fp16'", r"unknown key 'basline' in \[model.yolo11n\] \(did you mean 'baseline'\?\)"),
        ("[min_speedup]\ntensorrtt = 1.3", r"unknown key 'tensorrtt' in min_speedup \(did you mean 'tensorrt'\?\)"),
        ("max_abs_drop = -0.01", r"max_abs_drop = -0.01 is impossible; give a fraction between 0 and 1"),
        ("max_rel_drop = 3", r"max_rel_drop = 3 is impossible"),
        ("[model.yolo11s]\nmax_abs_drop = 1.5", r"model.yolo11s.max_abs_drop = 1.5 is impossible"),
        ("min_map = 'high'", r"min_map = 'high' must be a number"),
        ("max_abs_drop = true", r"max_abs_drop = True must be a number"),
        ("max_memory_increase = 10", r"max_memory_increase = 10 is impossible"),
        ("[min_speedup]\ntensorrt = 0", r"min_speedup.tensorrt = 0 is impossible; give a speed-up factor above 0"),
        ("[model.yolo11n.min_speedup]\ntensorrt = -1.33", r"model.yolo11n.min_speedup.tensorrt = -1.33 is impossible"),
        ("min_speedup = 1.33", r"min_speedup = 1.33 must be a table of backend = factor"),
        ("not_gated = 'int8'", r"not_gated = 'int8' must be a list of variant names"),
        ("baseline = ''", r"baseline = '' must be a variant name"),
        ("not_gated = ['fp16']", r"not_gated lists the baseline 'fp16'"),
        ("model = 3", r"'model' must be tables like \[model.yolo11n\]"),
        ("[model]\nyolo11n = 1", r"model.yolo11n must be a table"),
        ("baseline = [", r"is not valid TOML"),
        ("verdicts = 'median'", r"verdicts = 'median' must be one of 'interval', 'point'"),
        ("[model.yolo11n]\nconfidence = 95", r"model.yolo11n.confidence = 95 must be a level from 0.5 to below 1"),
        ("confidence = 1.0", r"confidence = 1.0 must be a level"),
    ],
)
def test_bad_entries_are_one_sentence_naming_file_and_key(tmp_path: Path, text: str, expected: str):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=expected) as info:
        Thresholds.load(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message and message.endswith((".", "?"))


def test_missing_file_is_named(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"thresholds file .*nope.toml does not exist"):
        Thresholds.load(tmp_path / "nope.toml")


def test_validate_variants_checks_baselines_and_not_gated(tmp_path: Path):
    t = Thresholds.load(REPO_THRESHOLDS)
    t.validate_variants(["fp32", "fp16", "int8-max"])
    with pytest.raises(ConfigError, match=r"baseline = 'fp16' is not a variant .*\(did you mean 'fp16x'\?\)"):
        t.validate_variants(["fp32", "fp16x", "int8-max"])

    per_model = Thresholds.load(_write(tmp_path, "[model.yolo11n]\nbaseline = 'fp32'\nnot_gated = ['int8-al']"))
    with pytest.raises(ConfigError, match=r"model.yolo11n.baseline = 'fp32' is not a variant"):
        per_model.validate_variants(["fp16", "int8-all"])
    with pytest.raises(ConfigError, match=r"model.yolo11n.not_gated lists 'int8-al'.*did you mean 'int8-all'"):
        per_model.validate_variants(["fp16", "fp32", "int8-all"])


# --- checks ---------------------------------------------------------------------------------


def test_accuracy_reason_states_value_threshold_and_baseline():
    t = ModelThresholds(baseline="fp16", max_rel_drop=0.10)
    reason = check_accuracy(t, "int8-max", 0.2304, 0.2427)
    assert reason == "mAP50-95 drop 1.23 points > 1.00 allowed (0.2304 vs baseline fp16 0.2427)"


def test_measured_yolov5n_int8_builds_against_the_default_budget():
    t = ModelThresholds(baseline="fp32")
    # max calibration: 1.05 points and 4.3 % -> both limits broken, both said.
    reason = check_accuracy(t, "int8-max", YOLOV5N_INT8_MAX, YOLOV5N_FP32)
    assert reason is not None
    assert reason == "mAP50-95 drop 1.05 points > 1.00 allowed and 4.3 % > 3.0 % allowed (0.2322 vs baseline fp32 0.2427)"
    # entropy: 0.72 points and 2.97 %: within both.
    assert check_accuracy(t, "int8-entropy", YOLOV5N_INT8_ENTROPY, YOLOV5N_FP32) is None
    assert check_accuracy(t, "int8-entropy-head", YOLOV5N_INT8_ENTROPY_HEAD_EXCLUDED, YOLOV5N_FP32) is None


def test_both_drops_must_hold():
    t = ModelThresholds()
    # A weak model: 0.6 points is within the absolute limit but is 6 % of its mAP.
    weak = check_accuracy(t, "int8", 0.094, 0.100)
    assert weak is not None and "6.0 % > 3.0 % allowed" in weak and "points" not in weak
    # A strong model: 2.4 % is within the relative limit but 1.2 points is not.
    strong = check_accuracy(t, "int8", 0.488, 0.500)
    assert strong is not None and "1.20 points > 1.00 allowed" in strong and "%" not in strong


def test_drop_equal_to_the_limit_passes_despite_float_noise():
    t = ModelThresholds(max_rel_drop=1.0)
    assert 0.2427 - 0.2327 > 0.010  # the float subtraction overshoots the limit by 1e-17
    assert check_accuracy(t, "int8", 0.2327, 0.2427) is None
    assert check_accuracy(t, "int8", 0.2326, 0.2427) is not None


def test_improvement_passes_and_nan_fails():
    t = ModelThresholds()
    assert check_accuracy(t, "int8", 0.2500, 0.2427) is None
    assert "not a number" in check_accuracy(t, "int8", float("nan"), 0.2427)
    assert "baseline fp16 is nan" in check_accuracy(t, "int8", 0.24, float("nan"))


def test_baseline_is_gated_only_by_its_floor():
    assert check_accuracy(ModelThresholds(), "fp16", 0.01, 0.5) is None  # no floor: any mAP
    floored = ModelThresholds(min_map=0.30)
    assert check_accuracy(floored, "fp16", 0.2427, 0.2427) == "baseline fp16 mAP50-95 0.2427 < 0.3000 floor (min_map)"
    assert check_accuracy(floored, "fp16", 0.30, 0.30) is None


def test_relative_drop_is_skipped_when_the_baseline_scores_zero():
    # An untrained (random-weight) YOLO11 scores 0: only the absolute drop can be computed.
    assert check_accuracy(ModelThresholds(), "int8", 0.0, 0.0) is None


def test_speedup_is_checked_only_where_a_target_is_set():
    t = ModelThresholds(min_speedup={"tensorrt": 1.33})
    assert check_speedup(t, "onnxruntime", 86.0, 31.0) is None  # no CPU target
    assert check_speedup(t, "tensorrt", 1.50, 2.00) is None  # 1.33x
    assert check_speedup(t, "tensorrt", 2.00 / 1.33, 2.00) is None  # exactly the target
    assert (
        check_speedup(t, "tensorrt", 1.65, 2.00)
        == "speed-up 1.21x < 1.33x required on tensorrt (1.65 ms vs baseline fp16 2.00 ms)"
    )
    assert "not positive" in check_speedup(t, "tensorrt", 0.0, 2.00)


def test_memory_increase_is_checked_where_measured():
    t = ModelThresholds(max_memory_increase=0.10)
    mib = 1024 * 1024
    assert check_memory(t, None, 100 * mib) is None  # ONNX Runtime on the CPU: not measured
    assert check_memory(ModelThresholds(), 500 * mib, 100 * mib) is None  # no limit set
    assert check_memory(t, 110 * mib, 100 * mib) is None
    assert (
        check_memory(t, 112 * mib, 100 * mib)
        == "GPU memory +12.0 % > +10.0 % allowed (112.0 MiB vs baseline fp16 100.0 MiB)"
    )


def test_a_model_table_spelled_like_a_model_of_the_run_is_an_error(tmp_path: Path):
    path = tmp_path / "thresholds.toml"
    path.write_text("[model.yolov5n_coco]\nmax_abs_drop = 0.0001\n")  # underscore: would be silently unused
    with pytest.raises(ConfigError, match=r"\[model.yolov5n_coco\] matches no model of this run but is spelled like "
                                          r"model 'yolov5n-coco', so it would be ignored; rename it to "
                                          r"\[model.yolov5n-coco\]") as err:
        Thresholds.load(path).check_models(["yolov5n-coco"])
    assert str(path) in str(err.value)
    assert Thresholds.load(path).check_models(["YOLOv5n.coco", "yolov5n_coco"]) == []  # its own model: fine


def test_model_tables_for_other_runs_are_a_warning_naming_the_models_of_the_run(tmp_path: Path):
    path = tmp_path / "thresholds.toml"
    path.write_text("[model.yolo11n]\nmin_speedup = { tensorrt = 1.33 }\n[model.yolo11s]\nmax_abs_drop = 0.02\n")
    thresholds = Thresholds.load(path)
    assert thresholds.check_models(["yolo11n"]) == [
        f"{path}: [model.yolo11s] applies to no model of this run (yolo11n); its thresholds are ignored here "
        "(a table for other runs is fine; check the name if not)."]
    assert len(thresholds.check_models(["yolov5n-coco"])) == 2
    assert thresholds.check_models(["yolo11n", "yolo11s"]) == []


def test_verdict_mode_and_confidence_are_inherited_and_overridden(tmp_path: Path):
    t = Thresholds.load(_write(tmp_path, "confidence = 0.9\n[model.m]\nverdicts = 'point'\n"))
    assert (t.for_model("other").verdicts, t.for_model("other").confidence) == ("interval", 0.9)
    assert (t.for_model("m").verdicts, t.for_model("m").confidence) == ("point", 0.9)
    assert Thresholds.load(REPO_THRESHOLDS).for_model("yolo11n-coco").verdicts == "interval"


def test_thousands_of_unmatched_model_tables_are_one_warning(tmp_path: Path):
    """Issue 22: 200,000 tables for other models printed 200,002 warning lines."""
    path = tmp_path / "thresholds.toml"
    path.write_text("".join(f"[model.other{i}]\nmax_abs_drop = 0.02\n" for i in range(2000)))
    warnings = Thresholds.load(path).check_models(["yolo11n-coco", "yolov5n-coco"])
    assert warnings == [
        f"{path}: 2000 [model.*] tables apply to no model of this run (yolo11n-coco, yolov5n-coco), e.g. "
        "[model.other0], [model.other1], [model.other2], [model.other3], [model.other4]; their thresholds are "
        "ignored here (tables for other runs are fine; check the names if not)."]
