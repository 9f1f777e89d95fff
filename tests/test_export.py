"""export.py: ONNX validation, model sources, batch / input-side rewrites, export caching."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from quantbench.build.export import ModelInfo, resolve_model, validate_onnx
from quantbench.cache import ArtifactCache
from quantbench.errors import ModelError

YOLOV5N_SHA256 = "4682258423ba680cf5a76481bfcf006114423a50061c12953f2252a6d634176a"  # assets README


def _run(path: Path, batch: int, size: int) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return session.run(None, {name: np.zeros((batch, 3, size, size), np.float32)})[0]


def _tiny_detector(path: Path, output_shapes: list[list[int]], *, input_shape=(1, 3, 64, 64),
                   input_type=TensorProto.FLOAT, names: str | None = None) -> Path:
    """A small ONNX whose outputs are the input's mean broadcast to the given shapes."""
    nodes = [helper.make_node("ReduceMean", ["images"], ["mean"], name="mean", keepdims=0)]
    outputs, initializers = [], []
    for i, shape in enumerate(output_shapes):
        initializers.append(helper.make_tensor(f"shape{i}", TensorProto.INT64, [len(shape)], shape))
        nodes.append(helper.make_node("Expand", ["mean", f"shape{i}"], [f"output{i}"], name=f"expand{i}"))
        outputs.append(helper.make_tensor_value_info(f"output{i}", TensorProto.FLOAT, shape))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("images", input_type, list(input_shape))],
                              outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if names is not None:
        helper.set_model_props(model, {"names": names})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


# --- validate_onnx on real detectors ------------------------------------------------------------

def test_validate_yolov5n_coco(yolov5n_onnx: Path):
    info = validate_onnx(yolov5n_onnx)
    assert info.name == "yolov5n-coco"
    assert info.sha256 == YOLOV5N_SHA256
    assert (info.input_name, info.output_name) == ("images", "output0")
    assert (info.input_size, info.batch) == (640, None)
    assert (info.num_classes, info.num_anchors) == (80, 25200)
    assert info.class_names[:3] == ("person", "bicycle", "car") and info.class_names[-1] == "toothbrush"
    assert info.untrained is False


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["yolo11n_onnx", "yolo11s_onnx"])
def test_validate_yolo11_graphs(fixture: str, request: pytest.FixtureRequest):
    path = request.getfixturevalue(fixture)
    info = validate_onnx(path, untrained=True)
    # Ultralytics' dynamic export: batch, height and width symbolic; size from its imgsz metadata,
    # classes and anchors from symbolic shape inference of the graph.
    assert info.name == fixture.removesuffix("_onnx")
    assert (info.input_size, info.batch) == (640, None)
    assert (info.num_classes, info.num_anchors) == (80, 8400)
    # An untrained YAML model's metadata names its classes '0'..'79': read from there, not made up.
    assert info.class_names == tuple(str(i) for i in range(80))
    assert info.untrained is True


# --- validate_onnx refusals ---------------------------------------------------------------------

def test_missing_file_is_a_model_error(tmp_path: Path):
    missing = tmp_path / "nope.onnx"
    with pytest.raises(ModelError, match="nope.onnx does not exist"):
        validate_onnx(missing)


@pytest.mark.parametrize("content", [b"hello, not a model", bytes(range(256)) * 8])
def test_non_onnx_file_is_a_model_error(tmp_path: Path, content: bytes):
    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(content)
    with pytest.raises(ModelError, match=r"model\.onnx is not an ONNX model"):
        validate_onnx(bogus)


def test_jpeg_named_onnx_is_a_model_error(tmp_path: Path, val500: Path):
    bogus = tmp_path / "photo.onnx"
    bogus.write_bytes(next((val500 / "images").glob("*.jpg")).read_bytes())
    with pytest.raises(ModelError, match="not an ONNX model"):
        validate_onnx(bogus)


def test_tiny_yolo11_layout_is_accepted_with_default_class_names(tmp_path: Path):
    info = validate_onnx(_tiny_detector(tmp_path / "tiny.onnx", [[1, 7, 84]], input_shape=(1, 3, 64, 64)))
    assert (info.num_classes, info.num_anchors, info.batch, info.input_size) == (3, 84, 1, 64)
    assert info.class_names == ("class0", "class1", "class2")


def test_transposed_output_is_refused(tmp_path: Path):
    path = _tiny_detector(tmp_path / "transposed.onnx", [[1, 8400, 84]])
    with pytest.raises(ModelError) as err:
        validate_onnx(path)
    message = str(err.value)
    assert "transposed.onnx" in message and "[1, 8400, 84]" in message
    assert "[batch, 4 + classes, anchors]" in message and "YOLO11-style head" in message


def test_two_outputs_are_refused(tmp_path: Path):
    path = _tiny_detector(tmp_path / "two.onnx", [[1, 84, 8400], [1, 32, 160, 160]])
    with pytest.raises(ModelError, match=r"two\.onnx has 2 outputs .*\[1, 32, 160, 160\].*expects one output"):
        validate_onnx(path)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"input_shape": (1, 3, 64, 32)}, "64x32; quantbench needs a square input"),
        ({"input_shape": (1, 64, 64, 3)}, r"\[1, 64, 64, 3\]; quantbench needs float32 \[batch, 3, size, size\]"),
        ({"input_type": TensorProto.FLOAT16}, r"float16 \[1, 3, 64, 64\]"),
        ({"names": "{0: 'a', 1: 'b'}"}, "lists 2 classes but the output has 80"),
        ({"names": "not a dict ["}, "metadata 'names' is not a Python dict"),
    ],
)
def test_bad_interfaces_are_refused(tmp_path: Path, kwargs: dict, match: str):
    path = _tiny_detector(tmp_path / "bad.onnx", [[1, 84, 8400]], **kwargs)
    with pytest.raises(ModelError, match=match):
        validate_onnx(path)


# --- resolve_model --------------------------------------------------------------------------------

def test_onnx_source_is_used_as_given(yolov5n_onnx: Path, cache: ArtifactCache):
    info = resolve_model(yolov5n_onnx, cache)
    assert info.path == yolov5n_onnx and info.batch is None
    assert not cache.root.exists() or not any(cache.root.rglob("*.onnx"))


def test_batch_rewrite_goes_to_a_cached_copy(yolov5n_onnx: Path, cache: ArtifactCache):
    before = hashlib.sha256(yolov5n_onnx.read_bytes()).hexdigest()
    info = resolve_model(yolov5n_onnx, cache, batch=2)
    assert info.batch == 2 and info.name == "yolov5n-coco"
    assert cache.root in info.path.parents and info.sha256 != YOLOV5N_SHA256
    assert (info.num_classes, info.num_anchors, info.class_names[0]) == (80, 25200, "person")
    assert _run(info.path, 2, 640).shape == (2, 84, 25200)
    assert resolve_model(yolov5n_onnx, cache, batch=2).path == info.path  # found, not rebuilt
    assert hashlib.sha256(yolov5n_onnx.read_bytes()).hexdigest() == before

    # The fixed-batch copy cannot be re-fixed to another size, only to its own.
    with pytest.raises(ModelError, match="fixed batch of 2 but batch=4 was asked"):
        resolve_model(info.path, cache, batch=4)
    assert resolve_model(info.path, cache, batch=2).path == info.path


def test_fixed_side_mismatch_is_refused(yolov5n_onnx: Path, cache: ArtifactCache):
    with pytest.raises(ModelError, match="fixed 640x640 input but this run uses 320x320 inputs; re-export the model "
                       "at imgsz=320 or with dynamic=True."):
        resolve_model(yolov5n_onnx, cache, imgsz=320)


def test_dynamic_side_is_fixed_to_imgsz(yolo11n_onnx: Path, cache: ArtifactCache):
    info = resolve_model(yolo11n_onnx, cache, imgsz=320)
    assert (info.input_size, info.num_anchors, info.batch) == (320, 2100, None)
    dims = [d.dim_value or d.dim_param for d in onnx.load(str(info.path)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 320, 320]
    assert _run(info.path, 1, 320).shape == (1, 84, 2100)


@pytest.mark.parametrize(("source", "match"), [
    ("model.h5", "is not .onnx, .pt or .yaml"),
    ("some/folder/yolo11n.pt", "does not exist"),
    ("some/folder/yolo11n.yaml", "does not exist"),
    ("yolo99q.yaml", "neither a file nor one of Ultralytics' packaged models"),
])
def test_bad_sources_are_refused(source: str, match: str, cache: ArtifactCache):
    with pytest.raises(ModelError, match=match):
        resolve_model(source, cache)


@pytest.mark.parametrize(("kwargs", "match"), [({"imgsz": 300}, "imgsz=300"), ({"batch": 0}, "batch=0")])
def test_bad_sizes_are_refused(yolov5n_onnx: Path, cache: ArtifactCache, kwargs: dict, match: str):
    with pytest.raises(ModelError, match=match):
        resolve_model(yolov5n_onnx, cache, **kwargs)


@pytest.mark.slow
def test_yaml_export_is_cached(cache: ArtifactCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    ultralytics = pytest.importorskip("ultralytics")
    real_yolo = ultralytics.YOLO
    calls: list[str] = []

    def counting_yolo(model, *args, **kwargs):
        calls.append(str(model))
        return real_yolo(model, *args, **kwargs)

    monkeypatch.setattr(ultralytics, "YOLO", counting_yolo)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)  # Ultralytics writes YAML exports into the cwd: it must stay empty
    first = resolve_model("yolo11n.yaml", cache)
    second = resolve_model("yolo11n.yaml", cache)
    assert calls == ["yolo11n.yaml"]  # the second resolve built nothing
    assert first == second
    assert isinstance(first, ModelInfo) and first.untrained and first.name == "yolo11n"
    assert (first.input_size, first.num_anchors, first.batch) == (640, 8400, None)
    assert cache.root in first.path.parents
    assert list(workdir.iterdir()) == []


@pytest.mark.slow
def test_pt_export_never_writes_beside_the_source(cache: ArtifactCache, tmp_path: Path):
    ultralytics = pytest.importorskip("ultralytics")
    source = tmp_path / "weights" / "mynet.pt"
    source.parent.mkdir()
    ultralytics.YOLO("yolo11n.yaml").save(str(source))  # a real checkpoint (random weights)
    before = hashlib.sha256(source.read_bytes()).hexdigest()
    info = resolve_model(source, cache, batch=1)
    assert info.name == "mynet" and info.untrained is False  # a .pt is taken as trained
    assert (info.batch, info.num_anchors) == (1, 8400)
    assert sorted(p.name for p in source.parent.iterdir()) == ["mynet.pt"]
    assert hashlib.sha256(source.read_bytes()).hexdigest() == before
    assert _run(info.path, 1, 640).shape == (1, 84, 8400)


def test_bare_pt_name_resolves_or_says_why(cache: ArtifactCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Ultralytics downloads yolo11n.pt where there is internet; offline the failure is one sentence."""
    pytest.importorskip("ultralytics")
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)  # a download must land in the cache, not in the cwd
    try:
        info = resolve_model("yolo11n.pt", cache)
    except ModelError as exc:
        assert "could not fetch 'yolo11n.pt' through Ultralytics" in str(exc)
        assert "pass their path" in str(exc)
    else:
        assert (info.name, info.num_anchors, info.class_names[0]) == ("yolo11n", 8400, "person")
    assert list(workdir.iterdir()) == []


def test_unknown_bare_pt_name_is_refused(cache: ArtifactCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("ultralytics")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match="'no-such-model-xyz.pt' is neither a file nor an Ultralytics release asset"):
        resolve_model("no-such-model-xyz.pt", cache)


def test_output_shape_that_cannot_be_inferred_is_refused(tmp_path: Path):
    # A dynamic-size model whose head is an op no shape inference knows: the anchor count is unknowable.
    node = helper.make_node("Foo", ["images"], ["output0"], name="foo", domain="com.example")
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, "h", "w"])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, "rows", "anchors"])],
    )
    path = tmp_path / "custom.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]),
              str(path))
    with pytest.raises(ModelError, match=r"output shape of .*custom\.onnx cannot be inferred for a 640x640 input"):
        validate_onnx(path)
