"""Backend registry: names -> classes, and the `auto` rule.

`auto` picks TensorRT when `tensorrt` imports and a CUDA device is present, else ONNX Runtime's CUDA
provider when onnxruntime has it and a CUDA device answers, else ONNX Runtime on the CPU.
TensorRT is imported only inside `backends.trt`, and only when that backend is used; the CUDA
provider's runner (`backends.ort_cuda`) imports cuda-python only when it opens an engine.
"""

from __future__ import annotations

import argparse
import importlib
import logging

from quantbench.backends.base import Backend, BackendKind, BuildOptions, Engine, InputSpec, Runner, RunnerInfo, TimingSamples
from quantbench.errors import BackendUnavailable, ConfigError

__all__ = [
    "Backend",
    "BackendKind",
    "BuildOptions",
    "Engine",
    "InputSpec",
    "Runner",
    "RunnerInfo",
    "TimingSamples",
    "backend_class",
    "resolve_backend",
    "BACKEND_CHOICES",
    "backend_name",
]

log = logging.getLogger(__name__)

_MODULES = {
    BackendKind.ONNXRUNTIME: ("quantbench.backends.ort", "OrtBackend"),
    BackendKind.TENSORRT: ("quantbench.backends.trt", "TensorRTBackend"),
    BackendKind.ONNXRUNTIME_CUDA: ("quantbench.backends.ort_cuda", "OrtCudaBackend"),
}
# What `auto` tries, in order: the last one always runs (ONNX Runtime on the CPU).
AUTO_ORDER = (BackendKind.TENSORRT, BackendKind.ONNXRUNTIME_CUDA, BackendKind.ONNXRUNTIME)
BACKEND_CHOICES = ("auto", *(k.value for k in BackendKind))


def backend_name(text: str) -> str:
    """argparse ``type=`` for ``--backend``/``--qb-backend``: one of `BACKEND_CHOICES`."""
    if text not in BACKEND_CHOICES:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(BACKEND_CHOICES)}")
    return text


def backend_class(kind: BackendKind) -> type[Backend]:
    module, name = _MODULES[kind]
    return getattr(importlib.import_module(module), name)


def resolve_backend(name: str) -> tuple[type[Backend], str | None]:
    """The backend class for ``name`` and, for ``auto`` falling back, the reason it fell back.

    An explicitly named backend that cannot run here raises BackendUnavailable.
    """
    if name == "auto":
        # The reason returned is TensorRT's (the drivers print "TensorRT not found (...)"); the CUDA
        # provider's is logged, so that a GPU run that lands on the CPU says why.
        fallback = None
        for kind in AUTO_ORDER[:-1]:
            cls = backend_class(kind)
            reason = cls.unavailable_reason()
            if reason is None:
                return cls, fallback
            fallback = fallback or reason
            log.info("auto: %s cannot run here (%s)", kind.value, reason)
        return backend_class(AUTO_ORDER[-1]), fallback
    try:
        kind = BackendKind(name)
    except ValueError:
        raise ConfigError(f"backend {name!r} is not one of {', '.join(BACKEND_CHOICES)}.") from None
    cls = backend_class(kind)
    reason = cls.unavailable_reason()
    if reason is not None:
        raise BackendUnavailable(f"backend {name!r} cannot run here: {reason}")
    return cls, None
