"""shared_calibration.py: INT8 variants derived from one shared ModelOpt calibration, checked against
ModelOpt's own per-variant builds (real ModelOpt, real models, real calibration images)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest

from quantbench.build import quantize
from quantbench.build.export import ModelInfo, resolve_model
from quantbench.build.quantize import head_nodes, quantize_variant
from quantbench.build.shared_calibration import (
    calibration_variant,
    compare_qdq,
    derive,
    fusion_conflicts,
    own_calibration_reason,
)
from quantbench.build.variants import Variant, VariantKind, load_variants
from quantbench.cache import ArtifactCache
from quantbench.data.calibration import CalibrationSet, build_calibration
from quantbench.errors import QuantizeError
from quantbench.pipeline import Pipeline, PipelineObserver, PipelineSettings
from quantbench.records import VariantBuild

ROOT = Path(__file__).resolve().parent.parent
TABLE = load_variants(ROOT / "bench" / "variants.toml")
INT8_MAX = Variant(name="int8-max", kind=VariantKind.INT8, calibration_method="max")
INT8_HEAD = dataclasses.replace(INT8_MAX, name="int8-head-fp16", exclude_head=True)


@pytest.fixture(scope="module")
def yolov5n(yolov5n_onnx: Path, session_cache: ArtifactCache) -> ModelInfo:
    return resolve_model(yolov5n_onnx, session_cache)


@pytest.fixture(scope="module")
def calib16(calib500: Path, session_cache: ArtifactCache) -> CalibrationSet:
    return build_calibration(calib500, 16, cache=session_cache, seed=0)


def test_which_variants_of_the_default_table_share_a_calibration():
    by_name = {v.name: v for v in TABLE}
    derived = sorted(v.name for v in TABLE if calibration_variant(v) is not None)
    assert derived == ["int8-auto-yolo11n", "int8-entropy-head-attn-fp16", "int8-entropy-head-fp16", "int8-head-fp16"]
    # Each derives from the table's own exclusion-free variant of its method: same options, so the same
    # cache key (names are not part of it), so the table's int8-max / int8-entropy cost nothing extra.
    for name, base in [("int8-head-fp16", "int8-max"), ("int8-entropy-head-fp16", "int8-entropy"),
                       ("int8-entropy-head-attn-fp16", "int8-entropy"), ("int8-auto-yolo11n", "int8-entropy")]:
        shared = calibration_variant(by_name[name])
        assert shared is not None and shared.options() == by_name[base].options()
    assert "calibrate_per_node" in (own_calibration_reason(dataclasses.replace(INT8_HEAD, calibrate_per_node=True))
                                    or "")
    assert "op_types_to_quantize" in (own_calibration_reason(
        dataclasses.replace(INT8_HEAD, op_types_to_quantize=("Conv", "Sigmoid"))) or "")


@pytest.mark.slow
def test_derived_build_matches_modelopt_and_records_its_calibration(yolov5n: ModelInfo, calib16: CalibrationSet,
                                                                    tmp_path: Path):
    cache = ArtifactCache(tmp_path / "cache")
    calls: list[str] = []

    def shared(variant: Variant) -> VariantBuild:
        calls.append(variant.name)
        return quantize_variant(yolov5n, variant, calib16, cache)

    own = quantize_variant(yolov5n, INT8_HEAD, calib16, cache)
    derived = quantize_variant(yolov5n, INT8_HEAD, calib16, cache, shared=shared)
    base = quantize_variant(yolov5n, INT8_MAX, calib16, cache)  # found: the shared calibration is this build

    assert calls == ["max-calibration"] and base.cached
    assert own.options["calibration"] == {"sha256": calib16.sha256, "num_images": 16, "seed": 0, "eps": ["cpu"]}
    assert derived.options["calibration"]["derived_from"] == Path(base.onnx_path).stem
    assert derived.onnx_sha256 != own.onnx_sha256 or derived.onnx_path != own.onnx_path  # two cache entries
    assert derived.excluded_nodes == own.excluded_nodes == head_nodes(onnx.load(str(yolov5n.path)))
    assert derived.quantized_nodes == own.quantized_nodes

    same = compare_qdq(onnx.load(own.onnx_path), onnx.load(derived.onnx_path))
    assert same.equal, same.differences
    assert same.max_scale_difference == 0.0 and same.quantized_reference == same.quantized_derived > 100

    # The check can fail: the shared build itself (head still INT8) is not the head-fp16 variant.
    other = compare_qdq(onnx.load(own.onnx_path), onnx.load(base.onnx_path))
    assert not other.placement_equal and other.quantized_derived > other.quantized_reference
    assert any("/model.24/m." in d for d in other.differences)  # YOLOv5's Detect convs
    # Excluding a node ModelOpt did not quantize changes nothing.
    unquantized = next(n.name for n in onnx.load(base.onnx_path).graph.node if n.op_type == "Concat")
    assert compare_qdq(onnx.load(base.onnx_path), derive(onnx.load(base.onnx_path), [unquantized])).equal


def test_a_failed_shared_calibration_fails_the_variant_with_its_sentence(yolov5n: ModelInfo, calib16: CalibrationSet,
                                                                         cache: ArtifactCache):
    reason = "ModelOpt failed to build variant 'max-calibration' of model yolov5n-coco (ValueError: boom); check ..."

    def shared(variant: Variant) -> VariantBuild:
        raise QuantizeError(reason)

    with pytest.raises(QuantizeError, match=r"variant 'int8-head-fp16' of model yolov5n-coco derives from the "
                                            r"shared max calibration, which failed: ModelOpt failed .*boom"):
        quantize_variant(yolov5n, INT8_HEAD, calib16, cache, shared=shared)


class _Heard(PipelineObserver):
    def __init__(self) -> None:
        self.built_names: list[str] = []
        self.failed_names: list[str] = []
        self.calibrations: list[VariantBuild] = []

    def built(self, build: VariantBuild) -> None:
        self.built_names.append(build.variant)

    def failed(self, model: str, variant: str, reason: str) -> None:
        self.failed_names.append(variant)

    def calibrated(self, model: ModelInfo, calibration: Variant, build: VariantBuild) -> None:
        self.calibrations.append(build)


@pytest.mark.slow
def test_pipeline_calibrates_once_for_every_variant_that_shares_it(assets_dir: Path, cache: ArtifactCache,
                                                                   monkeypatch: pytest.MonkeyPatch):
    heard = _Heard()
    settings = PipelineSettings(calib_data=assets_dir / "coco" / "calib500", calib_images=8, backend="onnxruntime",
                                calibration_eps="cpu")
    pipeline = Pipeline(cache, settings, observer=heard)
    model = pipeline.model(assets_dir / "models" / "yolov5n-coco.onnx")
    runs: list[str] = []
    real = quantize._run_modelopt

    def counted(model: ModelInfo, variant: Variant, *args, **kwargs) -> None:  # counts, then runs ModelOpt
        runs.append(variant.name)
        real(model, variant, *args, **kwargs)

    monkeypatch.setattr(quantize, "_run_modelopt", counted)
    head = pipeline.build(model, INT8_HEAD)
    pattern = dataclasses.replace(INT8_MAX, name="int8-no-first-conv", nodes_to_exclude=("/model\\.0/conv/Conv$",))
    first = pipeline.build(model, pattern)
    plain = pipeline.build(model, INT8_MAX)

    assert runs == ["max-calibration"]  # one ModelOpt run for three variants
    assert [b.variant for b in heard.calibrations] == ["max-calibration"]
    assert heard.built_names == ["int8-head-fp16", "int8-no-first-conv", "int8-max"]
    assert plain.cached and head.options["calibration"]["derived_from"] == Path(plain.onnx_path).stem
    assert first.excluded_nodes == ("/model.0/conv/Conv",) and first.quantized_nodes == plain.quantized_nodes - 1

    # A failing shared calibration: remembered, so the next variant needing it fails at once, with its sentence.
    broken = dataclasses.replace(INT8_HEAD, name="int8-bf16-head", high_precision_dtype="bf16")

    def failing(model: ModelInfo, variant: Variant, *args, **kwargs) -> None:
        runs.append(variant.name)
        raise QuantizeError(f"ModelOpt failed to build variant {variant.name!r} of model {model.name} (stand-in).")

    monkeypatch.setattr(quantize, "_run_modelopt", failing)
    for name in ("int8-bf16-head", "int8-bf16-first"):
        variant = dataclasses.replace(broken, name=name, exclude_head=name.endswith("head"),
                                      nodes_to_exclude=() if name.endswith("head") else pattern.nodes_to_exclude)
        with pytest.raises(QuantizeError, match=f"variant '{name}' .* derives from the shared max calibration, which "
                                                "failed: ModelOpt failed to build variant 'max-calibration'"):
            pipeline.build(model, variant)
    assert runs.count("max-calibration") == 2  # the bf16 calibration once, not once per variant
    assert heard.failed_names == ["int8-bf16-head", "int8-bf16-first"]


# --- the equivalence the derivation rests on, on every INT8 variant of the default table -----------

EQUIVALENCE_CASES = [(model, v.name) for model in ("yolov5n-coco", "yolo11n-coco") for v in TABLE
                     if v.kind is VariantKind.INT8 and v.applies_to(model) and calibration_variant(v) is not None]


@pytest.fixture(scope="module")
def equivalence_pipelines(assets_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Pipeline, Pipeline]:
    cache = ArtifactCache(tmp_path_factory.mktemp("shared-calibration"))
    common = dict(eval_data=assets_dir / "coco" / "val500", calib_data=assets_dir / "coco" / "calib500",
                  eval_images=20, calib_images=16, backend="onnxruntime", calibration_eps="cpu")
    return (Pipeline(cache, PipelineSettings(**common, shared_calibration=False)),  # type: ignore[arg-type]
            Pipeline(cache, PipelineSettings(**common, shared_calibration=True)))  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.parametrize(("model_name", "variant_name"), EQUIVALENCE_CASES, ids=[f"{m}-{v}" for m, v in EQUIVALENCE_CASES])
def test_derived_variant_equals_modelopts_own_build(model_name: str, variant_name: str, assets_dir: Path,
                                                    equivalence_pipelines: tuple[Pipeline, Pipeline]):
    own, shared = equivalence_pipelines
    variant = next(v for v in TABLE if v.name == variant_name)
    model = own.model(assets_dir / "models" / f"{model_name}.onnx")
    reference, built = own.build(model, variant), shared.build(model, variant)
    base = onnx.load(str(model.path))
    excluded = quantize._excluded_nodes(base, variant)
    conflicts = fusion_conflicts(base, excluded)
    calibration = calibration_variant(variant)
    assert calibration is not None
    derived = derive(onnx.load(shared.build(model, calibration).onnx_path), excluded)
    cmp = compare_qdq(onnx.load(reference.onnx_path), derived)
    if conflicts:
        # Excluding these nodes changes ModelOpt's fusion: the re-emission would differ, so the pipeline
        # keeps ModelOpt's own build for this variant (the same artefact as without sharing).
        assert not cmp.placement_equal and any(c in " ".join(cmp.differences) for c in conflicts)
        assert "derived_from" not in built.options["calibration"] and built.onnx_path == reference.onnx_path
        return
    assert built.options["calibration"]["derived_from"] and "derived_from" not in reference.options["calibration"]
    assert cmp.placement_equal and cmp.scales_equal and cmp.weights_equal, cmp.differences
    # Same nodes, inputs, scales and weights: ONNX Runtime computes bit-identical outputs (the files differ
    # only in node order and names ModelOpt's exporter gives), hence the same detections and mAP.
    images = own.calibration(2, model.input_size).load()
    assert np.array_equal(_outputs(reference.onnx_path, images), _outputs(built.onnx_path, images))
    assert shared.evaluation(model, variant).metrics.map50_95 == pytest.approx(
        own.evaluation(model, variant).metrics.map50_95, abs=1e-4)


def _outputs(path: str, images: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: images[i:i + 1]})[0] for i in range(len(images))])


def test_fusion_conflicts_name_the_attention_residual_add_of_yolo11n(assets_dir: Path):
    by_name = {v.name: v for v in TABLE}
    base = onnx.load(str(assets_dir / "models" / "yolo11n-coco.onnx"))
    conflicts = {name: fusion_conflicts(base, quantize._excluded_nodes(base, by_name[name]))
                 for name in ("int8-head-fp16", "int8-entropy-head-attn-fp16", "int8-auto-yolo11n")}
    # The attention's proj conv is excluded; ModelOpt fuses the residual Add behind it into its partition.
    assert conflicts == {"int8-head-fp16": (), "int8-entropy-head-attn-fp16": ("/model.10/m/m.0/Add",),
                         "int8-auto-yolo11n": ()}
    # Excluding the Add too removes the conflict: nothing is left to fuse differently.
    assert fusion_conflicts(base, ["/model.10/m/m.0/attn/proj/conv/Conv", "/model.10/m/m.0/Add"]) == ()
