"""The backend interface: build an engine from an ONNX, open it, infer, time, describe.

A backend is a small class; GPU-specific code stays behind it and is imported lazily, so this
module (and everything on the CPU side) imports on a machine without TensorRT or a GPU.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..cache import ArtifactCache


class BackendKind(str, enum.Enum):
    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"


@dataclass(frozen=True)
class BuildOptions:
    """Everything besides the ONNX that decides what an engine is."""

    batch_sizes: tuple[int, ...] = (1,)  # every batch size the engine must accept
    device_id: int = 0
    workspace_mib: int | None = None  # TensorRT workspace pool limit; None = TensorRT's default
    optimization_level: int = 3  # TensorRT builder optimisation level (0..5)
    threads: int | None = None  # ONNX Runtime intra-op threads; None = all cores

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Engine:
    """A built, loadable artefact: an ONNX for ONNX Runtime, a serialized plan for TensorRT."""

    backend: BackendKind
    path: Path
    source_onnx: Path
    options: BuildOptions
    meta: dict[str, Any] = field(default_factory=dict)  # cache key, build time, precision report...


@dataclass(frozen=True)
class TimingSamples:
    """Raw per-iteration samples of one timed block, in milliseconds per batch.

    ``host_ms`` is the host wall clock around one synchronised inference (inputs already on the
    device where the backend has one); ``device_ms`` comes from device events where available.
    Copies are timed apart from compute (``h2d_ms``, ``d2h_ms``).
    """

    host_ms: tuple[float, ...]
    device_ms: tuple[float, ...] = ()
    h2d_ms: tuple[float, ...] = ()
    d2h_ms: tuple[float, ...] = ()
    peak_memory_bytes: int | None = None

    @staticmethod
    def median(samples: tuple[float, ...]) -> float | None:
        return float(np.median(samples)) if samples else None


class Runner(abc.ABC):
    """An opened engine. Use as a context manager; ``infer`` takes and returns host arrays."""

    input_name: str
    output_name: str

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abc.abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run one NCHW float batch; return the raw ``[batch, 4 + classes, anchors]`` output."""

    @abc.abstractmethod
    def time(self, batch: np.ndarray, *, warmup: int, iterations: int) -> TimingSamples:
        """Time ``iterations`` synchronised inferences of ``batch`` after ``warmup`` untimed ones."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """Backend, device, precision and provider facts for records and reports (never raises)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release device resources."""


class Backend(abc.ABC):
    """Builds engines and opens runners for one runtime."""

    kind: ClassVar[BackendKind]

    @classmethod
    @abc.abstractmethod
    def unavailable_reason(cls) -> str | None:
        """None when the runtime can be used here, else one sentence saying why not."""

    @abc.abstractmethod
    def build(self, onnx_path: Path, options: BuildOptions, cache: ArtifactCache) -> Engine:
        """Build (or fetch from ``cache``) the engine for ``onnx_path``."""

    @abc.abstractmethod
    def open(self, engine: Engine) -> Runner:
        """Load ``engine`` and return a runner ready for ``infer``."""

    @abc.abstractmethod
    def device_description(self) -> str:
        """A short human-readable name of the device this backend runs on."""
