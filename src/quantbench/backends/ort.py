"""ONNX Runtime backend: the faithful simulator of Q/DQ numerics used by the accuracy gate.

CPU execution provider everywhere; the CUDA provider where onnxruntime-gpu finds a GPU. Its CPU
latency says nothing about TensorRT INT8 speed (Q/DQ graphs run slower than FP32 on ORT's CPU
EP) and is reported as what it is.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..cache import ArtifactCache
from ..errors import BackendError
from .base import Backend, BackendKind, BuildOptions, Engine, Runner, TimingSamples


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


class OrtRunner(Runner):
    def __init__(self, engine: Engine, providers: list[Any]):
        ort = _ort()
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if engine.options.threads:
            so.intra_op_num_threads = engine.options.threads
        try:
            self.session = ort.InferenceSession(str(engine.path), sess_options=so, providers=providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph types with long texts
            raise BackendError(
                f"ONNX Runtime could not load {engine.path}: {str(exc).splitlines()[0]}; "
                "check the file is a valid ONNX model (re-export or rebuild the variant)."
            ) from exc
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name, self.output_name = inp.name, out.name
        self.engine = engine

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    def time(self, batch: np.ndarray, *, warmup: int, iterations: int) -> TimingSamples:
        for _ in range(warmup):
            self.infer(batch)
        samples = []
        for _ in range(iterations):
            t0 = time.perf_counter()
            self.infer(batch)  # session.run returns host arrays: the call is synchronous
            samples.append((time.perf_counter() - t0) * 1e3)
        return TimingSamples(host_ms=tuple(samples))

    def describe(self) -> dict[str, Any]:
        ort = _ort()
        providers = self.session.get_providers()
        return {
            "backend": BackendKind.ONNXRUNTIME.value,
            "onnxruntime": ort.__version__,
            "providers": providers,
            "device": _device_name(providers),
            "threads": self.engine.options.threads or os.cpu_count(),
        }

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]


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

    def build(self, onnx_path: Path, options: BuildOptions, cache: ArtifactCache) -> Engine:
        # ONNX Runtime compiles at session creation: the ONNX itself is the engine.
        return Engine(self.kind, Path(onnx_path), Path(onnx_path), options)

    def providers(self, device_id: int) -> list[Any]:
        if self.use_cuda:
            return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def open(self, engine: Engine) -> OrtRunner:
        return OrtRunner(engine, self.providers(engine.options.device_id))

    def device_description(self) -> str:
        return _device_name(["CUDAExecutionProvider"] if self.use_cuda else ["CPUExecutionProvider"])
