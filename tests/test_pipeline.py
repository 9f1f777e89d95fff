"""The one pipeline on the real yolo11n-coco: match tables kept with evaluations, the cached paired
comparison, and the calibration-seed spread."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantbench.build.variants import Variant, VariantKind
from quantbench.cache import ArtifactCache
from quantbench.decision.uncertainty import paired_bootstrap
from quantbench.pipeline import Pipeline, PipelineSettings

FP32 = Variant(name="fp32", kind=VariantKind.FP32)
FP16 = Variant(name="fp16", kind=VariantKind.FP16, calib_images=1)
INT8 = Variant(name="int8-max", kind=VariantKind.INT8, calibration_method="max", calib_images=2)


@pytest.fixture
def pipeline(tmp_path: Path, val500: Path, calib500: Path) -> Pipeline:
    settings = PipelineSettings(eval_data=val500, calib_data=calib500, eval_images=8, backend="onnxruntime",
                                resamples=200)
    return Pipeline(ArtifactCache(tmp_path / "cache"), settings)


@pytest.mark.slow
def test_evaluations_keep_their_matches_and_the_paired_comparison_is_cached(pipeline: Pipeline, assets_dir: Path):
    model = pipeline.model(assets_dir / "models" / "yolo11n-coco.onnx")
    fp32, fp16 = pipeline.evaluation(model, FP32), pipeline.evaluation(model, FP16)
    assert pipeline.has_matches(model, FP32) and pipeline.has_matches(model, FP16)
    assert pipeline.matches(model, FP16).map50_95() == pytest.approx(fp16.metrics.map50_95, abs=1e-12)

    comparison = pipeline.comparison(model, FP16, FP32, confidence=0.9)
    direct = paired_bootstrap(pipeline.matches(model, FP16), pipeline.matches(model, FP32), resamples=200,
                              confidence=0.9, seed=0)
    assert comparison.drop == direct and comparison.num_images == 8 == fp32.num_images
    assert comparison.drop.map50_95.point == pytest.approx(fp32.metrics.map50_95 - fp16.metrics.map50_95, abs=1e-12)
    again = Pipeline(pipeline.cache, pipeline.settings)  # a later session reads it back
    assert again.comparison(model, FP16, FP32, confidence=0.9) == comparison


@pytest.mark.slow
def test_older_stored_evaluations_get_their_matches_by_evaluating_again(pipeline: Pipeline, assets_dir: Path):
    model = pipeline.model(assets_dir / "models" / "yolo11n-coco.onnx")
    stored = pipeline.evaluation(model, FP32)
    for path in (pipeline.cache.root / "matches").glob("*"):  # as a cache from before match tables
        path.unlink()
    fresh = Pipeline(pipeline.cache, pipeline.settings)
    assert not fresh.has_matches(model, FP32)
    assert fresh.matches(model, FP32).map50_95() == pytest.approx(stored.metrics.map50_95, abs=1e-12)
    assert fresh.has_matches(model, FP32)


@pytest.mark.slow
def test_the_seed_spread_builds_each_seed_and_reports_it_apart_from_the_variant(pipeline: Pipeline, assets_dir: Path):
    model = pipeline.model(assets_dir / "models" / "yolo11n-coco.onnx")
    heard = []

    class Observer:
        def built(self, build):
            heard.append(("built", build.variant))

        def failed(self, model, variant, reason):
            heard.append(("failed", variant))

        def evaluated(self, result, *, computed):
            heard.append(("evaluated", result.variant))

    pipeline.observer = Observer()
    spread = pipeline.seed_spread(model, INT8, 2)
    assert spread.seeds == (0, 1) and len(spread.maps) == 2 and spread.spread.count == 2
    builds = {pipeline.build(model, INT8).onnx_sha256,
              pipeline.build(model, Variant(**{**INT8.__dict__, "calib_seed": 1})).onnx_sha256}
    assert len(builds) == 2  # another calibration subset, another ONNX
    assert spread.maps[0] == pipeline.evaluation(model, INT8).metrics.map50_95
    assert heard == [("built", "int8-max"), ("evaluated", "int8-max")]  # seed 1 is no variant of the run
