"""Where TensorRT 10.x and 11.x differ, in one place.

Everything else in ``backends/trt.py`` uses the API both majors share (``OnnxParser``,
``build_serialized_network``, ``set_memory_pool_limit``, ``builder_optimization_level``,
``ProfilingVerbosity.DETAILED``, timing caches, named I/O tensors, ``execute_async_v3``,
``IEngineInspector``). What differs, from NVIDIA's 10.x -> 11.x migration guide:

- Strong typing. 11.x builds strongly typed networks only; its ``STRONGLY_TYPED`` creation flag is
  deprecated and ignored. 10.x builds weakly typed networks unless the flag is passed. quantbench
  wants strong typing everywhere (precision comes from the ONNX: AutoCast FP16 graphs, ModelOpt Q/DQ
  INT8 graphs), so 10.x gets the flag and 11.x gets no flag.
- ``EXPLICIT_BATCH``: deprecated and ignored since 10.0, gone in 11.x. Never passed.
- Builder precision flags (``BuilderFlag.FP16``/``INT8``...) and INT8 calibrators: removed in 11.x and
  meaningless for strongly typed 10.x networks. Never set on either.
- Engine device memory: ``device_memory_size`` (10.0) was superseded by ``device_memory_size_v2``
  (10.1+) and removed in 11.x.
- Inspector JSON: 11.x replaces ``Bindings`` by ``I/O Tensors`` and splits ``Format/Datatype``;
  ``trt_precision`` reads both shapes from the data itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from quantbench.errors import BackendUnavailable

SUPPORTED_MAJORS = (10, 11)
INSTALL_HINT = "pip install -U tensorrt-cu13 for a CUDA 13 driver, or tensorrt-cu12 for CUDA 12"


@dataclass(frozen=True)
class TrtApi:
    """The installed TensorRT's version and the version-dependent calls quantbench makes."""

    version: str
    major: int
    minor: int
    # Set when ``tensorrt`` is a stand-in that says so (``__quantbench_simulated__``, the tests' fake):
    # every figure built on it is then marked simulated, never passed off as a TensorRT measurement.
    simulated: str | None = None

    @classmethod
    def from_version(cls, version: str) -> TrtApi:
        match = re.match(r"(\d+)\.(\d+)", version or "")
        if match is None:
            raise BackendUnavailable(f"tensorrt reports an unreadable version {version!r}; reinstall it ({INSTALL_HINT}).")
        major, minor = int(match[1]), int(match[2])
        if major < SUPPORTED_MAJORS[0]:
            raise BackendUnavailable(
                f"tensorrt {version} is too old: quantbench needs TensorRT 10 or 11 ({INSTALL_HINT})."
            )
        return cls(version, major, minor)

    @classmethod
    def of(cls, trt: Any) -> TrtApi:
        """The API of an imported ``tensorrt`` module (or a stand-in carrying ``__version__``)."""
        api = cls.from_version(getattr(trt, "__version__", ""))
        simulated = getattr(trt, "__quantbench_simulated__", None)
        return cls(api.version, api.major, api.minor, str(simulated)) if simulated else api

    @property
    def always_strongly_typed(self) -> bool:
        return self.major >= 11

    def network_flags(self, trt: Any) -> int:
        """``create_network`` flags for a strongly typed network on this version."""
        if self.always_strongly_typed:
            return 0
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)

    def engine_device_memory_bytes(self, engine: Any) -> int:
        """Device memory an execution context of ``engine`` needs (activations, scratch)."""
        if (self.major, self.minor) >= (10, 1):
            return int(engine.device_memory_size_v2)
        return int(engine.device_memory_size)
