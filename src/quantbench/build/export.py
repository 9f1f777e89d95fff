"""Model sources -> one validated base ONNX with a fixed square input.

Sources:

- ``.onnx``: used as given (validated; rewritten to a cached copy only when its input side is
  dynamic or a fixed batch size is asked for).
- ``.pt``: exported through Ultralytics. A path is copied into a scratch folder first, because
  Ultralytics writes the export beside the model it loaded. A bare name (``yolo11n.pt``) is
  fetched by Ultralytics (GitHub release assets) into the cache; offline that fails with a
  ``ModelError``.
- ``.yaml``: an untrained model (random weights) built by Ultralytics, either from a path or from
  a name of Ultralytics' packaged model YAMLs (``yolo11n.yaml`` = ``yolo11.yaml`` at scale n).

Exports are cached by content: source bytes (or the packaged YAML's bytes and the scale its name
selects) + Ultralytics and torch versions + export options. Every ONNX, whatever its source,
passes ``validate_onnx``: one float32 NCHW square input, one output ``[batch, 4 + classes,
anchors]`` (the YOLO11 convention). Output dimensions that an export leaves symbolic are resolved
by ONNX Runtime's symbolic shape inference, a graph analysis that runs no inference.
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from quantbench.argtypes import is_count
from quantbench.cache import ArtifactCache, hash_key, sha256_file
from quantbench.errors import ModelError
from quantbench.build.onnx_graph import dims, graph_inputs, load_graph, metadata, metadata_imgsz

DEFAULT_IMGSZ = 640
BOX_ROWS = 4  # cx, cy, w, h rows before the class scores
EXPECTED_OUTPUT = "[batch, 4 + classes, anchors] (e.g. [1, 84, 8400])"
OUTPUT_FIX = (
    "export the model with Ultralytics (format='onnx', nms=False) or give it a YOLO11-style head "
    "whose single output is " + EXPECTED_OUTPUT
)
_YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class ModelInfo:
    """A validated detector ONNX and the facts every later stage needs about it."""

    name: str  # id for test ids/records, e.g. "yolov5n-coco", "yolo11n"
    path: Path
    sha256: str
    input_name: str
    output_name: str
    input_size: int  # square input side, e.g. 640
    batch: int | None  # None = dynamic batch axis
    num_classes: int
    num_anchors: int
    class_names: tuple[str, ...]
    untrained: bool  # built from a .yaml (random weights)


# ---------------------------------------------------------------------------------------------
# Validation


def _shape_text(dims: list[int | str | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _load_onnx(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist; check the path or export the model first.")
    try:
        # Weights are not needed to check the interface; external data stays on disk.
        model = load_graph(path)
    except Exception as exc:  # protobuf's DecodeError and friends: the bytes are not an ONNX model
        raise ModelError(
            f"{path} is not an ONNX model ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "give an .onnx file exported from the detector, or its .pt/.yaml."
        ) from exc
    # Arbitrary bytes sometimes parse as an empty protobuf: a model without graph nodes is not one.
    if not model.graph.node or not model.graph.output:
        raise ModelError(
            f"{path} is not an ONNX model (no graph nodes or outputs); give an .onnx file exported from the detector."
        )
    return model


def _class_names(path: Path, meta: dict[str, str], num_classes: int) -> tuple[str, ...]:
    text = meta.get("names")
    if text is None:
        return tuple(f"class{i}" for i in range(num_classes))
    try:
        # Ultralytics stores the names dict as its Python repr: {0: 'person', 1: 'bicycle', ...}
        names = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ModelError(
            f"{path}: metadata 'names' is not a Python dict or list literal; "
            "fix it to {0: 'person', ...} or remove it to get class0..classN."
        ) from None
    if isinstance(names, dict):
        try:
            ordered = [str(names[i]) for i in range(len(names))]
        except KeyError:
            raise ModelError(
                f"{path}: metadata 'names' keys are not 0..{len(names) - 1}; fix the metadata or remove it."
            ) from None
    elif isinstance(names, (list, tuple)):
        ordered = [str(n) for n in names]
    else:
        raise ModelError(f"{path}: metadata 'names' is a {type(names).__name__}, not a dict; fix or remove it.")
    if len(ordered) != num_classes:
        raise ModelError(
            f"{path}: metadata 'names' lists {len(ordered)} classes but the output has {num_classes} "
            "class rows; re-export the model so its metadata matches its head."
        )
    return tuple(ordered)


def _infer_output_dims(model: onnx.ModelProto, size: int, path: Path) -> list[int | str | None]:
    """The output's dims with the input side fixed to ``size`` (batch stays symbolic)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    side_dims = graph_inputs(probe)[0].type.tensor_type.shape.dim
    side_dims[2].Clear()
    side_dims[2].dim_value = size
    side_dims[3].Clear()
    side_dims[3].dim_value = size
    # ONNX's own inference with data propagation settles YOLO heads in a fraction of a second;
    # ONNX Runtime's symbolic inference (which imports torch: ~6 s) is the fallback.
    try:
        quick = dims(onnx.shape_inference.infer_shapes(probe, data_prop=True).graph.output[0])
        if len(quick) == 3 and isinstance(quick[1], int) and isinstance(quick[2], int):
            return quick
    except Exception:  # onnx's checker raises on exotic graphs: leave them to the fallback
        pass
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    try:
        inferred = SymbolicShapeInference.infer_shapes(probe, auto_merge=True)
    except Exception as exc:  # its failures are asserts and KeyErrors deep in per-op handlers
        raise ModelError(
            f"the output shape of {path} cannot be inferred for a {size}x{size} input "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "export it with fixed sizes (dynamic=False) so its output shape is written in the file."
        ) from exc
    return dims(inferred.graph.output[0])


def _image_input(model: onnx.ModelProto, path: Path) -> tuple[onnx.ValueInfoProto, list[int | str | None]]:
    """The one float32 NCHW input with 3 (or symbolic) channels, and its dims."""
    inputs = graph_inputs(model)
    if len(inputs) != 1:
        raise ModelError(
            f"{path} has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); quantbench needs one "
            "image input [batch, 3, size, size]; export the detector alone, without extra inputs."
        )
    inp = inputs[0]
    in_dims = dims(inp)
    elem = inp.type.tensor_type.elem_type
    if elem != onnx.TensorProto.FLOAT or len(in_dims) != 4 or in_dims[1] not in (3, None):
        raise ModelError(
            f"{path}: input {inp.name!r} is {onnx.TensorProto.DataType.Name(elem).lower()} {_shape_text(in_dims)}; "
            "quantbench needs float32 [batch, 3, size, size] (NCHW); export the FP32 model with Ultralytics."
        )
    return inp, in_dims


def _input_side(model: onnx.ModelProto, inp: onnx.ValueInfoProto, in_dims: list[int | str | None], path: Path) -> int:
    """The square side: fixed in the input, or (both sides dynamic) what the export's metadata says."""
    height, width = in_dims[2], in_dims[3]
    if isinstance(height, int) and isinstance(width, int):
        if height != width:
            raise ModelError(
                f"{path}: input {inp.name!r} is {height}x{width}; quantbench needs a square input; "
                "export with a single imgsz (e.g. imgsz=640)."
            )
        return height
    if isinstance(height, int) or isinstance(width, int):
        raise ModelError(
            f"{path}: input {inp.name!r} has one fixed and one dynamic side {_shape_text(in_dims)}; "
            "export with both sides fixed (imgsz=640) or both dynamic (dynamic=True)."
        )
    # A dynamic-size export: its own metadata says which size it was made for.
    made_for = metadata_imgsz(model)
    return made_for[0] if made_for is not None and made_for[0] == made_for[1] else DEFAULT_IMGSZ


def _detection_output(model: onnx.ModelProto, size: int, path: Path) -> tuple[onnx.ValueInfoProto, int, int]:
    """The one float32 ``[batch, 4 + classes, anchors]`` output, its row and anchor counts at ``size``."""
    outputs = list(model.graph.output)
    if len(outputs) != 1:
        found = ", ".join(f"{o.name} {_shape_text(dims(o))}" for o in outputs)
        raise ModelError(
            f"{path} has {len(outputs)} outputs ({found}) but quantbench expects one output {EXPECTED_OUTPUT}; {OUTPUT_FIX}."
        )
    out = outputs[0]
    out_dims = dims(out)
    if len(out_dims) == 3 and not (isinstance(out_dims[1], int) and isinstance(out_dims[2], int)):
        out_dims = _infer_output_dims(model, size, path)
    rows, anchors = out_dims[1:3] if len(out_dims) == 3 else (None, None)
    # YOLO11 puts classes on axis 1 and anchors (thousands) on axis 2; the transposed layout
    # [batch, anchors, 4 + classes] of other exporters is refused here, not mis-decoded later.
    if not (isinstance(rows, int) and isinstance(anchors, int)) or rows <= BOX_ROWS or rows >= anchors:
        raise ModelError(
            f"{path}: output {out.name!r} is {_shape_text(out_dims)} but quantbench expects {EXPECTED_OUTPUT}; {OUTPUT_FIX}."
        )
    if out.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise ModelError(
            f"{path}: output {out.name!r} is {onnx.TensorProto.DataType.Name(out.type.tensor_type.elem_type).lower()}; "
            "quantbench needs a float32 output; export the FP32 model."
        )
    return out, rows, anchors


def validate_onnx(path: Path, *, untrained: bool = False, name: str | None = None) -> ModelInfo:
    """Check that ``path`` is a YOLO-style detector ONNX and describe it.

    Raises ``ModelError`` (naming the file, what was found, what is expected and the fix) for a
    missing file, bytes that are not ONNX, anything but one float32 NCHW square input, or anything
    but one ``[batch, 4 + classes, anchors]`` output.
    """
    path = Path(path)
    model = _load_onnx(path)
    inp, in_dims = _image_input(model, path)
    size = _input_side(model, inp, in_dims, path)
    out, rows, anchors = _detection_output(model, size, path)
    num_classes = rows - BOX_ROWS
    return ModelInfo(
        name=name or path.stem,
        path=path,
        sha256=sha256_file(path),
        input_name=inp.name,
        output_name=out.name,
        input_size=size,
        batch=in_dims[0] if isinstance(in_dims[0], int) else None,
        num_classes=num_classes,
        num_anchors=anchors,
        class_names=_class_names(path, metadata(model), num_classes),
        untrained=untrained,
    )


# ---------------------------------------------------------------------------------------------
# Fixing the input side and the batch axis


def _set_dims(value_info: onnx.ValueInfoProto, values: list[int | str]) -> None:
    shape = value_info.type.tensor_type.shape
    del shape.dim[:]
    for d in values:
        new = shape.dim.add()
        if isinstance(d, int):
            new.dim_value = d
        else:
            new.dim_param = d


def _write_shaped_copy(info: ModelInfo, size: int, batch: int | None, dest: Path) -> None:
    model = onnx.load(str(info.path))
    batch_dim: int | str = batch if batch is not None else "batch"
    _set_dims(graph_inputs(model)[0], [batch_dim, 3, size, size])
    # value_info only caches shape inference; stale symbolic dims there would contradict the new
    # interface, and every consumer (ORT, ModelOpt, TensorRT) re-infers shapes anyway.
    del model.graph.value_info[:]
    # The anchor count depends on the side: infer it for ``size``, not for the export's own size.
    out_dims = _infer_output_dims(model, size, info.path)
    _set_dims(model.graph.output[0], [batch_dim, out_dims[1], out_dims[2]])
    onnx.save(model, str(dest))


def _with_fixed_shape(info: ModelInfo, cache: ArtifactCache, imgsz: int, batch: int | None) -> ModelInfo:
    """``info`` itself, or a cached copy with a static square side and, if asked, a fixed batch."""
    in_dims = dims(graph_inputs(load_graph(info.path))[0])
    dynamic_side = not isinstance(in_dims[2], int)
    if not dynamic_side and info.input_size != imgsz:
        raise ModelError(
            f"{info.path} has a fixed {info.input_size}x{info.input_size} input but imgsz={imgsz} was asked; "
            f"pass imgsz={info.input_size} or re-export the model with dynamic=True."
        )
    if batch is not None and info.batch is not None and batch != info.batch:
        raise ModelError(
            f"{info.path} has a fixed batch of {info.batch} but batch={batch} was asked; "
            f"pass batch={info.batch} or re-export the model with dynamic=True."
        )
    if not dynamic_side and (batch is None or batch == info.batch):
        return info
    key = hash_key("shape", info.sha256, imgsz, batch)

    def build(tmp: Path) -> dict[str, Any]:
        _write_shaped_copy(info, imgsz, batch, tmp)
        return {"source": str(info.path), "source_sha256": info.sha256, "imgsz": imgsz, "batch": batch}

    entry = cache.get_or_build("onnx", key, ".onnx", build)
    return validate_onnx(entry.path, untrained=info.untrained, name=info.name)


# ---------------------------------------------------------------------------------------------
# Ultralytics export


@contextlib.contextmanager
def _working_dir(path: Path) -> Iterator[None]:
    # Ultralytics writes a YAML model's export into the current directory; contained here.
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _ultralytics():
    try:
        import ultralytics
    except ImportError:
        raise ModelError(
            "exporting .pt/.yaml models needs Ultralytics; install it with `pip install quantbench[export]` "
            "or give an .onnx file."
        ) from None
    return ultralytics


def _export_versions() -> dict[str, str]:
    import torch

    return {"ultralytics": _ultralytics().__version__, "torch": torch.__version__, "onnx": onnx.__version__}


def _packaged_yaml(name: str) -> Path:
    """Ultralytics' own YAML for a bare name, the way ``yaml_model_load`` finds it."""
    from ultralytics.utils.checks import check_yaml

    unified = re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", name)  # yolo11n.yaml -> yolo11.yaml
    try:
        found = check_yaml(name, hard=False) or check_yaml(unified)
    except FileNotFoundError:
        found = None
    if not found or not Path(found).is_file():
        raise ModelError(
            f"model YAML {name!r} is neither a file nor one of Ultralytics' packaged models; "
            "check the path or use a packaged name such as yolo11n.yaml."
        )
    return Path(found)


def _fetch_weights(name: str, cache: ArtifactCache, versions: dict[str, str]) -> Path:
    """A bare ``.pt`` name fetched by Ultralytics once, kept in the cache."""
    from ultralytics.utils.downloads import attempt_download_asset

    def build(tmp: Path) -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="quantbench-fetch-") as scratch, _working_dir(Path(scratch)):
            try:
                got = Path(attempt_download_asset(name))
            except OSError as exc:  # ConnectionError (offline), disk errors
                raise ModelError(
                    f"could not fetch {name!r} through Ultralytics ({str(exc).splitlines()[0]}); "
                    "download the weights yourself and pass their path, or use the .yaml for an untrained model."
                ) from exc
            got = got if got.is_absolute() else Path(scratch) / got
            if not got.is_file():
                raise ModelError(
                    f"{name!r} is neither a file nor an Ultralytics release asset; check the name or pass a path."
                )
            shutil.copyfile(got, tmp)
        return {"name": name, "sha256": sha256_file(tmp)}

    return cache.get_or_build("weights", hash_key("weights", name, versions["ultralytics"]), ".pt", build).path


def _export_with_ultralytics(source: str, stem: str, source_hash: str, cache: ArtifactCache, imgsz: int) -> Path:
    """Export ``source`` (a .pt path or a YAML path/name) to ONNX in a scratch folder, cached."""
    versions = _export_versions()
    options = {"format": "onnx", "imgsz": imgsz, "dynamic": True, "simplify": False}
    key = hash_key("export", source_hash, stem, versions, options)

    def build(tmp: Path) -> dict[str, Any]:
        from ultralytics import YOLO

        with tempfile.TemporaryDirectory(prefix="quantbench-export-") as scratch, _working_dir(Path(scratch)):
            model_arg = source
            if Path(source).suffix == ".pt":
                # Ultralytics writes <model>.onnx beside the .pt it loaded: load a private copy.
                model_arg = str(Path(scratch) / f"{stem}.pt")
                shutil.copyfile(source, model_arg)
            try:
                exported = YOLO(model_arg).export(**options, verbose=False)
            except Exception as exc:  # torch/Ultralytics raise anything from KeyError to RuntimeError
                raise ModelError(
                    f"Ultralytics could not export {source} to ONNX ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}); check the model file and the Ultralytics version."
                ) from exc
            exported_path = Path(exported)
            if not exported_path.is_absolute():
                exported_path = Path(scratch) / exported_path
            shutil.copyfile(exported_path, tmp)
        return {"source": source, "source_sha256": source_hash, "options": options, **versions}

    return cache.get_or_build("export", key, ".onnx", build).path


def resolve_model(
    source: str | Path, cache: ArtifactCache, *, imgsz: int = DEFAULT_IMGSZ, batch: int | None = None
) -> ModelInfo:
    """Turn a model source (.onnx, .pt, .yaml; path or Ultralytics name) into a validated base ONNX.

    The result has a static ``imgsz`` square input and either a dynamic batch axis
    (``batch=None``) or a fixed one. Nothing is written beside the source: exports and shape
    rewrites live in ``cache``.
    """
    if not is_count(imgsz, 32) or imgsz % 32:
        raise ModelError(f"imgsz={imgsz!r} is not a positive multiple of 32; use e.g. imgsz=640.")
    if batch is not None and not is_count(batch):
        raise ModelError(f"batch={batch!r} is not a positive whole number; use e.g. batch=1, or None for dynamic.")
    text = str(source)
    path = Path(text).expanduser()
    suffix = path.suffix.lower()
    stem = path.stem
    # A bare name (no folder) may be an Ultralytics asset; anything with a folder must exist.
    bare_name = path.parent == Path(".") and not path.exists()

    if suffix == ".onnx":
        info = validate_onnx(path, name=stem)
    elif suffix == ".pt":
        if path.is_file():
            pt = path
        elif bare_name:
            pt = _fetch_weights(text, cache, _export_versions())
        else:
            raise ModelError(f"model file {path} does not exist; check the path or give an Ultralytics name like yolo11n.pt.")
        onnx_path = _export_with_ultralytics(str(pt.resolve()), stem, sha256_file(pt), cache, imgsz)
        info = validate_onnx(onnx_path, name=stem)
    elif suffix in _YAML_SUFFIXES:
        _ultralytics()
        if path.is_file():
            yaml_path, model_arg = path, str(path.resolve())
        elif bare_name:
            yaml_path, model_arg = _packaged_yaml(text), text
        else:
            raise ModelError(f"model file {path} does not exist; check the path or give a packaged name like yolo11n.yaml.")
        # The stem is part of the key: Ultralytics picks the model scale (n/s/m/l/x) from it.
        onnx_path = _export_with_ultralytics(model_arg, stem, sha256_file(yaml_path), cache, imgsz)
        info = validate_onnx(onnx_path, untrained=True, name=stem)
    else:
        raise ModelError(f"model source {text!r} is not .onnx, .pt or .yaml; give one of those.")
    return _with_fixed_shape(info, cache, imgsz, batch)
