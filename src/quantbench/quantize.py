"""Variant ONNX builds through NVIDIA ModelOpt: FP16 AutoCast and INT8 Q/DQ PTQ, cached.

- ``fp32``: the base ONNX itself; ModelOpt is not called.
- ``fp16``: ``modelopt.onnx.autocast.convert_to_mixed_precision`` with float32 inputs/outputs
  kept (the pipeline around the model is unchanged). AutoCast keeps a node in FP32 when its
  values exceed FP16-safe ranges on reference data; that data is the calibration images, because
  ModelOpt's fallback (uniform noise) inflates early activations and strands the first convs.
- ``int8``: ``modelopt.onnx.quantization.quantize`` on real calibration images only (ModelOpt
  silently calibrates on random data when given none: refused here), calibrated on the CPU
  execution provider so the scales, and the cache key, do not depend on the machine.

ModelOpt overwrites its input file and leaves intermediate files beside it, so it always runs on a
private copy in a scratch folder. Builds are cached under ``variants/<key>.onnx`` where the key
hashes the base model's sha256, the variant's options, the calibration tensor's sha256 and the
ModelOpt / ONNX Runtime / ONNX versions; ``ArtifactCache`` publishes atomically under a file lock.
"""

from __future__ import annotations

import contextlib

import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from .cache import ArtifactCache, hash_key, sha256_file
from .errors import ModelError, QuantizeError
from .export import ModelInfo, validate_onnx
from .records import VariantBuild
from .variants import Variant, VariantKind

if TYPE_CHECKING:
    from .calibration import CalibrationSet

log = logging.getLogger(__name__)

CACHE_KIND = "variants"
# Calibration runs on the CPU EP everywhere: EP-independent scales and no cuDNN/TensorRT EP
# surprises inside ModelOpt's sessions (Ultralytics does the same for the same reasons).
CALIBRATION_EPS = ("cpu",)
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
# Ops that read only their input's shape, not its values: data does not flow through them.
_SHAPE_ONLY_OPS = frozenset({"Shape", "Size"})
# Layout-only ops allowed between DFL's Softmax and its fixed 1x1 conv.
_LAYOUT_OPS = frozenset({"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})


def modelopt_version() -> str:
    return dist_version("nvidia-modelopt")


def _tool_versions() -> dict[str, str]:
    import onnxruntime

    return {"modelopt": modelopt_version(), "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__}


# ---------------------------------------------------------------------------------------------
# Graph analysis


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output if out}


def _is_dfl_conv(node: onnx.NodeProto, producers: dict[str, onnx.NodeProto]) -> bool:
    """DFL's fixed conv: a Conv fed, through layout ops only, by a Softmax over the box bins."""
    tensor = node.input[0]
    while tensor in producers:
        source = producers[tensor]
        if source.op_type == "Softmax":
            return True
        if source.op_type not in _LAYOUT_OPS:
            return False
        tensor = source.input[0]
    return False


def head_nodes(model: onnx.ModelProto) -> tuple[str, ...]:
    """The detection head's output convolutions (and DFL's conv, where there is one).

    Walks back from the graph outputs through every non-Conv node (box decoding, sigmoid,
    concat, reshape) and stops at the first Conv on each path: those convs produce the raw box and
    class maps. DFL's softmax-weighted 1x1 conv sits between the box convs and the output, so the
    walk goes through it and also reaches YOLO11's ``cv2.*.2`` box convs. This finds what
    Ultralytics' INT8 export excludes by name (``.*\\.2/Conv$`` and ``.*/dfl/``) in YOLO11, and
    the three ``Detect.m`` convs of YOLOv5, without relying on names.
    """
    graph = model.graph
    producers = _producers(graph)
    found: dict[str, None] = {}  # ordered set
    seen: set[str] = set()
    stack = [out.name for out in graph.output]
    while stack:
        tensor = stack.pop()
        node = producers.get(tensor)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in _SHAPE_ONLY_OPS:
            continue
        if node.op_type == "Conv":
            found[node.name] = None
            if not _is_dfl_conv(node, producers):
                continue
            stack.append(node.input[0])  # through DFL to the box convs; weights are initializers
            continue
        stack.extend(i for i in node.input if i)
    unnamed = [name for name in found if not name]
    if unnamed:
        raise ModelError("the detection head has unnamed Conv nodes; re-export the model so every node has a name.")
    return tuple(sorted(found))


def matching_nodes(model: onnx.ModelProto, patterns: Iterable[str]) -> tuple[str, ...]:
    """Node names matched by ModelOpt-style patterns (``re.match``, i.e. anchored at the start)."""
    compiled = [re.compile(p) for p in patterns]
    return tuple(sorted(n.name for n in model.graph.node if any(c.match(n.name) for c in compiled)))


def exact_name_pattern(name: str) -> str:
    """A regex that ModelOpt's ``re.match`` resolves to exactly this node name."""
    return re.escape(name) + "$"


def count_quantized_nodes(model: onnx.ModelProto) -> int:
    """Nodes (other than Q/DQ themselves) that read at least one DequantizeLinear output."""
    dq_outputs = {out for node in model.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    return sum(
        1 for node in model.graph.node
        if node.op_type not in QDQ_OPS and any(i in dq_outputs for i in node.input)
    )


# ---------------------------------------------------------------------------------------------
# Builds


def _missing_calibration(model: ModelInfo, variant: Variant) -> QuantizeError:
    return QuantizeError(
        f"variant {variant.name!r} ({variant.kind.value}) of model {model.name} needs calibration images and got "
        "none; pass a CalibrationSet from quantbench.calibration.build_calibration (ModelOpt would use random data)."
    )


def _usable_images(model: ModelInfo, calib: CalibrationSet) -> int:
    """How many calibration images the build uses; refuses a set that does not fit the model."""
    if calib.size != model.input_size:
        raise QuantizeError(
            f"calibration tensor {calib.path} is {calib.size}x{calib.size} but model {model.name} takes "
            f"{model.input_size}x{model.input_size}; rebuild the calibration with size={model.input_size}."
        )
    step = model.batch or 1
    usable = (calib.num_images // step) * step  # a fixed batch axis takes whole batches only
    if usable == 0:
        raise QuantizeError(
            f"model {model.name} has a fixed batch of {step} but calibration {calib.path} holds only "
            f"{calib.num_images} images; calibrate on at least {step} images."
        )
    return usable


def _excluded_nodes(base: onnx.ModelProto, variant: Variant) -> tuple[str, ...]:
    """Node names the variant keeps out on purpose: its name patterns plus, if asked, the head."""
    names = set(matching_nodes(base, variant.nodes_to_exclude))
    if variant.exclude_head:
        names.update(head_nodes(base))
    return tuple(sorted(names))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _run_int8(src: Path, out: Path, model: ModelInfo, variant: Variant, data: np.ndarray, excluded: Sequence[str]) -> None:
    from modelopt.onnx.quantization import quantize

    kwargs: dict[str, Any] = {}
    if variant.passes is not None:
        kwargs["passes"] = list(variant.passes)
    quantize(
        onnx_path=str(src),
        quantize_mode="int8",
        calibration_data={model.input_name: data},
        calibration_method=variant.calibration_method,
        calibration_shapes=f"{model.input_name}:{model.batch or 1}x3x{model.input_size}x{model.input_size}",
        calibration_eps=list(CALIBRATION_EPS),
        op_types_to_exclude=list(variant.op_types_to_exclude) or None,
        op_types_to_quantize=list(variant.op_types_to_quantize) or None,
        nodes_to_exclude=[exact_name_pattern(n) for n in excluded] or None,
        high_precision_dtype=variant.high_precision_dtype,
        calibrate_per_node=variant.calibrate_per_node,
        output_path=str(out),
        log_level="WARNING",
        **kwargs,
    )


def _run_fp16(src: Path, out: Path, model: ModelInfo, variant: Variant, data: np.ndarray, excluded: Sequence[str],
              scratch: Path) -> None:
    from modelopt.onnx.autocast import configure_logging, convert_to_mixed_precision

    configure_logging("WARNING")
    # AutoCast reads several reference batches from a folder of .npz files and aggregates their
    # ranges: one batch in memory at a time instead of every activation of every image.
    reference = scratch / "reference"
    reference.mkdir()
    step = model.batch or 1
    for i in range(0, len(data), step):
        np.savez(reference / f"{i:06d}.npz", **{model.input_name: data[i:i + step]})
    converted = convert_to_mixed_precision(
        onnx_path=str(src),
        low_precision_type="fp16",
        nodes_to_exclude=[exact_name_pattern(n) for n in excluded] or None,
        op_types_to_exclude=list(variant.op_types_to_exclude) or None,
        keep_io_types=True,
        calibration_data=str(reference),
        providers=list(CALIBRATION_EPS),
    )
    onnx.save(converted, str(out))


def _fp32_build(model: ModelInfo, variant: Variant) -> VariantBuild:
    return VariantBuild(
        model=model.name, variant=variant.name, kind=variant.kind.value, onnx_path=str(model.path),
        onnx_sha256=model.sha256, base_sha256=model.sha256, options=variant.options(), quantized_nodes=0,
        excluded_nodes=(), seconds=0.0, cached=False, modelopt_version=modelopt_version(),
    )


def quantize_variant(
    model: ModelInfo, variant: Variant, calib: CalibrationSet | None, cache: ArtifactCache
) -> VariantBuild:
    """Build (or find in ``cache``) the ONNX of ``variant`` for ``model``.

    ``calib`` holds the images to calibrate on (INT8) or to check FP16 ranges on (FP16), normally
    ``variant.calib_images`` of them; all of them are used, and its sha256 is part of the cache key.
    Raises ``QuantizeError`` naming the model, the variant and the cause when calibration data is
    missing or ModelOpt fails. The base ONNX is never modified.
    """
    if variant.kind is VariantKind.FP32:
        return _fp32_build(model, variant)
    if calib is None:
        raise _missing_calibration(model, variant)
    num_images = _usable_images(model, calib)
    versions = _tool_versions()
    options = {**variant.options(), "calibration": {"sha256": calib.sha256, "num_images": num_images,
                                                   "seed": calib.seed}}
    key = hash_key(CACHE_KIND, model.sha256, options, versions)

    def build(tmp: Path) -> dict[str, Any]:
        base = onnx.load(str(model.path), load_external_data=False)
        excluded = _excluded_nodes(base, variant)
        data = calib.load()[:num_images]
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="quantbench-modelopt-") as scratch_dir:
            scratch = Path(scratch_dir)
            src = scratch / "model.onnx"  # ModelOpt's private copy: it overwrites and litters beside it
            shutil.copyfile(model.path, src)
            out = scratch / "variant.onnx"
            log.info("building %s/%s with ModelOpt (%d calibration images)", model.name, variant.name, len(data))
            try:
                with contextlib.chdir(scratch):  # some ModelOpt paths write temporaries into the cwd
                    if variant.kind is VariantKind.INT8:
                        _run_int8(src, out, model, variant, data, excluded)
                    else:
                        _run_fp16(src, out, model, variant, data, excluded, scratch)
            except Exception as exc:  # ModelOpt raises anything (AssertionError, ORT Fail, ValueError)
                raise QuantizeError(
                    f"ModelOpt failed to build variant {variant.name!r} of model {model.name} ({_first_line(exc)}); "
                    "check the variant's options in the variant table; ModelOpt's log above has the details."
                ) from exc
            if not out.is_file():
                raise QuantizeError(
                    f"ModelOpt wrote no output for variant {variant.name!r} of model {model.name}; "
                    "check the variant's options (did they exclude every node?)."
                )
            shutil.copyfile(out, tmp)
        seconds = time.perf_counter() - started
        try:
            # The variant must plug into the same pipeline: same float32 input and output layout.
            validate_onnx(tmp, name=model.name)
        except ModelError as exc:
            raise QuantizeError(
                f"ModelOpt's variant {variant.name!r} of model {model.name} changed the model's interface ({exc}); "
                "report this with the variant's options."
            ) from exc
        built = onnx.load(str(tmp), load_external_data=False)
        return {
            "model": model.name, "variant": variant.name, "kind": variant.kind.value,
            "onnx_sha256": sha256_file(tmp), "base_sha256": model.sha256, "options": options,
            "quantized_nodes": count_quantized_nodes(built) if variant.kind is VariantKind.INT8 else 0,
            "excluded_nodes": list(excluded), "seconds": seconds, "versions": versions,
        }

    entry = cache.get_or_build(CACHE_KIND, key, ".onnx", build)
    meta = entry.meta
    return VariantBuild(
        model=model.name, variant=variant.name, kind=variant.kind.value, onnx_path=str(entry.path),
        onnx_sha256=meta["onnx_sha256"], base_sha256=model.sha256, options=options,
        quantized_nodes=int(meta["quantized_nodes"]), excluded_nodes=tuple(meta["excluded_nodes"]),
        seconds=float(meta["seconds"]), cached=not entry.built, modelopt_version=versions["modelopt"],
    )


def build_variants(
    model: ModelInfo,
    variants: Iterable[Variant],
    calib_for: Callable[[Variant], CalibrationSet | None],
    cache: ArtifactCache,
) -> dict[str, VariantBuild | QuantizeError]:
    """Build every variant; a variant ModelOpt fails on becomes its ``QuantizeError``, the rest go on.

    ``calib_for(variant)`` gives the calibration set of each variant that needs one (it is not
    called for fp32).
    """
    results: dict[str, VariantBuild | QuantizeError] = {}
    for variant in variants:
        calib = calib_for(variant) if variant.needs_calibration else None
        try:
            results[variant.name] = quantize_variant(model, variant, calib, cache)
        except QuantizeError as exc:
            log.error("%s", exc)
            results[variant.name] = exc
    return results
