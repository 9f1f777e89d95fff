"""calibration_eps.py: which EP ModelOpt calibrates on, with ONNX Runtime's provider list faked
(`onnxruntime.get_available_providers`, the only thing faked) on this CPU-only machine."""

from __future__ import annotations

import logging
from pathlib import Path

import onnxruntime
import pytest

from quantbench.build.calibration_eps import choose_calibration_eps
from quantbench.build.export import resolve_model
from quantbench.build.quantize import quantize_variant
from quantbench.build.variants import Variant, VariantKind, load_variants
from quantbench.cache import ArtifactCache, ArtifactMissing
from quantbench.data.calibration import build_calibration
from quantbench.errors import ConfigError
from quantbench.pipeline import Pipeline, PipelineSettings

CPU_ONLY = ["CPUExecutionProvider"]
WITH_CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]
WITH_TRT = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def fake_ort_providers(monkeypatch: pytest.MonkeyPatch, providers: list[str]) -> None:
    """What ONNX Runtime says it offers; opening a session on them stays real (and fails here: no GPU)."""
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: list(providers))


def test_auto_on_a_cpu_only_onnxruntime_calibrates_on_the_cpu_quietly(monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture):
    fake_ort_providers(monkeypatch, CPU_ONLY)
    with caplog.at_level(logging.WARNING):
        chosen = choose_calibration_eps("auto")
    assert (chosen.eps, chosen.fallback) == (("cpu",), None)
    assert not caplog.records


@pytest.mark.parametrize(("providers", "requested", "named"), [
    (WITH_CUDA, "auto", ["CUDAExecutionProvider"]),
    (WITH_TRT, "auto", ["TensorrtExecutionProvider", "CUDAExecutionProvider"]),
    (WITH_TRT, "trt", ["TensorrtExecutionProvider"]),
    (CPU_ONLY, "cuda", ["CUDAExecutionProvider"]),
])
def test_a_gpu_ep_that_does_not_open_falls_back_to_the_cpu_with_one_warning(
        providers: list[str], requested: str, named: list[str], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]):
    fake_ort_providers(monkeypatch, providers)
    with caplog.at_level(logging.WARNING):
        chosen = choose_calibration_eps(requested)
    assert chosen.eps == ("cpu",) and chosen.requested == requested
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert warnings[0].startswith("quantbench: calibrating on the CPU: ")
    for provider in named:
        assert provider in warnings[0]
    # The cause is named: the library or the missing GPU, not just "failed".
    assert "cannot open shared object file" in warnings[0] or "not in this ONNX Runtime build" in warnings[0] \
        or "no usable GPU" in warnings[0]
    # ONNX Runtime's own red error lines about the provider are kept out of the terminal.
    out, err = capfd.readouterr()
    assert "Failed to load library" not in out + err and "EP Error" not in out + err


def test_an_unknown_choice_is_refused():
    with pytest.raises(ConfigError, match=r"calibration EP 'gpu' is not one of auto, trt, cuda, cpu"):
        choose_calibration_eps("gpu")


def test_pipeline_records_the_ep_and_keys_builds_by_it(assets_dir: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch):
    fake_ort_providers(monkeypatch, WITH_CUDA)
    cache = ArtifactCache(tmp_path / "cache")
    pipeline = Pipeline(cache, PipelineSettings(calib_data=assets_dir / "coco" / "calib500", calib_images=2,
                                                backend="onnxruntime", calibration_eps="auto"))
    assert pipeline.calibration_eps().eps == ("cpu",) and "CUDAExecutionProvider" in (pipeline.calibration_eps().fallback or "")
    model = pipeline.model(assets_dir / "models" / "yolov5n-coco.onnx")
    variant = Variant(name="int8-max", kind=VariantKind.INT8, calibration_method="max", calib_images=2)
    build = pipeline.build(model, variant)
    assert build.options["calibration"]["eps"] == ["cpu"]
    # The EP is part of the cache key: the same build calibrated on CUDA is another artefact.
    calib = build_calibration(assets_dir / "coco" / "calib500", 2, cache=cache, seed=0)
    found = quantize_variant(resolve_model(model.path, cache), variant, calib, cache.read_only(), calibration_eps=("cpu",))
    assert found.onnx_path == build.onnx_path and found.cached
    with pytest.raises(ArtifactMissing):
        quantize_variant(model, variant, calib, cache.read_only(), calibration_eps=("cuda:0",))


def test_a_variant_of_the_table_picks_its_own_calibration_ep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    table = tmp_path / "variants.toml"
    table.write_text('[[variant]]\nname = "int8-cuda"\nkind = "int8"\ncalibration_eps = "cuda"\n\n'
                     '[[variant]]\nname = "int8-max"\nkind = "int8"\n')
    on_cuda, plain = load_variants(table)
    assert on_cuda.calibration_eps == "cuda" and on_cuda.options()["calibration_eps"] == "cuda"
    assert plain.calibration_eps is None and "calibration_eps" not in plain.options()  # earlier cache keys kept
    table.write_text('[[variant]]\nname = "int8-gpu"\nkind = "int8"\ncalibration_eps = "gpu"\n')
    with pytest.raises(ConfigError, match=r"calibration_eps.*'gpu'"):
        load_variants(table)

    fake_ort_providers(monkeypatch, CPU_ONLY)
    pipeline = Pipeline(ArtifactCache(tmp_path / "cache"), PipelineSettings(calibration_eps="auto"))
    assert pipeline.calibration_eps().fallback is None  # the run's choice: nothing refused
    asked = pipeline.calibration_eps(on_cuda.calibration_eps)  # the variant's: CUDA, not in this ORT
    assert asked.eps == ("cpu",) and "CUDAExecutionProvider is not in this ONNX Runtime build" in (asked.fallback or "")
