"""The CUDA layer under the TensorRT runner: buffers, a stream, events and CUDA graphs via cuda-python.

Every CUDA call goes through :func:`check`, which unpacks cuda-python's ``(error, *values)`` tuples
and raises :class:`BackendError` naming the call and the CUDA error. Each resource is a small class
that frees itself in ``close()`` and works as a context manager, so a failed benchmark never leaks
device memory into the next one. ``cuda-python`` is imported lazily: this module imports (and its
pure parts are tested) on a machine without a GPU.

Works with the cuda-bindings layout (``cuda.bindings.runtime``, cuda-python >= 12.6, 13.x) and the
older ``cuda.cudart`` layout (cuda-python 12.3-12.5).
"""

from __future__ import annotations

import ctypes
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType, TracebackType
from typing import Any

import numpy as np

from quantbench.backends.base import TimingSamples
from quantbench.errors import BackendError, BackendUnavailable

CUDA_PYTHON_HINT = "pip install cuda-python"


@functools.lru_cache(maxsize=1)
def cudart() -> ModuleType:
    """The CUDA runtime bindings module, or BackendUnavailable when cuda-python is missing."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime  # cuda-python 12.3-12.5 layout
        except ImportError:
            raise BackendUnavailable(f"cuda-python is not installed ({CUDA_PYTHON_HINT})") from None
    return runtime


def error_name(err: Any) -> str:
    """``cudaErrorMemoryAllocation``-style name of a CUDA error code (works without a GPU)."""
    status, name = cudart().cudaGetErrorName(err)
    return name.decode() if int(status) == 0 else f"cudaError {int(err)}"


def _error_text(err: Any) -> str:
    status, text = cudart().cudaGetErrorString(err)
    return text.decode() if int(status) == 0 else "unknown error"


def _hint(name: str) -> str:
    if name == "cudaErrorMemoryAllocation":
        return "free GPU memory (other processes, larger engines) or use a smaller batch size"
    if name in ("cudaErrorNoDevice", "cudaErrorInsufficientDriver", "cudaErrorInvalidDevice"):
        return "check the NVIDIA driver, `nvidia-smi` and CUDA_VISIBLE_DEVICES"
    return "rerun with CUDA_LAUNCH_BLOCKING=1 to find the failing call"


def check(result: Any, call: str) -> Any:
    """Unpack a cuda-python result ``(err, *values)``; raise BackendError unless ``err`` is success.

    Returns None, the single value, or a tuple of values.
    """
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        name = error_name(err)
        raise BackendError(f"CUDA call {call} failed with {name} ({_error_text(err)}); {_hint(name)}.")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def device_unavailable_reason(device_id: int = 0) -> str | None:
    """None when cuda-python is importable and CUDA device ``device_id`` answers, else why not."""
    try:
        rt = cudart()
    except BackendUnavailable as exc:
        return str(exc)
    err, count = rt.cudaGetDeviceCount()
    if int(err) != 0:
        return f"no usable CUDA device ({error_name(err)}: {_error_text(err)})"
    if device_id >= count:
        return f"CUDA device {device_id} does not exist (this machine has {count})"
    return None


def simulated_reason() -> str | None:
    """The reason a CUDA runtime stand-in gives (``SIMULATED``, the tests' CPU stand-in), else None."""
    try:
        return getattr(cudart(), "SIMULATED", None)
    except BackendUnavailable:
        return None


@dataclass(frozen=True)
class GpuInfo:
    """What identifies a GPU for engine and timing caches: its name and compute capability."""

    device_id: int
    name: str
    compute_capability: tuple[int, int]
    total_memory_bytes: int

    @property
    def sm(self) -> str:
        return f"sm_{self.compute_capability[0]}{self.compute_capability[1]}"

    def describe(self) -> str:
        return f"{self.name} ({self.sm}, {self.total_memory_bytes / 2**30:.0f} GiB)"


def set_device(device_id: int) -> None:
    check(cudart().cudaSetDevice(device_id), f"cudaSetDevice({device_id})")


def gpu_info(device_id: int = 0) -> GpuInfo:
    rt = cudart()
    props = check(rt.cudaGetDeviceProperties(device_id), f"cudaGetDeviceProperties({device_id})")
    name = props.name.split(b"\0", 1)[0].decode() if isinstance(props.name, bytes) else str(props.name)
    return GpuInfo(device_id, name, (int(props.major), int(props.minor)), int(props.totalGlobalMem))


@dataclass(frozen=True)
class MemoryInfo:
    free_bytes: int
    total_bytes: int

    @property
    def used_bytes(self) -> int:
        return self.total_bytes - self.free_bytes


def memory_info() -> MemoryInfo:
    """Free and total memory of the current device (device-wide, all processes)."""
    free, total = check(cudart().cudaMemGetInfo(), "cudaMemGetInfo")
    return MemoryInfo(int(free), int(total))


class _Resource:
    """Context-manager plumbing: ``close()`` is idempotent and runs on exit."""

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class Stream(_Resource):
    """One non-blocking CUDA stream (does not synchronise with the legacy default stream)."""

    def __init__(self) -> None:
        self._runtime = cudart()  # released through the runtime that made it
        rt = cudart()
        self.handle: Any = check(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")

    @property
    def ptr(self) -> int:
        """The raw ``cudaStream_t`` as an int, the form TensorRT's ``execute_async_v3`` takes."""
        return int(self.handle)

    def synchronize(self) -> None:
        check(cudart().cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def is_idle(self) -> bool:
        """True when all work enqueued so far has finished (cudaStreamQuery), without waiting."""
        rt = cudart()
        (err,) = rt.cudaStreamQuery(self.handle)
        if err == rt.cudaError_t.cudaErrorNotReady:
            return False
        check((err,), "cudaStreamQuery")
        return True

    def close(self) -> None:
        if self.handle is not None:
            handle, self.handle = self.handle, None
            check(self._runtime.cudaStreamDestroy(handle), "cudaStreamDestroy")


class DeviceBuffer(_Resource):
    """``nbytes`` of device memory (cudaMalloc)."""

    def __init__(self, nbytes: int) -> None:
        self._runtime = cudart()  # released through the runtime that made it
        if nbytes <= 0:
            raise BackendError(f"a device buffer needs a positive size, got {nbytes} bytes; check the tensor shape.")
        self.nbytes = int(nbytes)
        self._ptr: int | None = int(check(cudart().cudaMalloc(self.nbytes), f"cudaMalloc({self.nbytes})"))

    @property
    def ptr(self) -> int:
        if self._ptr is None:
            raise BackendError("this device buffer was already freed; open the runner again.")
        return self._ptr

    def copy_from_host(self, host: PinnedBuffer, stream: Stream, nbytes: int | None = None) -> None:
        """Enqueue host -> device of the first ``nbytes`` (default: all of ``host``)."""
        n = _copy_size(nbytes, host.nbytes, self.nbytes)
        rt = cudart()
        check(rt.cudaMemcpyAsync(self.ptr, host.ptr, n, rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream.handle),
              "cudaMemcpyAsync(host to device)")

    def copy_to_host(self, host: PinnedBuffer, stream: Stream, nbytes: int | None = None) -> None:
        """Enqueue device -> host of the first ``nbytes`` (default: all of ``host``)."""
        n = _copy_size(nbytes, host.nbytes, self.nbytes)
        rt = cudart()
        check(rt.cudaMemcpyAsync(host.ptr, self.ptr, n, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream.handle),
              "cudaMemcpyAsync(device to host)")

    def close(self) -> None:
        if self._ptr is not None:
            ptr, self._ptr = self._ptr, None
            check(self._runtime.cudaFree(ptr), "cudaFree")


def _copy_size(nbytes: int | None, host_bytes: int, device_bytes: int) -> int:
    n = host_bytes if nbytes is None else int(nbytes)
    if not 0 < n <= min(host_bytes, device_bytes):
        raise BackendError(
            f"a copy of {n} bytes does not fit buffers of {host_bytes} (host) and {device_bytes} (device) bytes; "
            "allocate the buffers for the largest batch."
        )
    return n


class PinnedBuffer(_Resource):
    """Page-locked host memory (cudaMallocHost) seen as a numpy array of ``shape`` and ``dtype``.

    Pinned memory makes host<->device copies asynchronous and lets them be captured in CUDA graphs.
    The ``array`` view is only valid until ``close()``.
    """

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype | type = np.float32) -> None:
        self._runtime = cudart()  # released through the runtime that made it
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        if self.nbytes <= 0:
            raise BackendError(f"a pinned buffer needs a positive size, got shape {self.shape}; check the tensor shape.")
        self._ptr: int | None = int(check(cudart().cudaMallocHost(self.nbytes), f"cudaMallocHost({self.nbytes})"))
        raw = (ctypes.c_uint8 * self.nbytes).from_address(self._ptr)
        self._array: np.ndarray | None = np.frombuffer(memoryview(raw), dtype=self.dtype).reshape(self.shape)

    @property
    def ptr(self) -> int:
        if self._ptr is None:
            raise BackendError("this pinned buffer was already freed; open the runner again.")
        return self._ptr

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            raise BackendError("this pinned buffer was already freed; open the runner again.")
        return self._array

    def close(self) -> None:
        if self._ptr is not None:
            ptr, self._ptr, self._array = self._ptr, None, None
            check(self._runtime.cudaFreeHost(ptr), "cudaFreeHost")


class EventTimer(_Resource):
    """Named CUDA events recorded on a stream; spans between them are read on the device clock.

    ``timer.record("h2d", stream)`` enqueues a timestamp; ``timer.elapsed_ms("start", "h2d")`` waits
    for the later event and returns the GPU time between the two (resolution about 0.5 us).
    """

    def __init__(self, marks: tuple[str, ...]) -> None:
        self._runtime = cudart()  # released through the runtime that made it
        rt = cudart()
        self._events: dict[str, Any] = {}
        try:
            for mark in marks:
                self._events[mark] = check(rt.cudaEventCreate(), "cudaEventCreate")
        except BackendError:
            self.close()
            raise

    def record(self, mark: str, stream: Stream) -> None:
        check(cudart().cudaEventRecord(self._event(mark), stream.handle), f"cudaEventRecord({mark})")

    def elapsed_ms(self, start: str, end: str) -> float:
        rt = cudart()
        check(rt.cudaEventSynchronize(self._event(end)), f"cudaEventSynchronize({end})")
        return float(check(rt.cudaEventElapsedTime(self._event(start), self._event(end)),
                           f"cudaEventElapsedTime({start}, {end})"))

    def _event(self, mark: str) -> Any:
        try:
            return self._events[mark]
        except KeyError:
            raise BackendError(f"event {mark!r} is not one of {sorted(self._events)}; name it when creating the timer.") from None

    def close(self) -> None:
        events, self._events = self._events, {}
        for event in events.values():
            check(self._runtime.cudaEventDestroy(event), "cudaEventDestroy")


class CudaGraph(_Resource):
    """An instantiated CUDA graph: ``launch(stream)`` replays the captured work with one call."""

    def __init__(self, graph: Any, graph_exec: Any) -> None:
        self._runtime = cudart()  # released through the runtime that made it
        self._graph, self._exec = graph, graph_exec

    def launch(self, stream: Stream) -> None:
        if self._exec is None:
            raise BackendError("this CUDA graph was already destroyed; capture it again.")
        check(cudart().cudaGraphLaunch(self._exec, stream.handle), "cudaGraphLaunch")

    def close(self) -> None:
        rt = self._runtime
        if self._exec is not None:
            graph_exec, self._exec = self._exec, None
            check(rt.cudaGraphExecDestroy(graph_exec), "cudaGraphExecDestroy")
        if self._graph is not None:
            graph, self._graph = self._graph, None
            check(rt.cudaGraphDestroy(graph), "cudaGraphDestroy")


class GraphCapture:
    """Capture the work enqueued on ``stream`` inside the ``with`` block into a :class:`CudaGraph`.

    Nothing runs during capture: the work runs when the graph is launched. Thread-local capture mode,
    so other threads' CUDA calls are not disturbed. If the block raises, capture is ended and the
    partial graph destroyed, leaving the stream usable.
    """

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.graph: CudaGraph | None = None

    def __enter__(self) -> GraphCapture:
        rt = cudart()
        check(rt.cudaStreamBeginCapture(self.stream.handle, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal),
              "cudaStreamBeginCapture")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        rt = cudart()
        err, graph = rt.cudaStreamEndCapture(self.stream.handle)  # always end, or the stream stays in capture
        if exc_type is not None:
            if int(err) == 0 and graph is not None:
                rt.cudaGraphDestroy(graph)  # best effort: the block's own exception is what matters
            return
        check((err,), "cudaStreamEndCapture")
        try:
            graph_exec = check(rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        except BackendError:
            rt.cudaGraphDestroy(graph)
            raise
        self.graph = CudaGraph(graph, graph_exec)


def event_timed_rounds(stream: Stream, iterations: int, *, copy_in: Callable[[], None], launch: Callable[[], None],
                       copy_out: Callable[[], None], used_before: int) -> TimingSamples:
    """``iterations`` timed rounds, shared by the GPU runners (TensorRT, ONNX Runtime's CUDA provider).

    Per round: h2d, compute and d2h on CUDA events; host wall time around the launch and its sync
    (the inputs are on the device before the host clock starts). ``peak_memory_bytes`` is what the
    device-wide count grew by since ``used_before`` (the runner's open).
    """
    used = [memory_info().used_bytes]
    host: list[float] = []
    device: list[float] = []
    h2d: list[float] = []
    d2h: list[float] = []
    with EventTimer(("start", "h2d", "launch", "compute", "d2h")) as events:
        for _ in range(iterations):
            events.record("start", stream)
            copy_in()
            events.record("h2d", stream)
            stream.synchronize()
            t0 = time.perf_counter()
            events.record("launch", stream)
            launch()
            events.record("compute", stream)
            stream.synchronize()
            host.append((time.perf_counter() - t0) * 1e3)
            copy_out()
            events.record("d2h", stream)
            h2d.append(events.elapsed_ms("start", "h2d"))
            device.append(events.elapsed_ms("launch", "compute"))
            d2h.append(events.elapsed_ms("compute", "d2h"))
    used.append(memory_info().used_bytes)
    return TimingSamples(host_ms=tuple(host), device_ms=tuple(device), h2d_ms=tuple(h2d), d2h_ms=tuple(d2h),
                         peak_memory_bytes=max(0, max(used) - used_before))
