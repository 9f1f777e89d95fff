"""Selection: joining, gating, ranking and the winner, on hand-made and on real pytest-benchmark records."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path

import pytest

from quantbench.decision.results_store import ResultsStore
from quantbench.decision.selection import Selection, select
from quantbench.decision.thresholds import Thresholds
from quantbench.errors import ConfigError
from quantbench.outputs.benchmark_json import records_from_benchmark_json
from quantbench.records import (
    CocoMetrics,
    EvalResult,
    EvalTiming,
    LatencyResult,
    LatencyStats,
    RecordError,
    to_dict,
)

pytest_plugins = ["pytester"]

REPO_THRESHOLDS = Path(__file__).resolve().parents[1] / "thresholds.toml"
MIB = 1024 * 1024


def _eval(model: str, variant: str, map50_95: float, *, backend: str = "onnxruntime", untrained: bool = False,
          dataset: str = "val500", num_images: int = 500) -> EvalResult:
    return EvalResult(
        model=model, variant=variant, backend=backend, device="CPU", dataset=dataset, num_images=num_images,
        skipped_images=(), untrained=untrained,
        metrics=CocoMetrics(map50_95, map50_95 * 1.65, map50_95, 0.1, 0.2, 0.3, 0.35),
        timing=EvalTiming(inference_s=10.0, total_s=12.0, images_per_s=num_images / 12.0),
    )


def _lat(model: str, variant: str, median_ms: float, *, backend: str = "onnxruntime", batch: int = 1,
         peak_memory_bytes: int | None = None) -> LatencyResult:
    return LatencyResult(
        model=model, variant=variant, backend=backend, device="test", batch_size=batch,
        host=LatencyStats(median_ms, median_ms, median_ms * 0.95, median_ms * 1.2, median_ms * 0.02, 20),
        images_per_s=batch * 1000.0 / median_ms, peak_memory_bytes=peak_memory_bytes,
    )


def _thresholds(tmp_path: Path, text: str) -> Thresholds:
    path = tmp_path / "thresholds.toml"
    path.write_text(textwrap.dedent(text))
    return Thresholds.load(path)


def _one(selections: list[Selection], model: str, backend: str) -> Selection:
    found = [s for s in selections if (s.model, s.backend) == (model, backend)]
    assert len(found) == 1, [(s.model, s.backend) for s in selections]
    return found[0]


def test_yolov5n_on_cpu_with_measured_numbers(tmp_path: Path):
    # mAP and ORT CPU latencies measured in this workplace (shared NOTES.md): on the CPU EP the
    # Q/DQ graphs are slower than FP32, so FP32 itself is the fastest build that passes.
    t = _thresholds(tmp_path, 'baseline = "fp32"')
    evals = [_eval("yolov5n-coco", "fp32", 0.2427), _eval("yolov5n-coco", "int8-max", 0.2322),
             _eval("yolov5n-coco", "int8-entropy", 0.2355)]
    lats = [_lat("yolov5n-coco", "fp32", 31.0), _lat("yolov5n-coco", "int8-max", 56.0),
            _lat("yolov5n-coco", "int8-entropy", 86.0)]
    (s,) = select(evals, lats, t, variant_options={("yolov5n-coco", "int8-entropy"): {"calibration_method": "entropy"}})
    assert (s.model, s.backend, s.baseline, s.reference_batch) == ("yolov5n-coco", "onnxruntime", "fp32", 1)
    assert [o.variant for o in s.outcomes] == ["fp32", "int8-entropy", "int8-max"]
    assert [o.passed for o in s.outcomes] == [True, True, False]
    assert s.winner == "fp32" and s.winning_outcome.speedup == 1.0

    entropy = s.outcome("int8-entropy")
    assert entropy.drop_abs == pytest.approx(0.0072) and entropy.drop_rel == pytest.approx(0.0072 / 0.2427)
    assert entropy.speedup == pytest.approx(31.0 / 86.0) and entropy.images_per_s == pytest.approx(1000 / 86)
    assert entropy.options == {"calibration_method": "entropy"} and entropy.accuracy_backend == "onnxruntime"
    (reason,) = s.outcome("int8-max").reasons
    assert reason == "mAP50-95 drop 1.05 points > 1.00 allowed and 4.3 % > 3.0 % allowed (0.2322 vs baseline fp32 0.2427)"
    assert s.criteria["baseline"] == "fp32" and s.criteria["max_abs_drop"] == 0.010


def test_a_runner_up_within_measurement_noise_is_named_beside_the_winner(tmp_path: Path):
    from quantbench.decision.gate import median_standard_error
    from quantbench.outputs.report import winner_line

    # Medians, standard deviations and rounds of one `pytest bench` run on this 2-core CPU (this
    # session): fp32 and fp16 are the same speed on ONNX Runtime's CPU provider, a coin toss.
    def measured(variant: str, median: float, stddev: float) -> LatencyResult:
        return LatencyResult(model="yolov5n-coco", variant=variant, backend="onnxruntime", device="CPU", batch_size=1,
                             host=LatencyStats(median, median, median * 0.9, median * 1.3, stddev, 50),
                             images_per_s=1000.0 / median)

    evals = [_eval("yolov5n-coco", v, m) for v, m in (("fp32", 0.2438), ("fp16", 0.2436), ("int8", 0.2436))]
    lats = [measured("fp32", 39.13, 2.55), measured("fp16", 39.74, 2.51), measured("int8", 56.82, 4.14)]
    (s,) = select(evals, lats, _thresholds(tmp_path, 'baseline = "fp16"'))
    assert s.winner == "fp32" and s.within_noise == ("fp16",)  # 0.61 ms apart, 2 x 0.63 ms allowed
    assert s.winning_outcome.latency_noise_ms == pytest.approx(median_standard_error(2.55, 50)) == pytest.approx(0.452, abs=1e-3)
    line = winner_line(s)
    assert line.endswith("within measurement noise of it: fp16 39.74 ms (+-0.45 ms standard error), "
                         "a re-run may rank them first"), line
    # Clearly apart (or noise-free samples): no note.
    lats = [measured("fp32", 30.0, 2.55), measured("fp16", 39.74, 2.51), measured("int8", 56.82, 4.14)]
    (s,) = select(evals, lats, _thresholds(tmp_path, 'baseline = "fp16"'))
    assert s.winner == "fp32" and s.within_noise == () and "noise" not in winner_line(s)


def test_timings_disturbed_by_other_load_are_named_with_a_warning(tmp_path: Path):
    from quantbench.outputs.report import format_selection_table

    # One run of the default table on this shared VM (this session): fp16's rounds fell in two
    # groups, ~37 ms and ~63 ms, as the machine's speed switched; int8-head-fp16 "won" on that.
    def measured(variant: str, median: float, minimum: float) -> LatencyResult:
        return LatencyResult(model="yolov5n-coco", variant=variant, backend="onnxruntime", device="CPU", batch_size=1,
                             host=LatencyStats(median, median, minimum, median * 1.5, 5.0, 200),
                             images_per_s=1000.0 / median)

    evals = [_eval("yolov5n-coco", v, m) for v, m in (("fp16", 0.2436), ("int8-head-fp16", 0.2371))]
    lats = [measured("fp16", 63.73, 37.29), measured("int8-head-fp16", 60.97, 56.18)]
    (s,) = select(evals, lats, _thresholds(tmp_path, 'baseline = "fp16"'))
    assert s.winner == "int8-head-fp16" and s.disturbed == ("fp16",)
    assert format_selection_table(s).endswith(
        "timing disturbed: fp16 median 63.73 ms vs min 37.29 ms (+71 %): other load on the machine? "
        "The ranking may not repeat; re-run on an idle machine.")
    lats = [measured("fp16", 39.13, 36.40), measured("int8-head-fp16", 60.97, 56.18)]  # +7 %, +9 %: undisturbed
    (s,) = select(evals, lats, _thresholds(tmp_path, 'baseline = "fp16"'))
    assert s.disturbed == () and "disturbed" not in format_selection_table(s)


def test_tensorrt_latency_joined_with_onnxruntime_accuracy_and_per_model_speedups():
    t = Thresholds.load(REPO_THRESHOLDS)  # yolo11n needs 1.33x, yolo11s 1.25x on tensorrt
    evals = [_eval(m, v, a) for m in ("yolo11n", "yolo11s")
             for v, a in (("fp16", 0.3940), ("int8-head-fp16", 0.3890), ("int8-all", 0.3700))]
    lats = [
        _lat("yolo11n", "fp16", 1.00, backend="tensorrt"),
        _lat("yolo11n", "int8-head-fp16", 0.78, backend="tensorrt"),  # 1.28x: < 1.33x
        _lat("yolo11n", "int8-all", 0.70, backend="tensorrt"),
        _lat("yolo11s", "fp16", 2.00, backend="tensorrt"),
        _lat("yolo11s", "int8-head-fp16", 1.56, backend="tensorrt"),  # 1.28x: >= 1.25x
        _lat("yolo11s", "int8-all", 1.40, backend="tensorrt"),
    ]
    selections = select(evals, lats, t)
    # Groups come from where latency was measured; the ORT accuracy is borrowed, not a group.
    assert [(s.model, s.backend) for s in selections] == [("yolo11n", "tensorrt"), ("yolo11s", "tensorrt")]
    n, s = selections
    assert all(o.accuracy_backend == "onnxruntime" for o in n.outcomes + s.outcomes)
    # A variant timed on TensorRT whose accuracy is missing is reported against the borrowed source.
    (extra,) = select(evals, lats + [_lat("yolo11n", "int8-new", 0.5, backend="tensorrt")], t)[:1]
    assert extra.outcome("int8-new").reasons == ("no accuracy result for int8-new on onnxruntime",)

    assert n.outcome("int8-head-fp16").reasons == (
        "speed-up 1.28x < 1.33x required on tensorrt (0.78 ms vs baseline fp16 1.00 ms)",
    )
    assert "mAP50-95 drop 2.40 points" in n.outcome("int8-all").reasons[0]
    assert n.winner == "fp16"  # no INT8 build meets both targets: the baseline stays the answer
    assert s.winner == "int8-head-fp16" and s.outcome("int8-head-fp16").speedup == pytest.approx(2.00 / 1.56)
    assert [o.variant for o in s.outcomes] == ["int8-head-fp16", "fp16", "int8-all"]


def test_same_backend_accuracy_is_preferred_over_borrowed():
    t = Thresholds.load(REPO_THRESHOLDS)
    evals = [_eval("yolo11s", "fp16", 0.40), _eval("yolo11s", "int8", 0.30),
             _eval("yolo11s", "fp16", 0.40, backend="tensorrt"), _eval("yolo11s", "int8", 0.398, backend="tensorrt")]
    lats = [_lat("yolo11s", "fp16", 2.0, backend="tensorrt"), _lat("yolo11s", "int8", 1.5, backend="tensorrt")]
    (s,) = select(evals, lats, t)
    assert s.winner == "int8" and s.outcome("int8").accuracy_backend == "tensorrt"


def test_not_gated_variants_are_checked_listed_but_never_win(tmp_path: Path):
    t = _thresholds(tmp_path, """
        baseline = "fp16"
        not_gated = ["int8-all"]
    """)
    evals = [_eval("yolo11n", v, a) for v, a in (("fp16", 0.39), ("int8-all", 0.389), ("int8-exp", 0.389),
                                                  ("int8-head", 0.388))]
    lats = [_lat("yolo11n", "fp16", 30.0), _lat("yolo11n", "int8-all", 10.0), _lat("yolo11n", "int8-exp", 11.0),
            _lat("yolo11n", "int8-head", 12.0)]
    # `gated = false` in the variants table counts as well.
    (s,) = select(evals, lats, t, variant_options={("yolo11n", "int8-exp"): {"gated": False}})
    assert [o.variant for o in s.outcomes] == ["int8-all", "int8-exp", "int8-head", "fp16"]
    assert all(o.passed for o in s.outcomes)
    assert [o.gated for o in s.outcomes] == [False, False, True, True]
    assert s.winner == "int8-head"


def test_missing_records_and_failed_builds_are_failures_with_reasons():
    t = Thresholds.load(REPO_THRESHOLDS)
    evals = [_eval("yolo11n", "fp16", 0.39), _eval("yolo11n", "int8-b8only", 0.389),
             _eval("yolo11n", "int8-untimed", 0.389)]
    lats = [_lat("yolo11n", "fp16", 30.0), _lat("yolo11n", "int8-noacc", 20.0),
            _lat("yolo11n", "int8-b8only", 80.0, batch=8)]
    failures = {"int8-broken": "ModelOpt failed: Concat has no inputs"}
    (s,) = select(evals, lats, t, failures=failures)
    assert s.outcome("int8-noacc").reasons == ("no accuracy result for int8-noacc on onnxruntime",)
    assert s.outcome("int8-b8only").reasons == ("no latency for int8-b8only on onnxruntime at batch 1 (measured at batch 8)",)
    assert s.outcome("int8-untimed").reasons == ("no latency for int8-untimed on onnxruntime at batch 1",)
    broken = s.outcome("int8-broken")
    # The failed build explains its missing records: no "no accuracy" / "no latency" noise.
    assert broken.reasons == ("build failed: ModelOpt failed: Concat has no inputs",)
    assert broken.map50_95 is None and broken.latency_ms is None and not broken.passed
    # A failure keyed by (model, variant) for a model with no records still shows up, on its own.
    selections = select(evals, lats, t, failures=failures | {("yolo11s", "int8-other"): "export failed"})
    other = _one(selections, "yolo11s", "none").outcome("int8-other")
    assert other.reasons[0] == "build failed: export failed"
    # Ranking: the only passing variant first, then failures by latency, unmeasured last.
    assert [o.variant for o in s.outcomes] == ["fp16", "int8-noacc", "int8-b8only", "int8-broken", "int8-untimed"]
    assert s.winner == "fp16"


def test_reference_batch_selects_the_matching_latencies():
    t = Thresholds.load(REPO_THRESHOLDS)
    evals = [_eval("yolo11s", "fp16", 0.47), _eval("yolo11s", "int8", 0.468)]
    lats = [_lat("yolo11s", "fp16", 2.0, backend="tensorrt"), _lat("yolo11s", "int8", 1.9, backend="tensorrt"),
            _lat("yolo11s", "fp16", 10.0, backend="tensorrt", batch=8),
            _lat("yolo11s", "int8", 7.0, backend="tensorrt", batch=8)]
    (b1,) = select(evals, lats, t)
    (b8,) = select(evals, lats, t, reference_batch=8)
    assert b1.winner == "fp16" and "speed-up 1.05x < 1.25x" in b1.outcome("int8").reasons[0]
    assert b8.winner == "int8" and b8.reference_batch == 8 and b8.outcome("int8").images_per_s == pytest.approx(8000 / 7)


def test_missing_baseline_fails_every_other_variant():
    t = Thresholds.load(REPO_THRESHOLDS)
    (s,) = select([_eval("yolo11n", "int8", 0.39)], [_lat("yolo11n", "int8", 10.0)], t)
    assert s.outcome("int8").reasons == (
        "baseline fp16 has no accuracy result on onnxruntime, so no drop can be computed",
        "baseline fp16 has no latency on onnxruntime at batch 1",
    )
    assert s.winner is None


def test_baseline_below_its_floor_fails_everything(tmp_path: Path):
    t = _thresholds(tmp_path, "min_map = 0.30")
    evals = [_eval("yolov5n-coco", "fp16", 0.2427), _eval("yolov5n-coco", "int8", 0.2420)]
    lats = [_lat("yolov5n-coco", "fp16", 31.0), _lat("yolov5n-coco", "int8", 20.0)]
    (s,) = select(evals, lats, t)
    assert s.outcome("fp16").reasons == ("baseline fp16 mAP50-95 0.2427 < 0.3000 floor (min_map)",)
    assert s.outcome("int8").reasons == ("baseline fp16 fails its mAP floor, so no drop is trusted",)
    assert s.winner is None


def test_accuracy_on_another_dataset_is_not_compared():
    t = Thresholds.load(REPO_THRESHOLDS)
    evals = [_eval("yolov5n-coco", "fp16", 0.2427), _eval("yolov5n-coco", "int8", 0.26, num_images=100)]
    lats = [_lat("yolov5n-coco", "fp16", 31.0), _lat("yolov5n-coco", "int8", 20.0)]
    (s,) = select(evals, lats, t)
    assert s.outcome("int8").reasons == (
        "accuracy measured on val500 (100 images) but the baseline on val500 (500 images): not comparable",
    )


def test_untrained_models_never_pass_the_accuracy_gate():
    # yolo11n/yolo11s built from Ultralytics YAMLs have random weights: a "zero drop" means nothing.
    t = Thresholds.load(REPO_THRESHOLDS)
    evals = [_eval("yolo11n", "fp16", 0.0, untrained=True), _eval("yolo11n", "int8", 0.0, untrained=True)]
    lats = [_lat("yolo11n", "fp16", 30.0), _lat("yolo11n", "int8", 20.0)]
    (s,) = select(evals, lats, t)
    for o in s.outcomes:
        assert o.untrained and not o.passed
        assert "untrained model (random weights): its mAP cannot gate accuracy" in o.reasons
    assert s.outcome("int8").drop_rel is None  # baseline mAP 0: no relative drop
    assert s.winner is None


def test_memory_growth_beyond_the_limit_fails():
    t = Thresholds.load(REPO_THRESHOLDS)  # max_memory_increase = 0.10
    evals = [_eval("yolo11n", v, 0.39) for v in ("fp16", "int8-a", "int8-b")]
    lats = [_lat("yolo11n", "fp16", 1.0, backend="tensorrt", peak_memory_bytes=100 * MIB),
            _lat("yolo11n", "int8-a", 0.70, backend="tensorrt", peak_memory_bytes=115 * MIB),
            _lat("yolo11n", "int8-b", 0.74, backend="tensorrt", peak_memory_bytes=90 * MIB)]
    (s,) = select(evals, lats, t)
    a = s.outcome("int8-a")
    assert a.memory_increase == pytest.approx(0.15) and a.peak_memory_bytes == 115 * MIB
    assert a.reasons == ("GPU memory +15.0 % > +10.0 % allowed (115.0 MiB vs baseline fp16 100.0 MiB)",)
    assert s.winner == "int8-b"


def test_eval_only_models_still_get_a_selection_and_last_duplicate_wins():
    t = Thresholds.load(REPO_THRESHOLDS)
    evals = [_eval("yolo11s", "fp16", 0.47), _eval("yolo11s", "int8", 0.40), _eval("yolo11s", "int8", 0.468)]
    (s,) = select(evals, [], t)
    assert (s.model, s.backend) == ("yolo11s", "onnxruntime")
    assert s.outcome("int8").map50_95 == 0.468
    assert s.outcome("int8").reasons == ("no latency for int8 on onnxruntime at batch 1",)
    assert select([], [], t) == []


# --- pytest-benchmark JSON ------------------------------------------------------------------


def _bench(name: str, latency: LatencyResult | None, ev: EvalResult | None, options: dict | None) -> dict:
    qb = {"latency": to_dict(latency) if latency else None, "eval": to_dict(ev) if ev else None}
    if options is not None:
        qb["variant_options"] = options
    ms = latency.host.median_ms if latency else 1.0
    return {
        "group": None, "name": name, "fullname": f"bench/test_latency.py::{name}", "params": None, "param": None,
        "extra_info": {"quantbench": qb},
        "options": {"disable_gc": False, "timer": "perf_counter", "min_rounds": 5, "max_time": 1.0,
                    "min_time": 5e-06, "warmup": False},
        "stats": {"min": ms / 1e3, "max": ms / 1e3, "mean": ms / 1e3, "stddev": 0.0, "rounds": 5,
                  "median": ms / 1e3, "iqr": 0.0, "q1": ms / 1e3, "q3": ms / 1e3, "iqr_outliers": 0,
                  "stddev_outliers": 0, "outliers": "0;0", "ld15iqr": ms / 1e3, "hd15iqr": ms / 1e3,
                  "ops": 1e3 / ms, "total": 5 * ms / 1e3, "iterations": 1},
    }


def _benchmark_json(path: Path, benchmarks: list[dict]) -> Path:
    path.write_text(json.dumps({"machine_info": {"node": "test"}, "commit_info": {}, "benchmarks": benchmarks,
                                "datetime": "2026-11-23T00:00:00+00:00", "version": "5.3.1"}))
    return path


def test_records_from_hand_built_benchmark_json(tmp_path: Path):
    fp16_eval = _eval("yolo11n", "fp16", 0.39)
    first = _benchmark_json(tmp_path / "a.json", [
        _bench("test_latency[yolo11n-fp16-b1]", _lat("yolo11n", "fp16", 30.0), fp16_eval, {"kind": "fp16"}),
        _bench("test_latency[yolo11n-fp16-b8]", _lat("yolo11n", "fp16", 200.0, batch=8), fp16_eval, {"kind": "fp16"}),
        _bench("test_latency[yolo11n-int8-b1]", _lat("yolo11n", "int8", 40.0), _eval("yolo11n", "int8", 0.30),
               {"kind": "int8", "calibration_method": "max"}),
        {"name": "test_unrelated", "extra_info": {}, "stats": {}},  # not a quantbench benchmark: skipped
    ])
    second = _benchmark_json(tmp_path / "b.json", [
        _bench("test_latency[yolo11n-int8-b1]", _lat("yolo11n", "int8", 25.0), _eval("yolo11n", "int8", 0.388),
               {"kind": "int8", "calibration_method": "entropy"}),
    ])
    evals, lats, options = records_from_benchmark_json([first, second])
    assert sorted((e.variant, e.metrics.map50_95) for e in evals) == [("fp16", 0.39), ("int8", 0.388)]
    assert sorted((r.variant, r.batch_size, r.host.median_ms) for r in lats) == [
        ("fp16", 1, 30.0), ("fp16", 8, 200.0), ("int8", 1, 25.0)]
    assert options == {("yolo11n", "fp16"): {"kind": "fp16"},
                       ("yolo11n", "int8"): {"kind": "int8", "calibration_method": "entropy"}}
    (s,) = select(evals, lats, Thresholds.load(REPO_THRESHOLDS), variant_options=options)
    assert s.winner == "int8" and s.outcome("int8").options["calibration_method"] == "entropy"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, r"benchmark JSON .*missing.json does not exist"),
        ("{not json", r"is not valid JSON"),
        ('{"results": []}', r"is not a pytest-benchmark JSON \(no 'benchmarks' list\)"),
        ('{"benchmarks": [{"name": "t", "extra_info": {}}]}', r"has no quantbench records"),
        ('{"benchmarks": [{"name": "t", "extra_info": {"quantbench": [1]}}]}', r"quantbench is a list, not an object"),
        ('{"benchmarks": [{"name": "t", "extra_info": {"quantbench": {"latency": null, "eval": null,'
         ' "variant_options": 3}}}]}', r"variant_options is a int, not an object"),
    ],
)
def test_unusable_benchmark_json_is_one_sentence(tmp_path: Path, content: str | None, expected: str):
    path = tmp_path / "missing.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=expected) as info:
        records_from_benchmark_json([path])
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_foreign_record_schema_is_rejected_with_its_place(tmp_path: Path):
    latency = to_dict(_lat("yolo11n", "fp16", 30.0))
    latency["schema"] = 99
    bench = _bench("test_latency[x]", None, None, None)
    bench["extra_info"]["quantbench"]["latency"] = latency
    path = _benchmark_json(tmp_path / "old.json", [bench])
    with pytest.raises(RecordError,
                       match=r"benchmarks\[0\] \(test_latency\[x\]\) extra_info.quantbench.latency: schema version 99"):
        records_from_benchmark_json([path])
    with pytest.raises(ConfigError, match="no benchmark JSON files given"):
        records_from_benchmark_json([])


def _with_params(bench: dict, source: str, variant: str, batch: int) -> dict:
    """The params pytest-benchmark records for a bench-suite benchmark (`fixtures/pipeline.py`'s parameters)."""
    return {**bench, "params": {"qb_model_source": source, "qb_variant_name": variant, "qb_batch_size": batch}}


def test_a_benchmark_whose_params_disagree_with_its_records_is_refused(tmp_path: Path):
    lat, ev = _lat("yolo11n", "int8", 30.0), _eval("yolo11n", "int8", 0.38)
    good = _with_params(_bench("test_latency[yolo11n-int8-b1]", lat, ev, {}), "/models/yolo11n.onnx", "int8", 1)
    path = _benchmark_json(tmp_path / "good.json", [good])
    assert [r.variant for r in records_from_benchmark_json([path])[1]] == ["int8"]
    cases = {
        "variant": (_with_params(good, "/models/yolo11n.onnx", "fp16", 1),
                    r"params say qb_variant_name='fp16' but its latency record is of variant 'int8'"),
        "batch": (_with_params(good, "/models/yolo11n.onnx", "int8", 8),
                  r"params say qb_batch_size=8 but its latency record is of batch_size 1"),
        "model": (_with_params(good, "yolov5n-coco.onnx", "int8", 1),
                  r"params say qb_model_source='yolov5n-coco.onnx' but its latency record is of model 'yolo11n'"),
        "eval of another variant": (_bench("t", lat, _eval("yolo11n", "fp16", 0.39), {}),
                                    r"its latency record is of variant 'int8' but its eval record of 'fp16'"),
    }
    for name, (bench, sentence) in cases.items():
        bad = _benchmark_json(tmp_path / f"{name}.json", [bench])
        with pytest.raises(ConfigError, match=sentence) as raised:
            records_from_benchmark_json([bad])
        assert str(bad) in str(raised.value) and "re-run the bench" in str(raised.value), name


def test_latencies_of_one_model_from_different_devices_are_not_joined(tmp_path: Path):
    h100 = dataclasses.replace(_lat("yolo11n", "int8", 1.0, backend="tensorrt"), device="NVIDIA H100")
    h200 = dataclasses.replace(h100, device="NVIDIA H200")
    first = _benchmark_json(tmp_path / "h100.json", [_bench("test_latency[yolo11n-int8-b1]", h100, None, None)])
    second = _benchmark_json(tmp_path / "h200.json", [_bench("test_latency[yolo11n-int8-b1]", h200, None, None)])
    with pytest.raises(ConfigError, match=r"yolo11n on tensorrt was timed on NVIDIA H100 in .*h100\.json.* but on "
                                          r"NVIDIA H200 in .*h200\.json.*: pass the runs of one device\.$"):
        records_from_benchmark_json([first, second])
    # Another variant of the same model on the other device would be joined into one speed-up: refused too.
    fp16 = dataclasses.replace(h200, variant="fp16")
    third = _benchmark_json(tmp_path / "fp16.json", [_bench("test_latency[yolo11n-fp16-b1]", fp16, None, None)])
    with pytest.raises(ConfigError, match=r"timed on NVIDIA H100 in .*h100\.json.* but on NVIDIA H200 in .*fp16\.json"):
        records_from_benchmark_json([first, third])
    # Another model on the other device is no join: both are read.
    other = dataclasses.replace(h200, model="yolov5n-coco")
    fourth = _benchmark_json(tmp_path / "other.json", [_bench("test_latency[yolov5n-coco-int8-b1]", other, None, None)])
    assert len(records_from_benchmark_json([first, fourth])[1]) == 2


def test_variant_options_are_kept_per_model(tmp_path: Path, cache):
    """Two models with a variant of one name built differently: neither overwrites the other's options."""
    t = _thresholds(tmp_path, 'baseline = "fp16"')
    benches, options_of = [], {"yolo11n": {"kind": "int8", "calibration_method": "max"},
                               "yolov5n-coco": {"kind": "int8", "calibration_method": "entropy"}}
    ledger = ResultsStore(cache).ledger("two-models")
    for model, opts in options_of.items():
        for variant, ms, acc in (("fp16", 30.0, 0.39), ("int8", 20.0, 0.389)):
            ev, variant_opts = _eval(model, variant, acc), opts if variant == "int8" else {"kind": "fp16"}
            benches.append(_bench(f"test_latency[{model}-{variant}-b1]", _lat(model, variant, ms), ev, variant_opts))
            ledger.add_eval(ev, computed=True, variant_options=variant_opts, process="serial")
    evals, lats, options = records_from_benchmark_json([_benchmark_json(tmp_path / "two.json", benches)])
    assert options["yolo11n", "int8"] == options_of["yolo11n"]
    assert options["yolov5n-coco", "int8"] == options_of["yolov5n-coco"]
    assert ledger.read().variant_options == options
    by_model = {s.model: s for s in select(evals, lats, t, variant_options=options)}
    for model, opts in options_of.items():
        assert by_model[model].winner == "int8"
        assert by_model[model].outcome("int8").options["calibration_method"] == opts["calibration_method"]


_REAL_BENCH = '''
import os
from pathlib import Path

import numpy as np
import pytest

from quantbench.backends.base import BuildOptions
from quantbench.backends.ort import OrtBackend
from quantbench.records import LatencyResult, LatencyStats, to_dict

ONNX = Path(os.environ["QB_TEST_ONNX"])


@pytest.mark.parametrize("threads", [1, 2], ids=["fp32-t1", "fp32-t2"])
def test_latency(benchmark, threads):
    backend = OrtBackend(use_cuda=False)
    engine = backend.build(ONNX, BuildOptions(threads=threads), cache=None)
    batch = np.random.default_rng(0).random((1, 3, 320, 320), dtype=np.float32)
    with backend.open(engine) as runner:
        benchmark.pedantic(runner.infer, args=(batch,), rounds=3, warmup_rounds=1)
        device = runner.info().device
    st = benchmark.stats.stats
    latency = LatencyResult(
        model="yolo11n", variant=f"fp32-t{threads}", backend="onnxruntime", device=device, batch_size=1,
        host=LatencyStats(st.median * 1e3, st.mean * 1e3, st.min * 1e3, st.max * 1e3, st.stddev * 1e3, st.rounds),
        images_per_s=1.0 / st.median,
    )
    benchmark.extra_info["quantbench"] = {"latency": to_dict(latency), "eval": None,
                                         "variant_options": {"kind": "fp32", "threads": threads}}
'''


@pytest.mark.slow
def test_records_from_a_real_pytest_benchmark_run_on_yolo11n(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, yolo11n_onnx: Path
):
    # pytest-benchmark switches itself off inside an xdist worker: the inner run must not look like one.
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.setenv("QB_TEST_ONNX", str(yolo11n_onnx))
    pytester.makepyfile(test_bench=_REAL_BENCH)
    out = pytester.path / "bench.json"
    result = pytester.runpytest_subprocess("-p", "no:xdist", "-p", "no:cacheprovider", f"--benchmark-json={out}")
    result.assert_outcomes(passed=2)

    raw = json.loads(out.read_text())
    medians = {b["param"]: b["stats"]["median"] * 1e3 for b in raw["benchmarks"]}
    evals, lats, options = records_from_benchmark_json([out])
    assert evals == [] and options == {("yolo11n", "fp32-t1"): {"kind": "fp32", "threads": 1},
                                       ("yolo11n", "fp32-t2"): {"kind": "fp32", "threads": 2}}
    assert {r.variant: r.host.median_ms for r in lats} == medians

    t = Thresholds.from_mapping({"baseline": "fp32-t1"})
    (s,) = select(evals, lats, t, variant_options=options)
    two = s.outcome("fp32-t2")
    assert two.speedup == pytest.approx(medians["fp32-t1"] / medians["fp32-t2"])
    assert two.latency_ms == pytest.approx(medians["fp32-t2"]) and two.options["threads"] == 2
    # No accuracy was measured in this run: nothing may pass, and each outcome says why.
    assert s.winner is None
    assert all(f"no accuracy result for {o.variant} on onnxruntime" in o.reasons for o in s.outcomes)
