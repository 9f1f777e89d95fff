"""The bench's planning and option table, without a pytest session: `Pipeline.plan` and `quantbench.plugin.options`."""

from __future__ import annotations

import argparse
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from quantbench.build.variants import Variant, VariantKind
from quantbench.cache import ArtifactCache
from quantbench.pipeline import Pipeline, PipelineObserver, PipelineSettings
from quantbench.plugin.options import BenchOptions, add_options, child_argv, describe, options_table

FP32 = Variant(name="fp32", kind=VariantKind.FP32)


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def pipeline(tmp_path: Path, val500: Path) -> Pipeline:
    settings = PipelineSettings(eval_data=val500, eval_images=2, backend="onnxruntime")
    return Pipeline(ArtifactCache(tmp_path / "cache"), settings)


def _not_a_detector(tmp_path: Path) -> Path:
    """A valid ONNX that is no YOLO detector (one Identity): the model stage refuses it."""
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 64, 64])
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["out"])], "identity", [x], [y])
    path = tmp_path / "identity.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_plan_reads_the_caches_and_writes_nothing(pipeline: Pipeline, tmp_path: Path, assets_dir: Path):
    model = str(assets_dir / "models" / "yolo11n-coco.onnx")
    pipeline.model(model)  # the base model is validated and cached; engine and accuracy are not
    before = _tree(pipeline.cache.root)
    plan = pipeline.plan([(model, FP32), (str(_not_a_detector(tmp_path)), FP32)])
    assert plan.missing == ((model, "fp32"),)
    assert plan.failing == ((str(tmp_path / "identity.onnx"), "fp32"),) and plan.cached == ()
    assert _tree(pipeline.cache.root) == before  # no artefact, lock or digest memo written

    pipeline.evaluation(pipeline.model(model), FP32)
    assert pipeline.plan([(model, FP32)]).cached == ((model, "fp32"),)


def test_a_failed_build_is_remembered_and_reported_once(pipeline: Pipeline, assets_dir: Path):
    failures = []

    class Observer(PipelineObserver):
        def failed(self, model, variant, reason):
            failures.append((model, variant))

    pipeline.observer = Observer()
    model = pipeline.model(assets_dir / "models" / "yolo11n-coco.onnx")
    broken = Variant(name="int8-none", kind=VariantKind.INT8, nodes_to_exclude=("/no/such/node",), calib_images=1)
    for _ in range(2):
        with pytest.raises(Exception, match="no such node|matches no node|/no/such/node"):
            pipeline.build(model, broken)
    assert failures == [("yolo11n-coco", "int8-none")]


class _ArgparseParser:
    """pytest's option API (``getgroup().addoption``) over plain argparse, which pytest itself wraps."""

    def __init__(self):
        self.parser = argparse.ArgumentParser(exit_on_error=False)

    def getgroup(self, name: str, description: str = ""):
        return self

    def addoption(self, *flags: str, **kwargs):
        self.parser.add_argument(*flags, **kwargs)


def _parse(argv: list[str]) -> argparse.Namespace:
    shim = _ArgparseParser()
    add_options(shim)
    return shim.parser.parse_args(argv)


def test_child_argv_gives_the_child_session_the_same_options(tmp_path: Path, val500: Path):
    files = {name: tmp_path / name for name in ("a.onnx", "b.onnx", "v.toml", "t.toml")}
    for path in files.values():
        path.write_text("")
    options = BenchOptions(models=(str(files["a.onnx"]), str(files["b.onnx"])), data=val500, calib_data=None,
                           backend="onnxruntime", variant_patterns=("fp16", "int8-*"), variants_file=files["v.toml"],
                           thresholds_file=files["t.toml"], batch_sizes=(1, 8), eval_images=100, calib_images=64,
                           cache_dir=tmp_path, report_dir=tmp_path / "r", warmup=2, rounds=10, min_time_s=0.5,
                           build_workers=2)
    argv = child_argv(options)
    assert "--qb-build-workers" not in argv  # the child is the build phase itself
    parsed = _parse(argv)
    for f, o in options_table():
        if o.child:
            got = getattr(parsed, o.dest)
            assert (tuple(got) if o.repeat else got) == getattr(options, f.name), f.name
    overridden = _parse(child_argv(options, variant_patterns=("fp16",), models=(str(files["b.onnx"]),)))
    assert overridden.qb_variants == ("fp16",) and overridden.qb_model == [str(files["b.onnx"])]


def test_every_option_is_generated_from_the_table(val500: Path):
    parsed = _parse(["--qb-eval-images", "5", "--qb-min-time", "0"])
    for _, o in options_table():
        assert hasattr(parsed, o.dest)
    assert parsed.qb_eval_images == 5 and parsed.qb_batch_sizes == (1,)
    with pytest.raises(argparse.ArgumentError, match="must be at least 1"):  # refused before any work
        _parse(["--qb-eval-images", "0"])


def test_the_header_names_every_labelled_value(tmp_path: Path):
    options = BenchOptions(models=("m.onnx",), data=None, calib_data=None, backend="auto", variant_patterns=None,
                           variants_file=Path("v.toml"), thresholds_file=Path("t.toml"), batch_sizes=(1, 8),
                           eval_images=None, calib_images=64, cache_dir=tmp_path, report_dir=tmp_path,
                           warmup=2, rounds=10, min_time_s=0.0, build_workers=1)
    line = describe(options)
    assert "batch sizes 1,8 (the first is the reference)" in line and "eval images all" in line
    assert "calibration images capped at 64" in line and "warm-up 2 rounds" in line
    assert "eval data" not in line  # not given: left out
