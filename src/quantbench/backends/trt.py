"""TensorRT backend: strongly typed engines from AutoCast FP16 / ModelOpt Q/DQ ONNX graphs.

``tensorrt`` is imported lazily (inside functions), so this module imports everywhere; the version
differences between TensorRT 10 and 11 live in ``trt_version.TrtApi``, the CUDA calls in ``cuda``.

- Build: ONNX parser -> strongly typed network (precision comes from the ONNX) -> one optimization
  profile covering ``BuildOptions.batch_sizes`` -> ``build_serialized_network`` with a workspace
  limit, the builder optimisation level and ``ProfilingVerbosity.DETAILED`` (so the engine can be
  inspected per layer). Engines are cached by (ONNX sha256, TensorRT version, GPU name + compute
  capability, build options); one timing cache per (GPU, TensorRT version) is loaded before and
  merged + saved after every build.
- Profile: min = 1, opt = the first (reference) batch size, max = the largest. min is 1, not the
  smallest benchmarked size, because accuracy evaluation ends with a partial batch (500 images in
  batches of 8 end with 4); TensorRT tunes its kernels for opt.
- Run: one stream, pinned host buffers and device buffers sized for the largest batch, tensor
  addresses set by name, ``execute_async_v3``; optionally replayed from a CUDA graph when timing.
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from quantbench.backends import cuda
from quantbench.backends.base import Backend, BackendKind, BuildOptions, Engine, InputSpec, Runner, RunnerInfo, TimingSamples
from quantbench.backends.trt_precision import NoInt8Warning, precision_report, qdq_layers
from quantbench.backends.trt_version import TrtApi
from quantbench.build import onnx_graph
from quantbench.cache import ArtifactCache, atomic_write_bytes, atomic_write_text, hash_key, sha256_file
from quantbench.errors import BackendError, BackendUnavailable, ConfigError, ModelError
from quantbench.records import to_dict
from quantbench.rules import is_count

log = logging.getLogger(__name__)

# `pip install tensorrt` alone gets the CUDA 13 build; CUDA 12 drivers need the -cu12 wheels (pyproject extras).
INSTALL_HINT = ("pip install tensorrt-cu13 'cuda-python>=13,<14' for a CUDA 13 driver, "
                "or tensorrt-cu12 'cuda-python>=12.3,<13' for CUDA 12")
ENGINE_KIND = "trt-engine"
TIMING_CACHE_KIND = "trt-timing-cache"
ENGINE_KEY_SCHEMA = 1  # bump when the build recipe changes in a way the key does not see
ENGINE_KEY_OPTIONS = ("batch_sizes", "workspace_mib", "optimization_level")  # device_id/threads don't change the plan
DEFAULT_IMGSZ = (640, 640)  # for ONNX inputs with dynamic height/width and no Ultralytics `imgsz` metadata
OPTIMIZATION_LEVELS = range(0, 6)


def _tensorrt() -> Any:
    import tensorrt

    return tensorrt


# --- cache keys ---------------------------------------------------------------------------------


def engine_cache_key(onnx_sha256: str, trt_version: str, gpu: cuda.GpuInfo, options: BuildOptions) -> str:
    """Everything that decides a serialized engine's bytes; plans are GPU- and version-specific."""
    build = {name: getattr(options, name) for name in ENGINE_KEY_OPTIONS}
    return hash_key(ENGINE_KIND, ENGINE_KEY_SCHEMA, onnx_sha256, trt_version, gpu.name, list(gpu.compute_capability), build)


def timing_cache_path(cache: ArtifactCache, gpu: cuda.GpuInfo, trt_version: str) -> Path:
    """One timing cache per GPU kind (name + compute capability) and TensorRT version."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", gpu.name).strip("-").lower() or "gpu"
    key = hash_key(gpu.name, list(gpu.compute_capability), trt_version, length=8)
    return cache.root / TIMING_CACHE_KIND / f"{slug}-{gpu.sm}-trt{trt_version}-{key}.cache"


# --- optimization profile -----------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileShapes:
    """The input shapes of a TensorRT optimization profile."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def _is_dynamic(dim: Any) -> bool:
    return not isinstance(dim, (int, np.integer)) or int(dim) < 0


def profile_shapes(
    input_shape: Sequence[Any],
    batch_sizes: Sequence[int],
    *,
    imgsz: tuple[int, int] = DEFAULT_IMGSZ,
    where: str = "the model",
) -> ProfileShapes | None:
    """Profile for an NCHW input (-1/None/str = dynamic) covering ``batch_sizes``; None if all static.

    min batch 1 (evaluation ends with a partial batch), opt = ``batch_sizes[0]``, max = the largest.
    Dynamic height/width take ``imgsz``.
    """
    sizes = tuple(batch_sizes)
    if not sizes or not all(is_count(b) for b in sizes):
        raise ConfigError(f"BuildOptions.batch_sizes must be positive integers, got {sizes!r}; pass e.g. (1, 8).")
    if len(input_shape) != 4:
        raise ModelError(f"{where} has an input of rank {len(input_shape)}; quantbench needs an NCHW image input.")
    n, c, h, w = input_shape
    if _is_dynamic(c):
        raise ModelError(f"{where} has a dynamic channel dimension; export it with 3 fixed input channels.")
    if not _is_dynamic(n):
        wrong = sorted(set(sizes) - {int(n)})
        if wrong:
            raise BackendError(
                f"{where} has a fixed batch of {int(n)}, so it cannot run batch sizes {wrong}; export it with a "
                f"dynamic batch axis (Ultralytics dynamic=True) or benchmark batch size {int(n)} only."
            )
        if not (_is_dynamic(h) or _is_dynamic(w)):
            return None
    spatial = (imgsz[0] if _is_dynamic(h) else int(h), imgsz[1] if _is_dynamic(w) else int(w))

    def shape(batch: int) -> tuple[int, ...]:
        return (batch, int(c), *spatial)

    if not _is_dynamic(n):
        fixed = shape(int(n))
        return ProfileShapes(fixed, fixed, fixed)
    return ProfileShapes(shape(1), shape(sizes[0]), shape(max(sizes)))


def onnx_imgsz(onnx_path: Path) -> tuple[int, int] | None:
    """Ultralytics' ``imgsz`` metadata ("[640, 640]") of an ONNX export, if present."""
    return onnx_graph.metadata_imgsz(onnx_graph.load_graph(onnx_path))


# --- parser and builder errors -------------------------------------------------------------------

_PARSER_HINTS = {
    "UNSUPPORTED_NODE": "this TensorRT has no implementation of that operator: upgrade TensorRT or re-export with opset 17-19",
    "UNSUPPORTED_GRAPH": "this TensorRT cannot handle the graph structure: upgrade TensorRT or simplify the export (onnxslim)",
    "UNSUPPORTED_NODE_ATTR": "re-export the model so the node uses a supported attribute value",
    "UNSUPPORTED_NODE_INPUT": "re-export the model so the node's inputs are constants or supported types",
    "UNSUPPORTED_NODE_DATATYPE": "re-export (or re-quantize) so the node uses FP32/FP16/INT8 types",
    "UNSUPPORTED_NODE_DYNAMIC": "export with static shapes for that node (only the batch axis dynamic)",
    "INVALID_NODE": "check the model with onnx.checker.check_model and re-export it",
    "INVALID_VALUE": "check the model with onnx.checker.check_model and re-export it",
    "INVALID_GRAPH": "check the model with onnx.checker.check_model and re-export it",
    "MODEL_DESERIALIZE_FAILED": "the file is not a readable ONNX protobuf: re-export it",
}
_DEFAULT_PARSER_HINT = "inspect it with `polygraphy inspect model` and re-export it"
MAX_REPORTED_PARSER_ERRORS = 8


def error_code_name(code: Any) -> str:
    """``UNSUPPORTED_NODE`` from a ``tensorrt.ErrorCode``.

    ``str(code)`` is ``"ErrorCode.UNSUPPORTED_NODE"`` in every version; ``code.name`` is not usable
    across versions: a method before TensorRT 10.16, a str from 10.16 (seen in the real bindings).
    """
    return str(code).rsplit(".", 1)[-1]


def parser_error_message(onnx_path: Path | str, errors: Sequence[Any]) -> str:
    """One sentence naming the ONNX file, each failing node (name, operator, TensorRT's text) and a fix.

    ``errors`` are ``tensorrt.OnnxParser.get_error(i)`` objects (``ParserError``, TensorRT 10+).
    """
    parts, hints = [], []
    for error in errors[:MAX_REPORTED_PARSER_ERRORS]:
        code = error_code_name(error.code())
        node = error.node_name() or (f"#{error.node()}" if error.node() >= 0 else "(graph)")
        operator = error.node_operator() or "?"
        parts.append(f"node {node!r} ({operator}): {error.desc().strip().rstrip('.')} [{code}]")
        hint = _PARSER_HINTS.get(code, _DEFAULT_PARSER_HINT)
        if hint not in hints:
            hints.append(hint)
    more = len(errors) - MAX_REPORTED_PARSER_ERRORS
    listed = "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
    if not errors:
        listed, hints = "the parser gave no error detail", [_DEFAULT_PARSER_HINT]
    return f"TensorRT could not parse {onnx_path}: {listed}; to fix: {'; '.join(hints)}."


def _capturing_logger(trt: Any) -> Any:
    """A TensorRT logger that forwards warnings to ``logging`` and keeps errors for our messages."""

    class CapturingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            level = int(severity)  # INTERNAL_ERROR 0, ERROR 1, WARNING 2, INFO 3, VERBOSE 4
            if level <= 1:
                self.errors.append(msg)
                log.error("TensorRT: %s", msg)
            elif level == 2:
                log.warning("TensorRT: %s", msg)
            else:
                log.debug("TensorRT: %s", msg)

    return CapturingLogger()


# --- timing cache --------------------------------------------------------------------------------


def _load_timing_cache(config: Any, path: Path) -> None:
    data = path.read_bytes() if path.exists() else b""
    timing_cache = config.create_timing_cache(data)
    if timing_cache is None and data:  # unreadable (other TensorRT build?): start a fresh one
        log.warning("TensorRT refused the timing cache %s; starting a new one", path)
        timing_cache = config.create_timing_cache(b"")
    if timing_cache is None or not config.set_timing_cache(timing_cache, ignore_mismatch=False):
        raise BackendError(f"TensorRT could not use the timing cache {path}; delete it and build again.")


def _save_timing_cache(config: Any, path: Path) -> None:
    """Merge this build's timings with what other processes saved meanwhile, then replace the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        timing_cache = config.get_timing_cache()
        if path.exists():
            on_disk = config.create_timing_cache(path.read_bytes())
            # combine() refuses a cache from another TensorRT build or GPU: this build's timings replace it.
            if on_disk is None or not timing_cache.combine(on_disk, ignore_mismatch=False):
                log.warning("TensorRT could not merge the timing cache %s (another TensorRT build or GPU?); "
                            "replacing it with this build's timings", path)
        atomic_write_bytes(path, bytes(timing_cache.serialize()))


# --- backend -------------------------------------------------------------------------------------


def simulated_reason(api: TrtApi) -> str | None:
    """Why figures from this backend are no TensorRT measurement (a fake ``tensorrt``, a CUDA stand-in), else None."""
    parts = [part for part in (api.simulated, cuda.simulated_reason()) if part]
    return "; ".join(parts) or None


class TensorRTBackend(Backend):
    kind = BackendKind.TENSORRT

    def __init__(self, *, cuda_graph: bool = False):
        self.cuda_graph = cuda_graph  # replay execute_async_v3 from a CUDA graph in Runner.time

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            trt = _tensorrt()
        except ImportError as exc:
            if isinstance(exc, ModuleNotFoundError) and exc.name == "tensorrt":
                return f"tensorrt is not installed ({INSTALL_HINT}, on a machine with an NVIDIA GPU)"
            # The package is there, but its native libraries (libnvinfer.so.N, ...) or its bindings
            # do not load: Python reports a missing shared library as ImportError, not OSError.
            return (f"tensorrt is installed but does not load ({exc}); install TensorRT's libraries for this "
                    f"CUDA version or reinstall it ({INSTALL_HINT})")
        except OSError as exc:  # ctypes loading of the libraries by the tensorrt package itself
            return f"tensorrt is installed but its libraries do not load ({exc}); reinstall it ({INSTALL_HINT})"
        try:
            TrtApi.of(trt)
        except BackendUnavailable as exc:
            return str(exc)
        return cuda.device_unavailable_reason()

    def _require(self) -> tuple[Any, TrtApi]:
        reason = self.unavailable_reason()
        if reason is not None:
            raise BackendUnavailable(f"the TensorRT backend cannot run here: {reason}")
        trt = _tensorrt()
        return trt, TrtApi.of(trt)

    def device_description(self) -> str:
        if cuda.device_unavailable_reason() is not None:
            return "no CUDA device"
        return cuda.gpu_info(0).describe()

    def build(self, onnx_path: Path, options: BuildOptions, cache: ArtifactCache) -> Engine:
        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise ModelError(f"{onnx_path} does not exist; export or quantize the model first.")
        if options.optimization_level not in OPTIMIZATION_LEVELS:
            raise ConfigError(f"optimization_level {options.optimization_level} is not in 0..5; pass 0 (fast build) to 5.")
        if options.workspace_mib is not None and options.workspace_mib < 1:
            raise ConfigError(f"workspace_mib {options.workspace_mib} must be a positive number of MiB, "
                              "or None for TensorRT's default.")
        trt, api = self._require()
        cuda.set_device(options.device_id)
        gpu = cuda.gpu_info(options.device_id)
        key = engine_cache_key(sha256_file(onnx_path), api.version, gpu, options)
        layers_path = cache.path_for(ENGINE_KIND, key, ".layers.json")

        def build(tmp: Path) -> dict[str, Any]:
            return _build_engine(trt, api, onnx_path, options, gpu, timing_cache_path(cache, gpu, api.version), tmp, layers_path)

        entry = cache.get_or_build(ENGINE_KIND, key, ".engine", build)
        precision = entry.meta.get("precision") or {}
        if not entry.built and precision.get("int8_missing"):
            warnings.warn(f"{entry.path} (from {onnx_path.name}) runs no layer in INT8 although its ONNX is a Q/DQ graph.",
                          NoInt8Warning, stacklevel=2)
        return Engine(self.kind, entry.path, onnx_path, options, meta={**entry.meta, "cached": not entry.built})

    def open(self, engine: Engine) -> TensorRTRunner:
        trt, api = self._require()
        return TensorRTRunner(trt, api, engine, cuda_graph=self.cuda_graph)


def _parse(trt: Any, api: TrtApi, onnx_path: Path, logger: Any) -> tuple[Any, Any, Any]:
    """Builder, strongly typed network and parser (kept alive together) of a parsed ONNX file."""
    builder = trt.Builder(logger)
    network = builder.create_network(api.network_flags(trt))
    if network is None:
        raise BackendError(f"TensorRT could not create a network for {onnx_path}: "
                           f"{'; '.join(logger.errors[-3:]) or 'no error was logged'}; check the TensorRT installation.")
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise BackendError(parser_error_message(onnx_path, [parser.get_error(i) for i in range(parser.num_errors)]))
    if network.num_inputs != 1 or network.num_outputs != 1:
        raise ModelError(f"{onnx_path} has {network.num_inputs} inputs and {network.num_outputs} outputs; "
                         "quantbench needs a detector with one image input and one output.")
    return builder, network, parser


def _configure(trt: Any, builder: Any, network: Any, options: BuildOptions, onnx_path: Path) -> tuple[Any, ProfileShapes | None]:
    """The builder config: workspace, optimisation level, detailed profiling, one optimization profile."""
    config = builder.create_builder_config()
    if options.workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    config.builder_optimization_level = options.optimization_level
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    network_input = network.get_input(0)
    shapes = profile_shapes(tuple(network_input.shape), options.batch_sizes,
                            imgsz=onnx_imgsz(onnx_path) or DEFAULT_IMGSZ, where=str(onnx_path))
    if shapes is not None:
        profile = builder.create_optimization_profile()
        try:
            profile.set_shape(network_input.name, shapes.min, shapes.opt, shapes.max)
        except ValueError as exc:  # TensorRT checks min <= opt <= max and the network's fixed axes
            raise BackendError(f"TensorRT refused the optimization profile {shapes.to_dict()} for input "
                               f"{network_input.name!r} of {onnx_path} ({exc}); pass batch sizes that fit the model.") from None
        if config.add_optimization_profile(profile) < 0:
            raise BackendError(f"TensorRT refused the optimization profile {shapes.to_dict()} for input "
                               f"{network_input.name!r} of {onnx_path}; pass batch sizes that fit the model.")
    return config, shapes


def _inspect(trt: Any, engine: Any, input_name: str, shapes: ProfileShapes | None, onnx_path: Path) -> str:
    """The engine's per-layer JSON, from a context whose input shape is set.

    NVIDIA's IEngineInspector header: without the shapes of a dynamic engine, shape-dependent values
    are -1 and format information (the activations' data types) is not shown. The profile's opt
    shape is the one TensorRT tuned for.
    """
    context = engine.create_execution_context()
    if shapes is not None and not context.set_input_shape(input_name, shapes.opt):
        raise BackendError(f"TensorRT refused input shape {shapes.opt} for the engine it just built from {onnx_path}; "
                           "rebuild with a clean cache.")
    inspector = engine.create_engine_inspector()
    inspector.execution_context = context  # full format strings, as they run
    return inspector.get_engine_information(trt.LayerInformationFormat.JSON)


def _build_engine(
    trt: Any, api: TrtApi, onnx_path: Path, options: BuildOptions, gpu: cuda.GpuInfo,
    timing_cache_file: Path, out: Path, layers_path: Path,
) -> dict[str, Any]:
    """Parse, configure, build and inspect one engine; write the plan to ``out``; return its metadata."""
    started = time.perf_counter()
    logger = _capturing_logger(trt)
    builder, network, _parser = _parse(trt, api, onnx_path, logger)
    config, shapes = _configure(trt, builder, network, options, onnx_path)
    _load_timing_cache(config, timing_cache_file)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        detail = "; ".join(logger.errors[-3:]) or "no error was logged"
        raise BackendError(f"TensorRT could not build an engine from {onnx_path}: {detail}; "
                           "raise BuildOptions.workspace_mib or check the ONNX with `polygraphy inspect model`.")
    _save_timing_cache(config, timing_cache_file)
    plan_bytes = bytes(plan)
    out.write_bytes(plan_bytes)
    build_seconds = time.perf_counter() - started

    engine = trt.Runtime(logger).deserialize_cuda_engine(plan_bytes)
    if engine is None:
        raise BackendError(f"TensorRT could not load the engine it just built from {onnx_path}; rebuild with a clean cache.")
    layer_json = _inspect(trt, engine, network.get_input(0).name, shapes, onnx_path)
    atomic_write_text(layers_path, layer_json)
    report = precision_report(layer_json, qdq_layers(onnx_path), engine=onnx_path.name)
    return {
        "tensorrt": api.version,
        "gpu": gpu.name,
        "compute_capability": f"{gpu.compute_capability[0]}.{gpu.compute_capability[1]}",
        "onnx_sha256": sha256_file(onnx_path),
        "options": options.to_dict(),
        "profile": shapes.to_dict() if shapes else None,
        "build_seconds": round(build_seconds, 3),
        "engine_device_memory_bytes": api.engine_device_memory_bytes(engine),
        "engine_bytes": len(plan_bytes),
        "layers_json": layers_path.name,
        "precision": to_dict(report),
        "simulated": simulated_reason(api),
    }


def _input_spec(name: str, low: tuple[int, ...], high: tuple[int, ...]) -> InputSpec:
    """The batches an engine's profile (``low`` to ``high``, NCHW) accepts: float32, cast to the engine's type."""
    image = tuple(lo if lo == hi else None for lo, hi in zip(low[1:], high[1:]))
    return InputSpec(name, image, min_batch=int(low[0]), max_batch=int(high[0])) if low else InputSpec(name, ())


class TensorRTRunner(Runner):
    """An opened engine: pinned and device buffers for the largest batch, one stream, an optional CUDA graph."""

    def __init__(self, trt: Any, api: TrtApi, engine: Engine, *, cuda_graph: bool = False):
        self.engine_record, self.cuda_graph = engine, cuda_graph
        self._trt, self._api = trt, api
        self._resources = ExitStack()
        self._graph: cuda.CudaGraph | None = None  # replays enqueue for _graph_shape only
        self._graph_shape: tuple[int, ...] | None = None
        cuda.set_device(engine.options.device_id)
        self.gpu = cuda.gpu_info(engine.options.device_id)
        self._used_before = cuda.memory_info().used_bytes
        try:
            self._open(engine)
        except BaseException:
            self.close()
            raise

    def _open(self, engine: Engine) -> None:
        trt = self._trt
        self._logger = _capturing_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(Path(engine.path).read_bytes())
        if self._engine is None:
            raise BackendError(f"TensorRT could not load {engine.path}: it was built by another TensorRT version or "
                               "for another GPU; delete it from the cache to rebuild it.")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(f"{engine.source_onnx} gives an engine with inputs {inputs} and outputs {outputs}; "
                             "quantbench needs one image input and one output.")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self._input_dtype = self._numpy_dtype(self.input_name, "input")
        self._output_dtype = self._numpy_dtype(self.output_name, "output")
        static = tuple(self._engine.get_tensor_shape(self.input_name))
        if any(d < 0 for d in static):
            low, _, high = (tuple(s) for s in self._engine.get_tensor_profile_shape(self.input_name, 0))
        else:
            low = high = static
        self._min_shape, self._max_shape = low, high
        self.input_spec = _input_spec(self.input_name, low, high)
        self._set_input_shape(high)
        max_output = tuple(self._context.get_tensor_shape(self.output_name))

        push = self._resources.enter_context
        self._stream = push(cuda.Stream())
        self._host_in = push(cuda.PinnedBuffer(high, self._input_dtype))
        self._host_out = push(cuda.PinnedBuffer(max_output, self._output_dtype))
        self._dev_in = push(cuda.DeviceBuffer(self._host_in.nbytes))
        self._dev_out = push(cuda.DeviceBuffer(self._host_out.nbytes))
        for name, buffer in ((self.input_name, self._dev_in), (self.output_name, self._dev_out)):
            if not self._context.set_tensor_address(name, buffer.ptr):
                errors = "; ".join(self._logger.errors[-3:]) or "no error was logged"
                raise BackendError(f"TensorRT refused the device buffer of tensor {name!r} of {engine.path} ({errors}); "
                                   "delete the engine from the cache to rebuild it.")
        self.engine_memory_bytes = self._api.engine_device_memory_bytes(self._engine)
        self.precision: dict[str, Any] | None = engine.meta.get("precision")
        self.simulated = simulated_reason(self._api)

    def _numpy_dtype(self, name: str, role: str) -> np.dtype:
        """numpy type of an I/O tensor; ``tensorrt.nptype`` knows no BF16, FP8, INT4 or FP4 (TypeError)."""
        trt_type = self._engine.get_tensor_dtype(name)
        try:
            return np.dtype(self._trt.nptype(trt_type))
        except TypeError:
            raise BackendError(
                f"the {role} tensor {name!r} of {self.engine_record.source_onnx} is {trt_type}, which has no numpy type; "
                "export the model with float32 or float16 inputs and outputs (BF16/FP8/INT4/FP4 may stay inside the graph)."
            ) from None

    # -- one inference, in parts -----------------------------------------------------------------

    def _set_input_shape(self, shape: tuple[int, ...]) -> None:
        if not self._context.set_input_shape(self.input_name, shape):
            raise BackendError(f"TensorRT rejected input shape {shape} for {self.engine_record.path}; "
                               f"the engine accepts {self._min_shape} to {self._max_shape}.")

    def _stage(self, batch: np.ndarray) -> tuple[int, int, tuple[int, ...]]:
        """Set the input shape of a checked ``batch``, copy it into pinned memory; return byte counts and output shape."""
        shape = tuple(batch.shape)
        self._set_input_shape(shape)
        n = shape[0]
        self._host_in.array[:n] = batch  # casts to the engine's input type (float16 for FP16-IO graphs)
        out_shape = tuple(self._context.get_tensor_shape(self.output_name))
        in_bytes = int(np.prod(shape)) * self._input_dtype.itemsize
        out_bytes = int(np.prod(out_shape)) * self._output_dtype.itemsize
        return in_bytes, out_bytes, out_shape

    def _enqueue(self) -> None:
        if not self._context.execute_async_v3(self._stream.ptr):
            errors = "; ".join(self._logger.errors[-3:]) or "no error was logged"
            raise BackendError(f"TensorRT failed to run {self.engine_record.path}: {errors}; rebuild the engine.")

    def _graph_for(self, shape: tuple[int, ...]) -> cuda.CudaGraph:
        """The CUDA graph of enqueue at this input shape, captured after a plain enqueue (TensorRT's rule).

        A graph bakes in the shapes it was captured with, so a new shape drops the old graph.
        """
        if self._graph is not None and self._graph_shape == shape:
            return self._graph
        if self._graph is not None:
            self._graph.close()
            self._graph, self._graph_shape = None, None
        with cuda.GraphCapture(self._stream) as capture:
            self._enqueue()
        if capture.graph is None:
            raise BackendError("CUDA graph capture of the TensorRT enqueue produced no graph; "
                               "open the backend with cuda_graph=False.")
        self._graph, self._graph_shape = capture.graph, shape
        return capture.graph

    def _output(self, out_shape: tuple[int, ...]) -> np.ndarray:
        """The pinned output buffer itself for a float32 output (no copy: `Runner` says outputs are reused)."""
        n = out_shape[0]
        return np.asarray(self._host_out.array[:n].reshape(out_shape), dtype=np.float32)

    # -- Runner ------------------------------------------------------------------------------------

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        in_bytes, out_bytes, out_shape = self._stage(batch)
        self._dev_in.copy_from_host(self._host_in, self._stream, in_bytes)
        self._enqueue()
        self._dev_out.copy_to_host(self._host_out, self._stream, out_bytes)
        self._stream.synchronize()
        return self._output(out_shape)

    def _time(self, batch: np.ndarray, *, warmup: int, iterations: int) -> TimingSamples:
        """Per iteration: h2d, compute and d2h on CUDA events; host wall time around compute + sync."""
        shape = tuple(batch.shape)
        in_bytes, out_bytes, _ = self._stage(batch)
        self._dev_in.copy_from_host(self._host_in, self._stream, in_bytes)
        for _ in range(max(warmup, 1)):  # at least one: TensorRT finishes shape-dependent setup here
            self._enqueue()
        self._stream.synchronize()
        launch = self._graph_for(shape).launch if self.cuda_graph else (lambda _stream: self._enqueue())
        return cuda.event_timed_rounds(
            self._stream, iterations,
            copy_in=lambda: self._dev_in.copy_from_host(self._host_in, self._stream, in_bytes),
            launch=lambda: launch(self._stream),
            copy_out=lambda: self._dev_out.copy_to_host(self._host_out, self._stream, out_bytes),
            used_before=self._used_before)

    def info(self) -> RunnerInfo:
        gpu = self.gpu
        return RunnerInfo(
            backend=BackendKind.TENSORRT.value, device=gpu.describe(), input=self.input_spec,
            runtime_version=self._api.version, gpu=gpu.name,
            compute_capability=f"{gpu.compute_capability[0]}.{gpu.compute_capability[1]}",
            cuda_graph=self.cuda_graph, engine_path=str(self.engine_record.path),
            engine_memory_bytes=self.engine_memory_bytes, input_dtype=str(self._input_dtype),
            precision=self.precision, simulated=self.simulated,
        )

    def close(self) -> None:
        graph = getattr(self, "_graph", None)
        if graph is not None:
            graph.close()
            self._graph = None
        self._resources.close()  # buffers and stream, in reverse order of creation
        # TensorRT objects are freed when released, context before engine before runtime.
        for name in ("_context", "_engine", "_runtime"):
            setattr(self, name, None)


