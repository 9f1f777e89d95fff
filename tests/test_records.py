"""Records: one JSON shape, round trip, foreign versions and unknown keys rejected."""

from __future__ import annotations

import json
import re

import pytest

from quantbench.records import (
    SCHEMA_VERSION,
    CocoMetrics,
    EvalResult,
    EvalTiming,
    LatencyResult,
    LatencyStats,
    RecordError,
    from_dict,
    to_dict,
)


def _eval() -> EvalResult:
    return EvalResult(
        model="yolov5n-coco",
        variant="int8-max",
        backend="onnxruntime",
        device="CPU",
        dataset="val500",
        num_images=100,
        skipped_images=("bad.jpg",),
        untrained=False,
        metrics=CocoMetrics(0.24, 0.40, 0.25, 0.1, 0.2, 0.3, 0.35, {"person": 0.5}),
        timing=EvalTiming(inference_s=3.0, total_s=3.5, images_per_s=28.6),
    )


def test_eval_result_round_trips_through_json():
    rec = _eval()
    data = json.loads(json.dumps(to_dict(rec)))
    assert data["metrics"]["map50_95"] == 0.24 and data["schema"] == SCHEMA_VERSION
    assert from_dict(EvalResult, data) == rec


def test_latency_result_round_trips_with_optional_fields():
    rec = LatencyResult(
        model="m", variant="fp16", backend="tensorrt", device="H100", batch_size=8,
        host=LatencyStats(1.0, 1.1, 0.9, 1.5, 0.1, 50), images_per_s=7272.7,
        device_ms=0.8, precision={"int8": 3, "fp16": 10},
    )
    assert from_dict(LatencyResult, json.loads(json.dumps(to_dict(rec)))) == rec


def test_foreign_schema_version_is_rejected():
    data = to_dict(_eval())
    data["schema"] = SCHEMA_VERSION + 1
    with pytest.raises(RecordError, match="schema version"):
        from_dict(EvalResult, data)


def test_unknown_key_is_rejected_with_its_name():
    data = to_dict(_eval())
    data["metrics"]["map_typo"] = 1.0
    with pytest.raises(RecordError, match="map_typo"):
        from_dict(EvalResult, data)


def test_latency_stats_keep_their_raw_rounds_through_json():
    rounds = (3.1, 2.9, 3.0, 4.2, 3.05)
    stats = LatencyStats.from_samples(rounds)
    assert stats.samples_ms == rounds and stats.rounds == 5 and stats.median_ms == 3.05 and stats.max_ms == 4.2
    rec = LatencyResult(model="m", variant="fp16", backend="onnxruntime", device="CPU", batch_size=1, host=stats,
                        images_per_s=1e3 / stats.median_ms)
    data = json.loads(json.dumps(to_dict(rec)))
    assert data["host"]["samples_ms"] == list(rounds)
    assert from_dict(LatencyResult, data).host.samples_ms == rounds


def test_latency_records_written_before_raw_rounds_still_load():
    data = to_dict(LatencyResult(model="m", variant="fp16", backend="onnxruntime", device="CPU", batch_size=1,
                                 host=LatencyStats.from_samples([2.0, 4.0]), images_per_s=333.3))
    del data["host"]["samples_ms"]
    old = from_dict(LatencyResult, data)
    assert old.host.samples_ms == () and old.host.rounds == 2 and old.host.median_ms == 3.0


def test_latency_stats_refuse_samples_that_are_not_their_rounds():
    with pytest.raises(RecordError, match="3 samples for 5 rounds"):
        LatencyStats(1.0, 1.0, 1.0, 1.0, 0.0, 5, samples_ms=(1.0, 1.0, 1.0))


# Issue 22 (7): a tampered record (mAP null, 7.5, a string) failed late in the selection or the plot.
@pytest.mark.parametrize(("path", "value", "says"), [
    (("metrics", "map50_95"), None, "is None, not a finite number"),
    (("metrics", "map50_95"), 7.5, "outside COCO's 0..1"),
    (("metrics", "map50"), "0.5", "is '0.5', not a finite number"),
    (("metrics", "per_class_ap", "person"), -0.5, "outside COCO's 0..1"),
    (("timing", "total_s"), -1.0, "a negative total s"),
    (("num_images",), 2.5, "is 2.5, not an integer"),
    (("untrained",), "no", "not true or false"),
    (("skipped_images",), "bad.jpg", "not a list"),
])
def test_records_read_back_are_checked_like_written_ones(path, value, says):
    data = to_dict(_eval())
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(RecordError, match=re.escape(says)) as err:
        from_dict(EvalResult, data, where="run.json")
    assert "run.json." + ".".join(path[:2]) in str(err.value)


def test_coco_minus_one_and_old_records_without_skip_reasons_read_back():
    data = to_dict(_eval())
    data["metrics"]["map_small"] = -1  # COCO's "no small objects": a value writers produce
    del data["skip_reasons"]
    back = from_dict(EvalResult, data)
    assert back.metrics.map_small == -1 and back.skip_reasons == {}


@pytest.mark.parametrize(("failures", "says"), [
    (7, "quantbench.failures is a int, not a list"),
    ([{"model": "m", "variant": None, "reason": "x"}], "quantbench.failures[0] is"),
    (["m/v crashed"], "quantbench.failures[0] is 'm/v crashed', not an object"),
])
def test_benchmark_json_failures_are_checked_like_written_ones(tmp_path, failures, says):
    """Issue 22 (7): a tampered failure list gave a TypeError, or was half-read without notice."""
    from quantbench.errors import ConfigError
    from quantbench.outputs.benchmark_json import failures_from_benchmark_json

    path = tmp_path / "run.json"
    path.write_text(json.dumps({"benchmarks": [], "quantbench": {"failures": failures}}))
    with pytest.raises(ConfigError, match=re.escape(f"{path}: {says}")):
        failures_from_benchmark_json([path])
    path.write_text(json.dumps({"benchmarks": [], "quantbench": {"failures": [
        {"model": "m", "variant": "v", "reason": "ModelOpt crashed"}]}}))
    assert failures_from_benchmark_json([path]) == {("m", "v"): "ModelOpt crashed"}
