"""ONNX Runtime's CUDA execution provider as a backend of its own: ``--qb-backend onnxruntime-cuda``.

A backend kind, not a flag of the `onnxruntime` backend, because records, reports, the history and
``auto`` keep results per backend name: a CUDA latency filed under "onnxruntime" would sit beside
(and be compared with) CPU latencies. The CPU backend stays exactly as it was.

The runner works as the TensorRT runner does (`backends.trt`), through the same CUDA layer
(`backends.cuda`, cuda-python): pinned host buffers and device buffers per batch shape, bound to the
session with ONNX Runtime's `IOBinding` (input and output stay on the device), and one CUDA stream
that ONNX Runtime computes on (provider option ``user_compute_stream``), so CUDA events recorded on
it time the copies (H2D, D2H) and the compute apart. Runs use the run option
``disable_synchronize_execution_providers`` so that ``run_with_iobinding`` returns once the work is
enqueued, as TensorRT's ``execute_async_v3`` does; the runner synchronises the stream itself.
Optional CUDA graphs are ONNX Runtime's own (``enable_cuda_graph``, one ``gpu_graph_id`` per batch
shape): its graph bakes in the bound addresses, which is why the buffers of each shape are kept
for the life of the runner.

What it measures: an INT8 Q/DQ graph runs here as ONNX Runtime's CUDA kernels with unfused
QuantizeLinear/DequantizeLinear, not as TensorRT's INT8 kernels; its latency is reported with that
label (`outputs.report`), never as INT8 speed. Peak memory is the device-wide increase since the
runner opened (``cudaMemGetInfo``), as for TensorRT: ONNX Runtime's Python API reports no arena
statistics. Provider options are recorded as ONNX Runtime applied them
(``session.get_provider_options()``), in `RunnerInfo` and the records' provenance.

Nothing here imports onnxruntime or cuda-python at module import: both come through functions.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantbench.backends import cuda
from quantbench.backends import ort as ort_backend
from quantbench.backends.base import BackendKind, BuildOptions, Engine, Runner, RunnerInfo, TimingSamples
from quantbench.backends.ort import OrtBackend, _input_spec, _session
from quantbench.errors import BackendError, BackendUnavailable

CUDA_PROVIDER = "CUDAExecutionProvider"
INSTALL_HINT = "pip install 'onnxruntime-gpu[cuda,cudnn]' built for this machine's CUDA major version"
# Run option: return from run_with_iobinding once the work is enqueued (the runner synchronises).
NO_SYNC = "disable_synchronize_execution_providers"
GRAPH_ID = "gpu_graph_id"  # ONNX Runtime's run option naming which CUDA graph a run captures or replays
# ONNX Runtime's CUDA provider runs one regular run (for its allocations) before it captures a graph.
RUNS_BEFORE_GRAPH = 2
STREAM_OPTION = "user_compute_stream"
_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def provider_options(device_id: int, stream_ptr: int, cuda_graph: bool) -> dict[str, str]:
    """The CUDA provider's options this backend asks for (ONNX Runtime takes strings)."""
    return {
        "device_id": str(device_id),
        STREAM_OPTION: str(stream_ptr),  # ONNX Runtime computes on the runner's stream: events time it
        "enable_cuda_graph": "1" if cuda_graph else "0",
        # cuDNN tries every convolution algorithm once per shape (ONNX Runtime's default, stated for the record).
        "cudnn_conv_algo_search": "EXHAUSTIVE",
    }


def recorded_options(applied: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """``session.get_provider_options()`` as records keep it: the stream's address differs in every process."""
    out = {}
    for provider, options in applied.items():
        options = dict(options)
        if options.get(STREAM_OPTION) not in (None, "", "0"):
            options[STREAM_OPTION] = "the runner's stream"
        out[provider] = options
    return out


@dataclass
class _Slot:
    """The bound buffers of one input shape and the run options of its CUDA graph (kept while the runner lives)."""

    shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    host_in: cuda.PinnedBuffer
    dev_in: cuda.DeviceBuffer
    host_out: cuda.PinnedBuffer
    dev_out: cuda.DeviceBuffer
    run_options: Any


class OrtCudaRunner(Runner):
    """A session on the CUDA provider, bound to device buffers; the runner's stream is ONNX Runtime's."""

    def __init__(self, engine: Engine, *, cuda_graph: bool = False, model_bytes: bytes | None = None):
        self.engine, self.cuda_graph = engine, cuda_graph
        self.session: Any = None
        self._binding: Any = None
        self._info: RunnerInfo | None = None
        self._slots: dict[tuple[int, ...], _Slot] = {}
        self._bound: tuple[int, ...] | None = None
        self._opened = False  # info() needs the whole of _open
        self._resources = ExitStack()
        device_id = engine.options.device_id
        cuda.set_device(device_id)
        self.gpu = cuda.gpu_info(device_id)
        self._used_before = cuda.memory_info().used_bytes
        try:
            self._open(engine, model_bytes)
        except BaseException:
            self.close()
            raise

    def _open(self, engine: Engine, model_bytes: bytes | None) -> None:
        ort = ort_backend._ort()
        preload = getattr(ort, "preload_dlls", None)  # onnxruntime >= 1.21
        if preload is not None:
            # CUDA and cuDNN from the nvidia-* pip packages (the GPU machine's torch environment has them),
            # where they are not on the library path; what is loaded already is kept. It raises nothing:
            # a library still missing shows as the CPU fallback refused below.
            preload()
        self._stream = self._resources.enter_context(cuda.Stream())
        requested = provider_options(engine.options.device_id, self._stream.ptr, self.cuda_graph)
        so = ort.SessionOptions()
        so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL if engine.meta.get("optimized_offline")
                                       else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        source = str(engine.path) if model_bytes is None else model_bytes
        self.session = _session(source, so, [(CUDA_PROVIDER, requested), "CPUExecutionProvider"], engine.path)
        providers = self.session.get_providers()
        if not providers or providers[0] != CUDA_PROVIDER:
            # ONNX Runtime falls back to the CPU when the CUDA provider's libraries do not load, with a warning only.
            raise BackendUnavailable(
                f"ONNX Runtime opened {engine.path} on {', '.join(providers) or 'no provider'} instead of {CUDA_PROVIDER} "
                "(its CUDA or cuDNN libraries did not load); call onnxruntime.preload_dlls() first or "
                f"{INSTALL_HINT}.")
        self.providers = tuple(providers)
        self.provider_options = recorded_options(self.session.get_provider_options())
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name, self.output_name = inp.name, out.name
        self.input_spec = _input_spec(inp.name, inp.shape, inp.type, engine.path)
        self._in_dtype, self._out_dtype = np.dtype(_numpy_type(inp.type, inp.name)), np.dtype(_numpy_type(out.type, out.name))
        rest = tuple(out.shape[1:])
        if not all(isinstance(d, int) and d > 0 for d in rest):
            raise BackendError(f"the output {out.name!r} of {engine.path} has shape {list(out.shape)}, dynamic after the "
                               "batch axis, so its device buffer cannot be sized; export the model with a fixed imgsz.")
        self._out_rest: tuple[int, ...] = rest
        self._binding = self.session.io_binding()
        self._opened = True

    # -- buffers and binding -----------------------------------------------------------------------

    def _slot(self, shape: tuple[int, ...]) -> _Slot:
        """The buffers of ``shape``, made on first use and bound to the session when another shape was bound."""
        slot = self._slots.get(shape)
        if slot is None:
            out_shape = (shape[0], *self._out_rest)
            push = self._resources.enter_context
            host_in = push(cuda.PinnedBuffer(shape, self._in_dtype))
            host_out = push(cuda.PinnedBuffer(out_shape, self._out_dtype))
            run_options = ort_backend._ort().RunOptions()
            run_options.add_run_config_entry(NO_SYNC, "1")
            if self.cuda_graph:  # one graph per shape; ids from 1 (0 is ONNX Runtime's own)
                run_options.add_run_config_entry(GRAPH_ID, str(len(self._slots) + 1))
            slot = _Slot(shape, out_shape, host_in, push(cuda.DeviceBuffer(host_in.nbytes)), host_out,
                         push(cuda.DeviceBuffer(host_out.nbytes)), run_options)
            self._slots[shape] = slot
        if self._bound != shape:
            device_id = self.engine.options.device_id
            self._binding.bind_input(self.input_name, "cuda", device_id, self._in_dtype.type, list(shape), slot.dev_in.ptr)
            self._binding.bind_output(self.output_name, "cuda", device_id, self._out_dtype.type, list(slot.out_shape),
                                      slot.dev_out.ptr)
            self._bound = shape
        return slot

    def _stage(self, batch: np.ndarray) -> _Slot:
        slot = self._slot(tuple(int(d) for d in batch.shape))
        slot.host_in.array[...] = batch
        return slot

    def _run(self, slot: _Slot) -> None:
        """Enqueue one inference on the runner's stream (returns before the GPU is done)."""
        try:
            self.session.run_with_iobinding(self._binding, slot.run_options)
        except Exception as exc:  # ORT raises its own Fail/RuntimeException types with long texts
            raise BackendError(f"ONNX Runtime's CUDA provider failed to run {self.engine.path} on a batch of shape "
                               f"{slot.shape}: {str(exc).splitlines()[0]}; open the backend with cuda_graph=False "
                               "or check the GPU with nvidia-smi.") from exc

    def _output(self, slot: _Slot) -> np.ndarray:
        """The pinned output itself for a float32 output (no copy: `Runner` says outputs are reused)."""
        return np.asarray(slot.host_out.array, dtype=np.float32)

    # -- Runner ------------------------------------------------------------------------------------

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        slot = self._stage(batch)
        slot.dev_in.copy_from_host(slot.host_in, self._stream)
        self._run(slot)
        slot.dev_out.copy_to_host(slot.host_out, self._stream)
        self._stream.synchronize()
        return self._output(slot)

    def _time(self, batch: np.ndarray, *, warmup: int, iterations: int) -> TimingSamples:
        """Per iteration: h2d, compute and d2h on CUDA events; host wall time around compute + sync."""
        slot = self._stage(batch)
        slot.dev_in.copy_from_host(slot.host_in, self._stream)
        # At least one run (cuDNN's algorithm search, the arena's first allocations); with CUDA graphs
        # enough for ONNX Runtime to have captured this shape's graph before the first timed run.
        for _ in range(max(warmup, RUNS_BEFORE_GRAPH if self.cuda_graph else 1)):
            self._run(slot)
        self._stream.synchronize()
        return cuda.event_timed_rounds(
            self._stream, iterations,
            copy_in=lambda: slot.dev_in.copy_from_host(slot.host_in, self._stream),
            launch=lambda: self._run(slot),
            copy_out=lambda: slot.dev_out.copy_to_host(slot.host_out, self._stream),
            used_before=self._used_before)

    def info(self) -> RunnerInfo:
        if self._info is None:  # fixed once the session is open; kept so that close() loses nothing
            gpu = self.gpu
            self._info = RunnerInfo(
                backend=BackendKind.ONNXRUNTIME_CUDA.value, device=gpu.describe(), input=self.input_spec,
                runtime_version=ort_backend._ort().__version__, gpu=gpu.name,
                compute_capability=f"{gpu.compute_capability[0]}.{gpu.compute_capability[1]}",
                providers=self.providers, cuda_graph=self.cuda_graph, input_dtype=str(self._in_dtype),
                provider_options=self.provider_options, simulated=simulated_reason(),
            )
        return self._info

    def close(self) -> None:
        if self._opened and self.session is not None:
            self.info()
        # The session computes on the runner's stream: it goes before the stream and the buffers it was bound to.
        self._binding, self.session = None, None
        self._slots.clear()
        self._bound = None
        self._resources.close()


def _numpy_type(ort_type: str, name: str) -> type:
    try:
        return _NUMPY[ort_type]
    except KeyError:
        raise BackendError(f"tensor {name!r} is {ort_type}; the onnxruntime-cuda backend binds float32 or float16 "
                           "inputs and outputs only: export the model with float inputs and outputs.") from None


def simulated_reason() -> str | None:
    """Why figures from this backend are no measurement (an onnxruntime fake, a CUDA stand-in), else None."""
    parts = [getattr(ort_backend._ort(), "SIMULATED", None), cuda.simulated_reason()]
    return "; ".join(p for p in parts if p) or None


class OrtCudaBackend(OrtBackend):
    """ONNX Runtime's CUDA provider with IO binding, CUDA-event timing and optional CUDA graphs."""

    kind = BackendKind.ONNXRUNTIME_CUDA

    def __init__(self, *, cuda_graph: bool = False):
        super().__init__(use_cuda=True)  # `build` then skips the CPU provider's offline optimization
        self.cuda_graph = cuda_graph

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            ort = ort_backend._ort()
        except ImportError:
            return f"onnxruntime is not installed ({INSTALL_HINT})"
        if CUDA_PROVIDER not in ort.get_available_providers():
            return (f"this onnxruntime build ({ort.__version__}) has no {CUDA_PROVIDER}, only "
                    f"{', '.join(ort.get_available_providers())} ({INSTALL_HINT})")
        reason = cuda.device_unavailable_reason()
        return None if reason is None else f"no CUDA device answers: {reason}"

    def _require(self) -> None:
        reason = self.unavailable_reason()
        if reason is not None:
            raise BackendUnavailable(f"the onnxruntime-cuda backend cannot run here: {reason}")

    def open(self, engine: Engine) -> OrtCudaRunner:  # type: ignore[override]
        self._require()
        return self._runner(engine, None)

    def open_onnx(self, onnx_path: Path, options: BuildOptions) -> OrtCudaRunner:  # type: ignore[override]
        self._require()
        return super().open_onnx(onnx_path, options)  # type: ignore[return-value]

    def _runner(self, engine: Engine, model_bytes: bytes | None) -> OrtCudaRunner:  # type: ignore[override]
        return OrtCudaRunner(engine, cuda_graph=self.cuda_graph, model_bytes=model_bytes)

    def device_description(self) -> str:
        if cuda.device_unavailable_reason() is not None:
            return "no CUDA device"
        return cuda.gpu_info(0).describe()
