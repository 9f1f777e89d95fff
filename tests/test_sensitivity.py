"""Q/DQ layer groups, their bypass, and per-layer sensitivity, on YOLO11n from its YAML.

YOLO11n here has random weights: its mAP means nothing, but its graph has everything the
grouping must handle (C3k2 residual Adds, the C2PSA attention block's MatMuls and partial
residual Adds, SPPF MaxPools, upsampling Resizes, the DFL head). It runs at 320 px on two
calibration images to stay cheap.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest

from quantbench.analysis.meter import GraphMeter, output_agreement, run_batches
from quantbench.analysis.search import excluded_patterns, run_search
from quantbench.analysis.sensitivity import layer_sensitivity, run_sensitivity
from quantbench.analysis.setup import AnalysisInputs, AnalysisOptions, probe_split
from quantbench.backends import BuildOptions
from quantbench.backends.ort import OrtBackend, fp16_quantize_nodes
from quantbench.build.export import resolve_model
from quantbench.build.qdq_graph import QdqModel
from quantbench.build.quantize import quantize_variant
from quantbench.build.variants import Variant, VariantKind, load_variants
from quantbench.cache import ArtifactCache
from quantbench.data.calibration import build_calibration
from quantbench.errors import ConfigError, DataError, ModelError

SIZE = 320
ATTN = "/model.10/m/m.0/attn"
DFL_CONV = "/model.23/dfl/conv/Conv"


@dataclasses.dataclass(frozen=True)
class Y11:
    model: object  # ModelInfo
    calib: object  # CalibrationSet
    variant: Variant
    qdq: QdqModel
    cache: ArtifactCache


@pytest.fixture(scope="module")
def y11(yolo11n_onnx: Path, calib500: Path, session_cache: ArtifactCache) -> Y11:
    model = resolve_model(yolo11n_onnx, session_cache, imgsz=SIZE)
    calib = build_calibration(calib500, 2, cache=session_cache, size=SIZE)
    # The options run_sensitivity uses below (max, 2 images, FP32 outside INT8): one shared build.
    variant = Variant("int8-auto-analysis", VariantKind.INT8, calibration_method="max", calib_images=2,
                      high_precision_dtype="fp32")
    build = quantize_variant(model, variant, calib, session_cache)
    return Y11(model, calib, variant, QdqModel.load(build.onnx_path, input_size=SIZE), session_cache)


def _signature(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Each non-Q/DQ node's inputs, with a Q/DQ'd input written as DQ:<the float tensor>."""
    producers = {out: n for n in model.graph.node for out in n.output}
    sig = {}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        sig[node.name] = [
            f"DQ:{producers[producers[i].input[0]].input[0]}"
            if i in producers and producers[i].op_type == "DequantizeLinear" else i
            for i in node.input
        ]
    return sig


@pytest.mark.slow
def test_yolo11n_groups_cover_attention_dfl_and_residuals(y11: Y11) -> None:
    groups = {g.name: g for g in y11.qdq.groups}
    assert {g.op_type for g in groups.values()} >= {"Conv", "MatMul", "Add", "MaxPool", "Resize"}
    assert {f"{ATTN}/MatMul", f"{ATTN}/MatMul_1"} <= set(groups)
    assert DFL_CONV in groups
    # The attention block's residual Adds have one quantized input (ModelOpt leaves the conv branch
    # float so the Add fuses into it): still groups of their own.
    assert len(groups[f"{ATTN}/Add"].quantized_inputs) == 1
    # Concat, Reshape and Shape only read shared DQs: never groups.
    assert not {g.op_type for g in groups.values()} & {"Concat", "Reshape", "Shape"}
    # ModelOpt quantized every conv and both attention matmuls: everything linear is INT8.
    assert y11.qdq.int8_flop_share(()) == pytest.approx(1.0)
    assert y11.qdq.fp16_linear_layers(()) == 0


def test_flops_match_ultralytics_count(y11: Y11) -> None:
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import get_flops

    net = YOLO("yolo11n.yaml").model.fuse()  # fused BatchNorm, as in the ONNX export
    assert y11.qdq.linear_flops_total / 1e9 == pytest.approx(get_flops(net, SIZE), rel=1e-6)
    mm = y11.qdq.group(f"{ATTN}/MatMul")  # q^T k at stride 32: 2 heads, 32-dim keys over 10x10 tokens
    assert mm.flops == 2 * 2 * 100 * 32 * 100


@pytest.mark.slow
def test_bypass_reproduces_modelopt_nodes_to_exclude(y11: Y11) -> None:
    excluded = [
        f"{ATTN}/MatMul",  # attention matmul
        f"{ATTN}/Add",  # partial residual Add
        DFL_CONV,  # DFL head
        "/model.2/m.0/cv1/conv/Conv",  # reads a Split's second output: ModelOpt keeps its shared DQ
        "/model.9/m_1/MaxPool",
        "/model.14/Resize",
        "/model.6/m.0/m/m.0/Add",  # residual Add with both inputs quantized
        "/model.19/cv2/conv/Conv",
    ]
    assert set(excluded) <= set(y11.qdq.group_names)
    variant = dataclasses.replace(y11.variant, name="int8-excluded", nodes_to_exclude=excluded_patterns(excluded))
    real = quantize_variant(y11.model, variant, y11.calib, y11.cache)
    simulated = _signature(y11.qdq.with_excluded(excluded))
    assert simulated == _signature(onnx.load(real.onnx_path))
    assert set(real.excluded_nodes) == set(excluded)


@pytest.mark.slow
def test_bypassing_every_group_gives_the_fp32_model(y11: Y11, tmp_path: Path) -> None:
    images = y11.calib.load()
    fp32 = run_batches(Path(y11.model.path), images, 2)[0]
    no_int8 = tmp_path / "none.onnx"
    onnx.save(y11.qdq.with_excluded(y11.qdq.group_names), str(no_int8))
    assert not any(n.op_type == "QuantizeLinear" for n in onnx.load(str(no_int8)).graph.node)
    np.testing.assert_allclose(run_batches(no_int8, images, 2)[0], fp32, rtol=1e-4, atol=1e-3)
    all_int8 = tmp_path / "all.onnx"
    onnx.save(y11.qdq.with_only(y11.qdq.group_names), str(all_int8))
    np.testing.assert_array_equal(run_batches(all_int8, images, 2)[0],
                                  run_batches(Path(y11.qdq.source), images, 2)[0])


def test_output_agreement_measures_noise() -> None:
    ref = [np.ones((2, 6, 10), np.float32)]
    same = output_agreement(ref, ref)
    assert same.sqnr_db == np.inf and same.cosine == pytest.approx(1.0) and same.box_sqnr_db == np.inf
    noisy = output_agreement(ref, [ref[0] + 0.1])  # noise power 0.01 of signal power 1
    assert noisy.sqnr_db == pytest.approx(20.0) and noisy.score_sqnr_db == pytest.approx(20.0)
    assert noisy.box_sqnr_db == pytest.approx(20.0)
    boxes_only = ref[0].copy()
    boxes_only[:, :4] += 0.5  # the box rows are off, the class rows exact
    off = output_agreement(ref, [boxes_only])
    assert off.score_sqnr_db == np.inf and off.box_sqnr_db == pytest.approx(10 * np.log10(1 / 0.25))
    # Box errors count by the anchor's confidence: an anchor no class scores for does not matter.
    confident = ref[0].copy()
    confident[:, 4:, 5:] = 0.0  # anchors 5..9 score nothing
    wrong_where_unsure = confident.copy()
    wrong_where_unsure[:, :4, 5:] += 3.0
    assert output_agreement([confident], [wrong_where_unsure]).box_sqnr_db == np.inf


def _damage(qdq: QdqModel, group: str, factor: float) -> QdqModel:
    """A copy of ``qdq`` whose ``group`` reads its activation through a scale ``factor`` times too coarse."""
    model = onnx.ModelProto()
    model.CopyFrom(qdq.model)
    act = qdq.group(group).quantized_inputs[0]
    pair = next(p for p in qdq.pairs.values() if p.source == act)
    q_node = next(n for n in model.graph.node if n.name == pair.quantize_node)
    dq_node = next(n for n in model.graph.node if n.name == pair.dequantize_node)
    for init in model.graph.initializer:
        if init.name in (q_node.input[1], dq_node.input[1]):
            scale = onnx.numpy_helper.to_array(init) * factor
            init.CopyFrom(onnx.numpy_helper.from_array(scale.astype(np.float32), init.name))
    return QdqModel(model, source=f"{qdq.source} ({group} damaged)", input_size=qdq.input_size)


@pytest.fixture(scope="module")
def v5n_qdq(yolov5n_onnx: Path, calib500: Path, session_cache: ArtifactCache) -> tuple[object, object, QdqModel]:
    """yolov5n-coco (real COCO weights) in INT8, max calibration on four calib500 images."""
    model = resolve_model(yolov5n_onnx, session_cache)
    calib = build_calibration(calib500, 4, cache=session_cache, size=model.input_size)
    variant = Variant("int8-max-4", VariantKind.INT8, calibration_method="max", calib_images=4,
                      high_precision_dtype="fp32")
    build = quantize_variant(model, variant, calib, session_cache)
    return model, calib, QdqModel.load(build.onnx_path, input_size=model.input_size)


@pytest.mark.slow
def test_a_damaged_layer_ranks_first(v5n_qdq, tmp_path: Path) -> None:
    model, calib, qdq = v5n_qdq
    # A conv in the middle of the backbone whose activation pair feeds it alone (no other reader).
    victim = "/model.4/m/m.0/cv2/conv/Conv"
    damaged = _damage(qdq, victim, 16.0)
    rng = np.random.default_rng(0)
    others = [n for n in qdq.group_names if n != victim]
    # The victim among others of every kind: the first conv and a head output conv (the usual
    # suspects), a residual Add, an SPPF MaxPool, an upsampling Resize, and random picks.
    subset = [victim, "/model.0/conv/Conv", "/model.24/m.0/Conv", "/model.4/m/m.0/Add", "/model.9/m/MaxPool",
              "/model.11/Resize", *rng.choice(others, size=4, replace=False).tolist()]
    with GraphMeter(damaged, ArtifactCache(tmp_path / "c"), proxy_images=calib.load()[:2],
                    reference_onnx=Path(model.path), batch_size=2) as meter:
        report = layer_sensitivity(meter, model="yolov5n-coco", top_k=0, groups=subset, progress=False)
        assert meter.measured == 1 + 2 * len(set(subset))
    assert report.ranking[0] == victim
    victim_row = report.by_name()[victim]
    assert victim_row.bypass_gain_db > max(g.bypass_gain_db for g in report.groups[1:])
    assert min(report.groups, key=lambda g: g.only.score_sqnr_db).name == victim  # alone, it hurts most too


@pytest.mark.slow
def test_sensitivity_on_yolo11n_writes_ranked_report(y11: Y11, calib500: Path, yolo11n_onnx: Path,
                                                    tmp_path: Path) -> None:
    subset = [f"{ATTN}/MatMul", f"{ATTN}/MatMul_1", f"{ATTN}/Add", DFL_CONV, "/model.0/conv/Conv",
              "/model.23/cv3.0/cv3.0.2/Conv"]
    options = AnalysisOptions(calibration_method="max", calib_images=2, imgsz=SIZE, probe_images=3, proxy_images=2,
                              top_k=2, groups=subset, batch_size=2)
    report = run_sensitivity(AnalysisInputs(yolo11n_onnx, calib500, calib500, y11.cache), tmp_path / "out",
                             options=options, progress=False)
    assert sorted(report.ranking) == sorted(subset) and [g.rank for g in report.groups] == list(range(1, 7))
    probed = [g for g in report.groups if g.probe_score is not None]
    assert len(probed) == 2 and report.groups[:2] == tuple(probed)  # probed groups rank first
    assert report.int8_probe_score is not None and report.fp32_probe_score is not None
    with open(report.files["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [r["group"] for r in rows] == list(report.ranking)
    assert all(float(r["bypass_cosine"]) <= 1.0 + 1e-9 for r in rows)
    markdown = Path(report.files["markdown"]).read_text()
    assert f"`{ATTN}/MatMul`" in markdown and f"`{DFL_CONV}`" in markdown
    assert Path(report.files["chart"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The probe never scores a calibration image.
    probe_ds = probe_split(calib500, y11.calib, calib500 / "images", 3)
    assert not {f.name for f in probe_ds.files} & set(y11.calib.files) and len(probe_ds) == 3


def test_user_errors_name_the_problem(y11: Y11, calib500: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no QuantizeLinear"):
        QdqModel.load(y11.model.path)
    with pytest.raises(ModelError, match="not a quantized layer"):
        y11.qdq.with_excluded(["/model.99/nope"])
    # A probe folder holding only calibration images leaves nothing to probe.
    folder = tmp_path / "two"
    (folder / "images").mkdir(parents=True)
    data = json.loads((calib500 / "instances.json").read_text())
    chosen = data["images"][:2]
    for im in chosen:
        (folder / "images" / im["file_name"]).write_bytes((calib500 / "images" / im["file_name"]).read_bytes())
    ids = {im["id"] for im in chosen}
    data.update(images=chosen, annotations=[a for a in data["annotations"] if a["image_id"] in ids])
    (folder / "instances.json").write_text(json.dumps(data))
    calib = build_calibration(folder, 2, cache=y11.cache, size=SIZE)
    with pytest.raises(DataError, match="every image of"):
        probe_split(folder, calib, folder / "images", 10)
    with GraphMeter(y11.qdq, y11.cache) as meter:
        with pytest.raises(ConfigError, match="proxy"):
            meter.agreement(y11.qdq.group_names)
        with pytest.raises(ConfigError, match="probe"):
            meter.probe_score(y11.qdq.group_names)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("calibration_method", "minmax", "calibration_method='minmax' is not one of max, entropy"),
        ("high_precision_dtype", "int4", "high_precision_dtype='int4'"),
        ("proxy_images", 0, "proxy_images=0 is not a positive whole number"),
        ("probe_images", 2.5, "probe_images=2.5"),
        ("calib_images", True, "calib_images=True"),
        ("top_k", -1, "top_k=-1 is not a non-negative whole number"),
        ("imgsz", 100, "imgsz=100 is not a positive multiple of 32"),
        ("variant_name", "int8 auto", "variant_name='int8 auto'"),
        ("groups", "/model.0/conv/Conv", "is one string"),
        ("groups", [], "names no layer group"),
    ],
)
def test_analysis_options_refuse_bad_values(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        AnalysisOptions(**{field: value})
    assert AnalysisOptions(groups=["a", "b"]).groups == ("a", "b")  # any sequence, kept as a tuple


@pytest.mark.slow
def test_run_search_end_to_end_on_yolo11n(y11: Y11, calib500: Path, yolo11n_onnx: Path, tmp_path: Path) -> None:
    """Plumbing only (random weights score ~0 mAP): analysis, search, a verifying ModelOpt build, files."""
    subset = [f"{ATTN}/MatMul", DFL_CONV, "/model.0/conv/Conv"]
    out = tmp_path / "search"
    options = AnalysisOptions(calibration_method="max", calib_images=2, imgsz=SIZE, probe_images=3, proxy_images=2,
                              top_k=1, groups=subset, high_precision_dtype="fp16", batch_size=2)
    result = run_search(AnalysisInputs(yolo11n_onnx, calib500, calib500, y11.cache), out, budget=0.0,
                        options=options, progress=False)
    o = result.outcome
    assert o.steps[0].action == "start" and o.steps[-1].action == "verify"
    assert o.verified_score == o.steps[-1].score and o.met_budget == o.steps[-1].within_budget
    # The verifying build is the emitted variant itself: the found split, FP16 outside INT8 as deployed.
    assert result.build.options["high_precision_dtype"] == "fp16"
    assert set(result.build.excluded_nodes) == set(o.excluded)
    (variant,) = load_variants(Path(result.files["variant"]))
    assert variant.name == "int8-auto" and variant.high_precision_dtype == "fp16"
    assert {k: v for k, v in result.build.options.items() if k != "calibration"} == variant.options()
    # The probe scored that FP16 build with its float16 QuantizeLinears repaired in memory: the same
    # outputs as the bench's cached repaired copy.
    fp16_build = Path(result.build.onnx_path)
    assert fp16_quantize_nodes(onnx.load(str(fp16_build)))
    images = y11.calib.load()
    backend = OrtBackend()
    with backend.open(backend.build(fp16_build, BuildOptions(batch_sizes=(2,)), y11.cache)) as runner:
        np.testing.assert_array_equal(run_batches(fp16_build, images, 2)[0], runner.infer(images))
    assert Path(result.files["markdown"]).read_text().count("| verify |") == 1
    assert Path(result.files["curve"]).read_bytes()[:4] == b"\x89PNG"
    assert {p.name for p in out.iterdir()} >= {"sensitivity.md", "sensitivity.csv", "sensitivity.png",
                                               "search_state.json", "int8-auto.toml"}
