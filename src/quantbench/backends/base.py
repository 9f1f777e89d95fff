"""The backend interface: build an engine from an ONNX, open it, infer, time, and say what it runs on.

A backend is a small class; GPU-specific code stays behind it and is imported lazily, so this
module (and everything on the CPU side) imports on a machine without TensorRT or a GPU.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from quantbench.cache import ArtifactCache
from quantbench.errors import BackendError, ConfigError


class BackendKind(str, enum.Enum):
    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"
    ONNXRUNTIME_CUDA = "onnxruntime-cuda"  # ONNX Runtime's CUDA provider, device-bound (`backends.ort_cuda`)


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


@dataclass(frozen=True)
class InputSpec:
    """The batches a runner accepts: numpy arrays of ``dtype`` shaped (N, C, H, W), N from
    ``min_batch`` to ``max_batch`` (None: no upper limit), (C, H, W) = ``image_shape`` (None on an
    axis the engine leaves dynamic)."""

    name: str
    image_shape: tuple[int | None, ...]  # the axes after the batch axis: (C, H, W) for an image model
    min_batch: int = 1
    max_batch: int | None = None
    dtype: str = "float32"  # what callers pass (a TensorRT runner casts to its engine's own input type)
    batch_fix: str = "rebuild it with BuildOptions.batch_sizes including {n}"  # the fix, for a batch size n

    def problem(self, batch: Any) -> str | None:
        """Why ``batch`` cannot be given to the runner (one sentence), or None when it fits."""
        if not isinstance(batch, np.ndarray):
            return (f"input {self.name!r} must be a numpy array, got a {type(batch).__name__}; "
                    f"pass np.asarray(batch, dtype=np.{self.dtype}).")
        if batch.dtype != np.dtype(self.dtype):
            return f"input {self.name!r} must be {self.dtype}, got {batch.dtype}; pass batch.astype(np.{self.dtype})."
        wanted = "(N, " + ", ".join("?" if d is None else str(d) for d in self.image_shape) + ")"
        if batch.ndim != 1 + len(self.image_shape):
            return (f"input {self.name!r} takes batches of shape {wanted}, got {batch.ndim} axes "
                    f"{tuple(batch.shape)}; add the batch axis with batch[None] or letterbox the images.")
        if any(d is not None and d != got for d, got in zip(self.image_shape, batch.shape[1:])):
            return (f"input {self.name!r} takes batches of shape {wanted}, got {tuple(batch.shape)}; "
                    "letterbox the images to the model's input size.")
        n = batch.shape[0]
        if n < self.min_batch or (self.max_batch is not None and n > self.max_batch):
            allowed = (f"{self.min_batch}" if self.max_batch == self.min_batch
                       else f"{self.min_batch} to {self.max_batch if self.max_batch is not None else 'any'}")
            return (f"a batch of {n} does not fit input {self.name!r}, built for batches of {allowed}; "
                    f"{self.batch_fix.format(n=n)}.")
        return None


@dataclass(frozen=True)
class RunnerInfo:
    """What an opened runner runs on and with, the same fields for every backend (None: not known
    or not applicable to that backend); records, provenance and reports read it."""

    backend: str  # a BackendKind value, or "replay"
    device: str  # human-readable: "NVIDIA H200 (sm_90, 141 GiB)", "CPU x86_64 x16"
    input: InputSpec
    runtime_version: str | None = None  # the onnxruntime / tensorrt version that runs the engine
    gpu: str | None = None  # GPU name, where the engine runs on one
    compute_capability: str | None = None  # "9.0"
    providers: tuple[str, ...] = ()  # ONNX Runtime execution providers, in priority order
    provider_options: Mapping[str, Mapping[str, str]] | None = None  # per provider, as ONNX Runtime applied them
    threads: int | None = None  # ONNX Runtime intra-op threads
    cuda_graph: bool = False  # Runner.time replays the enqueue from a CUDA graph
    engine_path: str | None = None  # the serialized plan (TensorRT)
    engine_memory_bytes: int | None = None  # device memory the engine's context needs
    input_dtype: str | None = None  # what the engine takes inside (float16 for FP16-IO graphs); batches are float32
    precision: Mapping[str, Any] | None = None  # TensorRT per-layer precision summary
    simulated: str | None = None  # why figures from this runner are no measurement (a fake, a stand-in), else None


class Runner(abc.ABC):
    """An opened engine. Use as a context manager.

    ``infer`` and ``time`` check their batch once, against ``input_spec`` (a float32 NCHW numpy
    array, a batch size the engine was built for, the model's image shape; a `BackendError` of
    one sentence otherwise), then call the backend's ``_infer`` / ``_time``, which see valid
    batches only.

    **Outputs may be reused buffers**: the array ``infer`` returns is valid until the runner's
    next ``infer`` or ``time`` call or ``close``; a caller that keeps it longer copies it (once).
    """

    input_name: str
    output_name: str
    input_spec: InputSpec  # set by the backend when it opens the engine

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run one NCHW float32 batch; the raw ``[batch, 4 + classes, anchors]`` float32 output (see the class)."""
        self._check(batch)
        return self._infer(batch)

    def time(self, batch: np.ndarray, *, warmup: int, iterations: int) -> TimingSamples:
        """Time ``iterations`` synchronised inferences of ``batch`` after ``warmup`` untimed ones."""
        if iterations < 1 or warmup < 0:
            raise ConfigError(f"time() needs iterations >= 1 and warmup >= 0, got {iterations} and {warmup}.")
        self._check(batch)
        return self._time(batch, warmup=warmup, iterations=iterations)

    def _check(self, batch: Any) -> None:
        problem = self.input_spec.problem(batch)
        if problem is not None:
            raise BackendError(problem)

    @abc.abstractmethod
    def _infer(self, batch: np.ndarray) -> np.ndarray:
        """``infer`` for a checked batch."""

    @abc.abstractmethod
    def _time(self, batch: np.ndarray, *, warmup: int, iterations: int) -> TimingSamples:
        """``time`` for a checked batch and counts."""

    @abc.abstractmethod
    def info(self) -> RunnerInfo:
        """Backend, device, versions and engine facts (never raises, also on a closed runner)."""

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
