"""ONNX Runtime backend: the faithful simulator of Q/DQ numerics used by the accuracy gate.

CPU execution provider everywhere; the CUDA provider where onnxruntime-gpu finds a GPU. Its CPU
latency says nothing about TensorRT INT8 speed (Q/DQ graphs run slower than FP32 on ORT's CPU
EP) and is reported as what it is.

One numerics repair: onnxruntime's CPU `QuantizeLinear` for float16 inputs truncates toward zero
instead of rounding (measured with onnxruntime-gpu 1.24.4: x / scale = -50.6 gives -50, 25.6 gives 25),
which damages every quantized weight and activation of a ModelOpt graph whose rest is fp16
(`high_precision_dtype="fp16"`, the default) and collapses yolov5n's mAP50-95 from 0.29 to 0.04.
TensorRT computes the quantization in fp32, so ONNX Runtime gets a copy in which each float16
`QuantizeLinear` reads its input and scale cast to float32: the same Q/DQ graph, with
round-half-to-even as the ONNX specification and TensorRT define it. `build` writes that copy into
the cache (the bench opens the same variant in every session); `open_onnx` repairs in memory, for
transient graphs (the sensitivity analysis and split search derive hundreds) that are opened once.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import load_external_data_for_model

from quantbench.backends.base import Backend, BackendKind, BuildOptions, Engine, InputSpec, Runner, RunnerInfo, TimingSamples
from quantbench.build import onnx_graph
from quantbench.cache import ArtifactCache, hash_key, sha256_file
from quantbench.errors import BackendError


def _ort():
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # errors only: ORT warns about every Q/DQ fold
    return onnxruntime


def cuda_provider_usable() -> bool:
    """True when onnxruntime-gpu lists CUDA *and* a CUDA device answers (cheap, no session)."""
    if "CUDAExecutionProvider" not in _ort().get_available_providers():
        return False
    try:
        from cuda.bindings import runtime as cudart  # optional: cuda-python
    except ImportError:
        return os.environ.get("CUDA_VISIBLE_DEVICES", "") not in ("", "-1") and Path("/dev/nvidia0").exists()
    err, count = cudart.cudaGetDeviceCount()
    return int(err) == 0 and count > 0


_QUANTIZE_REPAIR_VERSION = 1


def fp16_quantize_nodes(model) -> list:
    """QuantizeLinear nodes whose scale is a float16 initializer (so their input is float16)."""
    inits = onnx_graph.initializers(model.graph)
    return [n for n in model.graph.node if n.op_type == onnx_graph.QUANTIZE
            and n.input[1] in inits and inits[n.input[1]].data_type == TensorProto.FLOAT16]


def repair_fp16_quantize(model: onnx.ModelProto) -> int:
    """Make every float16 QuantizeLinear of ``model`` (a ModelProto, changed in place) compute in float32.

    Returns how many nodes were rewritten. Zero points, axes and the DequantizeLinear side are
    unchanged, so the integer values and the fp16 dequantized outputs are what TensorRT computes.
    """
    nodes = fp16_quantize_nodes(model)
    inits = onnx_graph.initializers(model.graph)
    added_scales: dict[str, str] = {}
    cast_nodes = []
    for node in nodes:
        scale = node.input[1]
        if scale not in added_scales:
            added_scales[scale] = f"{scale}__fp32"
            value = numpy_helper.to_array(inits[scale]).astype(np.float32)
            model.graph.initializer.append(numpy_helper.from_array(value, added_scales[scale]))
        cast_out = f"{node.name or node.output[0]}__input_fp32"
        cast_nodes.append((node, helper.make_node("Cast", [node.input[0]], [cast_out], to=TensorProto.FLOAT,
                                                  name=f"{node.name}__cast_fp32")))
        node.input[0] = cast_out
        node.input[1] = added_scales[scale]
    # Each Cast goes right before its QuantizeLinear to keep the node list topologically sorted.
    ordered = []
    casts = {id(n): c for n, c in cast_nodes}
    for node in model.graph.node:
        if id(node) in casts:
            ordered.append(casts[id(node)])
        ordered.append(node)
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    return len(nodes)


def quantize_in_fp32(src: Path, dst: Path) -> int:
    """Write ``src`` to ``dst`` with the `repair_fp16_quantize` rewrite; how many nodes it rewrote."""
    model = onnx.load(str(src))
    rewritten = repair_fp16_quantize(model)
    onnx.save(model, str(dst))
    return rewritten


def _model_needing_repair(onnx_path: Path) -> onnx.ModelProto | None:
    """``onnx_path``'s ModelProto (external weights not loaded) if it has float16 QuantizeLinear nodes, else None."""
    try:
        model = onnx_graph.load_graph(onnx_path)
    except (DecodeError, OSError):  # not loadable as ONNX: the session reports it, naming the file
        return None
    return model if fp16_quantize_nodes(model) else None


def _session(source: str | bytes, so: Any, providers: list[Any], path: Path) -> Any:
    """An InferenceSession; ORT's own long error texts become one sentence naming ``path``."""
    try:
        return _ort().InferenceSession(source, sess_options=so, providers=providers)
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph types with long texts
        first = str(exc).splitlines()[0]
        # A valid model with an operator or type ORT has no kernel for (bf16 on CPU) is not a broken file.
        fix = ("ONNX Runtime has no kernel for an operator or type in it (bf16 needs TensorRT): run it with "
               "--backend tensorrt or build the variant with high_precision_dtype fp16"
               if "NOT_IMPLEMENTED" in first or "Could not find an implementation" in first
               else "check the file is a valid ONNX model (re-export or rebuild the variant)")
        raise BackendError(f"ONNX Runtime could not load {path}: {first}; {fix}.") from exc


_OPTIMIZED_VERSION = 1


@functools.cache  # fixed for the process; read once, not at every build
def cpu_identity() -> str:
    """What ONNX Runtime's CPU graph rewrites depend on: architecture, CPU model and ISA flags.

    Its layout transforms pick blocked formats by instruction set (AVX2 vs AVX-512), so an
    offline-optimized model is only valid on the CPU it was made for.
    """
    fields = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() in ("model name", "flags") and name.strip() not in fields:
                fields[name.strip()] = " ".join(sorted(value.split())) if name.strip() == "flags" else value.strip()
    return hash_key(platform.machine(), platform.processor(), fields)


def optimize_offline(src: Path, dst: Path) -> dict[str, Any]:
    """Write ONNX Runtime's fully optimized graph of ``src`` (CPU provider) to ``dst``.

    Sessions then load it with optimizations off: the rewrite (constant folding, Q/DQ and
    convolution fusions, layouts) is paid once per machine instead of at every session, which on
    a Q/DQ graph is most of the time it takes to open (about 0.2 s of 0.25 s for yolov5n INT8).
    """
    ort = _ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(dst)
    _session(str(src), so, ["CPUExecutionProvider"], src)
    return {"source": str(src), "onnxruntime": ort.__version__}


class OrtRunner(Runner):
    def __init__(self, engine: Engine, providers: list[Any], *, model_bytes: bytes | None = None):
        """Open ``engine.path``, or ``model_bytes`` (a serialized ModelProto made from it) when given."""
        ort = _ort()
        so = ort.SessionOptions()
        # An engine `build` optimized offline is loaded as it is (ORT's offline mode).
        so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL if engine.meta.get("optimized_offline")
                                       else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        if engine.options.threads:
            so.intra_op_num_threads = engine.options.threads
        self.session = _session(str(engine.path) if model_bytes is None else model_bytes, so, providers, engine.path)
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name, self.output_name = inp.name, out.name
        self.input_spec = _input_spec(inp.name, inp.shape, inp.type, engine.path)
        self.engine = engine
        self._info: RunnerInfo | None = None

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        # session.run returns a new host array on every call: nothing of the runner's is reused.
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    def _time(self, batch: np.ndarray, *, warmup: int, iterations: int) -> TimingSamples:
        for _ in range(warmup):
            self._infer(batch)
        samples = []
        for _ in range(iterations):
            t0 = time.perf_counter()
            self._infer(batch)  # session.run returns host arrays: the call is synchronous
            samples.append((time.perf_counter() - t0) * 1e3)
        return TimingSamples(host_ms=tuple(samples))

    def info(self) -> RunnerInfo:
        if self._info is None:  # fixed once the session is open; kept so that close() loses nothing
            providers = tuple(self.session.get_providers())
            self._info = RunnerInfo(
                backend=BackendKind.ONNXRUNTIME.value, device=_device_name(list(providers)), input=self.input_spec,
                runtime_version=_ort().__version__, providers=providers,
                threads=self.engine.options.threads or os.cpu_count(),
            )
        return self._info

    def close(self) -> None:
        if self.session is not None:
            self.info()
        self.session = None


_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64"}


def _input_spec(name: str, shape: list[Any], ort_type: str, path: Path) -> InputSpec:
    """What the session's input takes; ONNX Runtime names dynamic axes by a string or None."""
    dims = [d if isinstance(d, int) and d > 0 else None for d in shape]
    n, rest = (dims[0], tuple(dims[1:])) if dims else (None, ())
    dtype = _ORT_DTYPES.get(ort_type, "float32")
    if n is None:
        return InputSpec(name, rest, dtype=dtype)
    return InputSpec(name, rest, min_batch=n, max_batch=n, dtype=dtype,
                     batch_fix=f"{path} has a fixed batch of {n}: export it with a dynamic batch axis to run {{n}}")


def _device_name(providers: list[str]) -> str:
    if providers and providers[0] == "CUDAExecutionProvider":
        return "CUDA (onnxruntime-gpu)"
    return f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()}"


class OrtBackend(Backend):
    kind = BackendKind.ONNXRUNTIME

    def __init__(self, *, use_cuda: bool | None = None):
        self.use_cuda = cuda_provider_usable() if use_cuda is None else use_cuda

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            _ort()
        except ImportError:
            return "onnxruntime is not installed (pip install onnxruntime-gpu)"
        return None

    def build(self, onnx_path: Path, options: BuildOptions, cache: ArtifactCache | None) -> Engine:
        """The ONNX itself, made ready for ONNX Runtime: float16 QuantizeLinear repaired (module docstring)
        and, on the CPU provider, optimized offline for this CPU; both cached. ``cache=None`` skips both."""
        onnx_path = Path(onnx_path)
        if cache is None:
            return Engine(self.kind, onnx_path, onnx_path, options)
        source, meta = onnx_path, {}
        if _model_needing_repair(onnx_path) is not None:
            key = hash_key(sha256_file(onnx_path), "quantize-in-fp32", _QUANTIZE_REPAIR_VERSION)
            entry = cache.get_or_build(
                "ort-qdq-fp32", key, ".onnx",
                lambda tmp: {"source": str(onnx_path), "rewritten_nodes": quantize_in_fp32(onnx_path, tmp)},
            )
            source, meta = entry.path, {"fp16_quantize_repaired": entry.meta["rewritten_nodes"]}
        if self.use_cuda:  # the CUDA provider's fusions are decided at session creation: nothing to save
            return Engine(self.kind, source, onnx_path, options, meta=meta)
        key = hash_key("ort-optimized", _OPTIMIZED_VERSION, sha256_file(source), _ort().__version__, cpu_identity())
        entry = cache.get_or_build("ort-optimized", key, ".onnx", lambda tmp: optimize_offline(source, tmp))
        return Engine(self.kind, entry.path, onnx_path, options, meta={**meta, "optimized_offline": True})

    def providers(self, device_id: int) -> list[Any]:
        if self.use_cuda:
            return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def open(self, engine: Engine) -> OrtRunner:
        return self._runner(engine, None)

    def _runner(self, engine: Engine, model_bytes: bytes | None) -> OrtRunner:
        """The runner of ``engine`` (``model_bytes``: its repaired ModelProto, opened in memory); the CUDA backend's differs."""
        return OrtRunner(engine, self.providers(engine.options.device_id), model_bytes=model_bytes)

    def open_onnx(self, onnx_path: Path, options: BuildOptions) -> OrtRunner:
        """Open any ONNX for inference, repairing float16 QuantizeLinear nodes in memory (nothing cached).

        For graphs opened once (derived Q/DQ graphs, a build scored once); what is opened again and
        again goes through `build`, whose repaired copy is cached.
        """
        onnx_path = Path(onnx_path)
        model = _model_needing_repair(onnx_path)
        if model is None:
            return self.open(Engine(self.kind, onnx_path, onnx_path, options))

        load_external_data_for_model(model, str(onnx_path.parent))  # no-op for single-file models
        rewritten = repair_fp16_quantize(model)
        engine = Engine(self.kind, onnx_path, onnx_path, options,
                        meta={"fp16_quantize_repaired": rewritten, "repaired_in_memory": True})
        return self._runner(engine, model.SerializeToString())

    def device_description(self) -> str:
        return _device_name(["CUDAExecutionProvider"] if self.use_cuda else ["CPUExecutionProvider"])
