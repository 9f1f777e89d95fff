"""Backend registry: names -> classes, and the `auto` rule.

`auto` picks TensorRT when `tensorrt` imports and a CUDA device is present, else ONNX Runtime.
TensorRT is imported only inside `backends.trt`, and only when that backend is used.
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
}
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
        trt = backend_class(BackendKind.TENSORRT)
        reason = trt.unavailable_reason()
        if reason is None:
            return trt, None
        return backend_class(BackendKind.ONNXRUNTIME), reason
    try:
        kind = BackendKind(name)
    except ValueError:
        raise ConfigError(f"backend {name!r} is not one of {', '.join(BACKEND_CHOICES)}.") from None
    cls = backend_class(kind)
    reason = cls.unavailable_reason()
    if reason is not None:
        raise BackendUnavailable(f"backend {name!r} cannot run here: {reason}")
    return cls, None
