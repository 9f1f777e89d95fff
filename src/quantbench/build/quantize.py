"""Variant ONNX builds through NVIDIA ModelOpt: FP16 AutoCast and INT8 Q/DQ PTQ, cached.

- ``fp32``: the base ONNX itself; ModelOpt is not called.
- ``fp16``: ``modelopt.onnx.autocast.convert_to_mixed_precision`` with float32 inputs/outputs
  kept (the pipeline around the model is unchanged). AutoCast keeps a node in FP32 when its
  values exceed FP16-safe ranges on reference data; that data is the calibration images, because
  ModelOpt's fallback (uniform noise) inflates early activations and strands the first convs.
- ``int8``: ``modelopt.onnx.quantization.quantize`` on real calibration images only (ModelOpt
  silently calibrates on random data when given none: refused here), calibrated on the execution
  provider the caller chose (`build.calibration_eps`; the CPU unless told), which is part of the
  cache key and of the record (``options["calibration"]["eps"]``).
- ``int8`` with exclusions (``nodes_to_exclude``, ``exclude_head``), given a ``shared`` provider:
  derived from the shared calibration, the same variant's ModelOpt build without exclusions, by
  removing the excluded nodes' Q/DQ (`build.shared_calibration`); the record says so
  (``options["calibration"]["derived_from"]``: the shared build's cache key).

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
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from quantbench.build import onnx_graph, shared_calibration
from quantbench.build.export import ModelInfo, validate_onnx
from quantbench.build.variants import Variant, VariantKind
from quantbench.cache import ArtifactCache, hash_key, owned_scratch_dir, sha256_file
from quantbench.data.calibration import CalibrationSet
from quantbench.errors import ModelError, QuantizeError
from quantbench.records import VariantBuild
from quantbench.rules import closest, tool_version

log = logging.getLogger(__name__)

CACHE_KIND = "variants"
# ModelOpt's scratch folders in the temp dir (named after their process: `cache.remove_stale_scratch`).
SCRATCH_PREFIX = "quantbench-modelopt-"
# INT8 calibration's EP when the caller names none, and AutoCast's reference run's always (its
# FP16 range check is short and must not depend on the machine).
CALIBRATION_EPS = ("cpu",)
# Ops that read only their input's shape, not its values: data does not flow through them.
_SHAPE_ONLY_OPS = frozenset({"Shape", "Size"})
# Layout-only ops allowed between DFL's Softmax and its fixed 1x1 conv.
_LAYOUT_OPS = frozenset({"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})


def modelopt_version() -> str:
    # ModelOpt is installed wherever a variant is quantized: "unknown" only on a broken install.
    return tool_version("nvidia-modelopt") or "unknown"


def _tool_versions() -> dict[str, str]:
    import onnxruntime

    return {"modelopt": modelopt_version(), "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__}


# ---------------------------------------------------------------------------------------------
# ModelOpt's logging

# ModelOpt asks NVML for the GPU count at every INT8 calibration and logs an ERROR where there is no
# NVIDIA driver, then calibrates on the CPU as it was asked to: on a CPU-only machine that is noise.
_NVML_ABSENT = "Failed to get GPU count: NVML Shared Library Not Found"
_MODELOPT_LOGGERS = ("modelopt.onnx", "modelopt.onnx.autocast", "modelopt.onnx.quantization")


class _DropNvmlAbsent(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _NVML_ABSENT not in record.getMessage()


@contextlib.contextmanager
def quiet_modelopt_logs() -> Iterator[None]:
    """Drop ModelOpt's "no NVML" ERROR while it builds; every other message, errors included, passes."""
    loggers = [logging.getLogger(name) for name in _MODELOPT_LOGGERS]
    noise = _DropNvmlAbsent()
    for logger in loggers:  # logger filters survive ModelOpt's configure_logging, which swaps handlers
        logger.addFilter(noise)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(noise)


class ModelOptEcho(logging.Filter):
    """For a root handler: drop ModelOpt records that ModelOpt's own handler already printed.

    ``modelopt.onnx`` installs a stdout handler of its own at every ``quantize()`` call and lets
    records propagate to the root too, so each ModelOpt line would appear twice.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("modelopt"):
            return True
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None and logger is not logging.root:
            if logger.handlers:
                return False
            logger = logger.parent
        return True


# ---------------------------------------------------------------------------------------------
# Graph analysis


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
    producers = onnx_graph.producers(graph)
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
    return len(onnx_graph.int8_intended_nodes(model))


# ---------------------------------------------------------------------------------------------
# Builds


def _missing_calibration(model: ModelInfo, variant: Variant) -> QuantizeError:
    return QuantizeError(
        f"variant {variant.name!r} ({variant.kind.value}) of model {model.name} needs calibration images and got "
        "none; pass a CalibrationSet from quantbench.data.calibration.build_calibration (ModelOpt would use random data)."
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


# What ModelOpt's `patch_ort_modules(calibrate_per_node=True)` replaces in ONNX Runtime's calibrators;
# a later build without per-node calibration restores only some of them (nvidia-modelopt 0.47).
_PER_NODE_PATCHED = {
    "MinMaxCalibrater": ("augment_graph", "collect_data", "compute_data", "merge_range"),
    "HistogramCalibrater": ("augment_graph", "collect_data"),
    "HistogramCollector": ("collect", "collect_value", "collect_absolute_value"),
}


@contextlib.contextmanager
def _ort_calibrators_restored() -> Iterator[None]:
    """Put ONNX Runtime's calibrator methods back as they were once ModelOpt returns.

    Measured: after one ``calibrate_per_node = true`` build, every later INT8 build in the process
    failed inside ModelOpt (``_compute_data_minmax_calibrator``: "The truth value of an array with
    more than one element is ambiguous"), because the per-node ``augment_graph`` stayed patched.
    One variant's options must not break the next variant's build.
    """
    from onnxruntime.quantization import calibrate

    saved = {(name, attr): getattr(calibrate, name).__dict__.get(attr)
             for name, attrs in _PER_NODE_PATCHED.items() for attr in attrs}
    try:
        yield
    finally:
        for (name, attr), original in saved.items():
            cls = getattr(calibrate, name)
            if original is None:
                if attr in cls.__dict__:
                    delattr(cls, attr)
            else:
                setattr(cls, attr, original)


def _run_int8(src: Path, out: Path, model: ModelInfo, variant: Variant, data: np.ndarray, excluded: Sequence[str],
              eps: Sequence[str]) -> None:
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
        calibration_eps=list(eps),
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
        batch: dict[str, Any] = {model.input_name: data[i:i + step]}  # keyed by input name, as AutoCast reads it
        np.savez(reference / f"{i:06d}.npz", **batch)
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


def check_against_model(base: onnx.ModelProto, model: ModelInfo, variant: Variant) -> None:
    """Refuse, before ModelOpt runs, options that name nothing in this model or leave nothing to convert.

    ModelOpt ignores a ``nodes_to_exclude`` pattern that matches no node and an
    ``op_types_to_quantize`` list the model has none of, and happily builds a variant with every node
    excluded: each would be a variant that silently is not what its table says. (Some listed op
    types missing is fine: one list may serve models with different ops.)
    """
    def fail(key: str, problem: str) -> QuantizeError:
        return QuantizeError(f"variant {variant.name!r} of model {model.name}, key {key!r}: {problem}")

    names = [n.name for n in base.graph.node]
    for pattern in variant.nodes_to_exclude:
        if not matching_nodes(base, [pattern]):
            near = closest(pattern, names)
            hint = f" (a node is named {near!r})" if near else ""
            raise fail("nodes_to_exclude", f"{pattern!r} matches no node of the model{hint}; patterns are "
                       "regular expressions matched from the start of the node name (ONNX names start with '/').")
    op_types = {n.op_type for n in base.graph.node}
    absent = [op for op in variant.op_types_to_quantize if op not in op_types]
    if absent and len(absent) == len(variant.op_types_to_quantize):
        raise fail("op_types_to_quantize", f"the model has no {', '.join(absent)} node; its op types are "
                   f"{', '.join(sorted(op_types))}.")
    if absent:  # a list written for several models (YOLO11's Softmax, YOLOv5's ...): the rest still applies
        log.warning("variant %s of model %s: op_types_to_quantize %s not in the model", variant.name, model.name,
                    ", ".join(absent))
    excluded = set(_excluded_nodes(base, variant))
    left = [n for n in base.graph.node if n.name not in excluded and n.op_type not in variant.op_types_to_exclude
            and (not variant.op_types_to_quantize or n.op_type in variant.op_types_to_quantize)]
    if not left:
        keys = [k for k in variant.options() if variant.options()[k] and k in
                ("nodes_to_exclude", "op_types_to_exclude", "exclude_head", "op_types_to_quantize")]
        subject = "together they leave" if len(keys) > 1 else "it leaves"
        raise fail(" + ".join(keys) or "kind", f"{subject} none of the model's {len(names)} nodes to convert to "
                   f"{variant.kind.value.upper()}; exclude less.")


def _check_built(built: onnx.ModelProto, model: ModelInfo, variant: Variant) -> int:
    """Quantized-node count of a finished build; QuantizeError when it converted nothing at all."""
    if variant.kind is VariantKind.INT8:
        quantized = count_quantized_nodes(built)
        if quantized == 0:
            raise QuantizeError(
                f"ModelOpt quantized no node of variant {variant.name!r} of model {model.name} (options "
                f"{_short_options(variant)}): the build would be the FP model under an INT8 name; quantize "
                "op types ModelOpt supports (Conv, MatMul, ...) or exclude less."
            )
        return quantized
    if count_fp16_nodes(built) == 0:
        raise QuantizeError(
            f"ModelOpt AutoCast converted no node of variant {variant.name!r} of model {model.name} to FP16 "
            f"(options {_short_options(variant)}); exclude less."
        )
    return 0


def count_fp16_nodes(model: onnx.ModelProto) -> int:
    """Nodes that compute on float16 values: zero means an FP16 build runs nothing in FP16.

    Casts, constants and shape reads are not counted: AutoCast inserts Casts to feed a Shape node
    even when every compute node was kept in FP32.
    """
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    fp16 = onnx.TensorProto.FLOAT16
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.value_info, *g.input, *g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    for node in g.node:  # Cast outputs have their type in the node itself
        if node.op_type == "Cast":
            types.update({out: a.i for out in node.output for a in node.attribute if a.name == "to"})
    not_compute = _SHAPE_ONLY_OPS | {"Cast", "Constant"}
    return sum(1 for n in g.node if n.op_type not in not_compute and any(types.get(i) == fp16 for i in n.input))


def _short_options(variant: Variant) -> str:
    keys = ("nodes_to_exclude", "op_types_to_exclude", "op_types_to_quantize", "exclude_head")
    shown = {k: v for k, v in variant.options().items() if k in keys and v}
    return ", ".join(f"{k}={v!r}" for k, v in shown.items()) or "defaults"


def _run_modelopt(model: ModelInfo, variant: Variant, data: np.ndarray, excluded: Sequence[str], tmp: Path,
                  eps: Sequence[str]) -> None:
    """ModelOpt on a private copy in a scratch folder; the result is copied to ``tmp``."""
    with owned_scratch_dir(SCRATCH_PREFIX) as scratch, quiet_modelopt_logs():
        src = scratch / "model.onnx"  # ModelOpt's private copy: it overwrites and litters beside it
        shutil.copyfile(model.path, src)
        out = scratch / "variant.onnx"
        log.info("building %s/%s with ModelOpt (%d calibration images)", model.name, variant.name, len(data))
        try:
            with contextlib.chdir(scratch):  # some ModelOpt paths write temporaries into the cwd
                if variant.kind is VariantKind.INT8:
                    with _ort_calibrators_restored():
                        _run_int8(src, out, model, variant, data, excluded, eps)
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


def _build_options(variant: Variant, calib: CalibrationSet, num_images: int, eps: Sequence[str],
                   derived_from: str | None = None) -> dict[str, Any]:
    """The variant's options as built: the images used, not those asked for, and which calibration
    (INT8: on which EP, and the shared calibration's cache key when derived from one)."""
    calibration: dict[str, Any] = {"sha256": calib.sha256, "num_images": num_images, "seed": calib.seed}
    if variant.kind is VariantKind.INT8:
        calibration["eps"] = list(eps)
        if derived_from is not None:
            calibration["derived_from"] = derived_from
    return {**variant.options(), "calib_images": num_images, "calibration": calibration}


def _check_interface(path: Path, model: ModelInfo, variant: Variant, who: str) -> None:
    try:
        # The variant must plug into the same pipeline: same float32 input and output layout.
        validate_onnx(path, name=model.name)
    except ModelError as exc:
        raise QuantizeError(
            f"{who} variant {variant.name!r} of model {model.name} changed the model's interface ({exc}); "
            "report this with the variant's options."
        ) from exc


def _build_with_modelopt(model: ModelInfo, variant: Variant, base: onnx.ModelProto, data: np.ndarray,
                         tmp: Path, eps: Sequence[str]) -> dict[str, Any]:
    """Run ModelOpt into ``tmp`` and check the result; what the cache entry's metadata records of it."""
    excluded = _excluded_nodes(base, variant)
    started = time.perf_counter()
    _run_modelopt(model, variant, data, excluded, tmp, eps)
    seconds = time.perf_counter() - started
    _check_interface(tmp, model, variant, "ModelOpt's")
    quantized = _check_built(onnx_graph.load_graph(tmp), model, variant)
    return {"onnx_sha256": sha256_file(tmp), "quantized_nodes": quantized, "excluded_nodes": list(excluded),
            "seconds": seconds}


def _derive_from_shared(model: ModelInfo, variant: Variant, base: onnx.ModelProto, source: VariantBuild,
                        tmp: Path) -> dict[str, Any]:
    """``variant`` from its shared calibration's build ``source``, written to ``tmp`` and checked."""
    excluded = _excluded_nodes(base, variant)
    started = time.perf_counter()
    derived = shared_calibration.derive(onnx.load(source.onnx_path), excluded, source=source.onnx_path)
    onnx.save(derived, str(tmp))
    seconds = time.perf_counter() - started
    _check_interface(tmp, model, variant, "the derived")
    quantized = _check_built(onnx_graph.load_graph(tmp), model, variant)
    return {"onnx_sha256": sha256_file(tmp), "quantized_nodes": quantized, "excluded_nodes": list(excluded),
            "seconds": seconds, "calibration_seconds": source.seconds}


def shared_calibration_of(base: onnx.ModelProto, variant: Variant, *, log_as: str | None = None) -> Variant | None:
    """The variant whose ModelOpt build ``variant`` is derived from on model ``base``, or None when it keeps
    its own build (`shared_calibration.own_calibration_reason`, or exclusions that change ModelOpt's
    fusion: `shared_calibration.fusion_conflicts`). ``log_as``: the model's name, to log the latter."""
    calibration = shared_calibration.calibration_variant(variant)
    if calibration is None:
        return None
    conflicts = shared_calibration.fusion_conflicts(base, _excluded_nodes(base, variant),
                                                    op_types_excluded=variant.op_types_to_exclude)
    if conflicts:  # ModelOpt's own placement would differ from the derived one: calibrate for it alone
        if log_as is not None:
            log.info("variant %s of model %s keeps its own ModelOpt build: its exclusions change ModelOpt's "
                     "fusion of %s", variant.name, log_as, ", ".join(conflicts))
        return None
    return calibration


def calibration_users(base: onnx.ModelProto, variants: Iterable[Variant], calibration: Variant) -> int:
    """How many of ``variants`` (as built) are ``calibration``'s own build or derived from it."""
    wanted = calibration.options()
    return sum(1 for v in variants if v.kind is VariantKind.INT8 and (
        v.options() == wanted or ((shared := shared_calibration_of(base, v)) is not None and shared.options() == wanted)))


def _cache_key(model: ModelInfo, options: dict[str, Any], versions: dict[str, str]) -> str:
    return hash_key(CACHE_KIND, model.sha256, options, versions)


def quantize_variant(
    model: ModelInfo, variant: Variant, calib: CalibrationSet | None, cache: ArtifactCache, *,
    calibration_eps: Sequence[str] = CALIBRATION_EPS, shared: Callable[[Variant], VariantBuild] | None = None,
) -> VariantBuild:
    """Build (or find in ``cache``) the ONNX of ``variant`` for ``model``.

    ``calib`` holds the images to calibrate on (INT8) or to check FP16 ranges on (FP16); all of
    them are used (the record's ``calib_images`` says how many), and its sha256 is part of the
    cache key. Raises ``QuantizeError`` naming the model, the variant and the cause when
    calibration data is missing, an option names nothing in the model or leaves nothing to
    convert (`check_against_model`), ModelOpt fails, or the build converted nothing. The base ONNX
    is never modified.

    INT8 calibration runs on ``calibration_eps`` (ModelOpt names: ``cpu``, ``cuda:0``, ``trt``). With
    ``shared`` (the caller's memoised ``quantize_variant`` of another variant, raising
    ``QuantizeError``), a variant that `shared_calibration.calibration_variant` maps to a shared
    calibration is derived from ``shared(that variant)`` instead of calibrating again; a failed shared
    calibration fails the variant with a sentence naming it.
    """
    if variant.kind is VariantKind.FP32:
        return _fp32_build(model, variant)
    if calib is None:
        raise _missing_calibration(model, variant)
    num_images = _usable_images(model, calib)
    versions = _tool_versions()
    base = onnx_graph.load_graph(model.path)
    check_against_model(base, model, variant)
    calibration = shared_calibration_of(base, variant, log_as=model.name) if shared is not None else None
    derived_from = None if calibration is None else \
        _cache_key(model, _build_options(calibration, calib, num_images, calibration_eps), versions)
    options = _build_options(variant, calib, num_images, calibration_eps, derived_from)

    def build(tmp: Path) -> dict[str, Any]:
        if calibration is not None and shared is not None:
            try:
                source = shared(calibration)
            except QuantizeError as exc:
                raise QuantizeError(
                    f"variant {variant.name!r} of model {model.name} derives from the shared "
                    f"{variant.calibration_method} calibration, which failed: {exc}") from exc
            built = _derive_from_shared(model, variant, base, source, tmp)
        else:
            built = _build_with_modelopt(model, variant, base, calib.load()[:num_images], tmp, calibration_eps)
        return {"model": model.name, "variant": variant.name, "kind": variant.kind.value, **built,
                "base_sha256": model.sha256, "options": options, "versions": versions}

    key = _cache_key(model, options, versions)
    entry = cache.get_or_build(CACHE_KIND, key, ".onnx", build, label=f"ModelOpt build of {model.name}/{variant.name}")
    meta = entry.meta
    if variant.kind is VariantKind.INT8 and not meta["quantized_nodes"]:  # cached before builds were checked
        _check_built(onnx_graph.load_graph(entry.path), model, variant)
    return VariantBuild(
        model=model.name, variant=variant.name, kind=variant.kind.value, onnx_path=str(entry.path),
        onnx_sha256=meta["onnx_sha256"], base_sha256=model.sha256, options=options,
        quantized_nodes=int(meta["quantized_nodes"]), excluded_nodes=tuple(meta["excluded_nodes"]),
        seconds=float(meta["seconds"]), cached=not entry.built, modelopt_version=versions["modelopt"],
    )
