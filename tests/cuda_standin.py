"""CPU STAND-IN for cuda-python's runtime module, so the TensorRT runner runs on a machine without a GPU.

It answers the calls ``quantbench.backends.cuda`` and the TensorRT fake make, in cuda-python's form
(``(cudaError_t, *values)`` tuples, the real ``cudaError_t``/``cudaMemcpyKind`` enums when
cuda-python is installed): "device" and pinned memory are host memory, a stream runs each operation
when it is enqueued (in order, as a stream does), events read ``time.perf_counter``, and a stream
capture records the operations into a graph that ``cudaGraphLaunch`` replays. Nothing here is CUDA:
``SIMULATED`` says so, and quantbench marks every figure measured through it as simulated.
"""

from __future__ import annotations

import ctypes
import enum
import itertools
import time
import types
from collections.abc import Callable
from typing import Any

SIMULATED = "CPU stand-in for the CUDA runtime (tests/cuda_standin.py): host memory, no GPU"
DEVICE_NAME = b"quantbench CPU stand-in (simulated, no GPU)"
TOTAL_MEMORY = 8 << 30


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInvalidResourceHandle = 400
    cudaErrorNotReady = 600
    cudaErrorStreamCaptureUnsupported = 900


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


class cudaStreamCaptureMode(enum.IntEnum):
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1
    cudaStreamCaptureModeRelaxed = 2


OK = cudaError_t.cudaSuccess
HOST_FUNCTION = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class CpuCudaRuntime(types.SimpleNamespace):
    """The stand-in runtime: one instance per test (its allocations are its own)."""

    SIMULATED = SIMULATED
    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind
    cudaStreamCaptureMode = cudaStreamCaptureMode
    cudaStreamNonBlocking = 1

    def __init__(self) -> None:
        super().__init__()
        self.buffers: dict[int, ctypes.Array] = {}
        self.capturing: dict[int, list[Callable[[], None]]] = {}
        self.graphs: dict[int, list[Callable[[], None]]] = {}
        self.events: dict[int, float] = {}
        self.streams: set[int] = set()
        self._ids = itertools.count(0x1000)

    # -- errors and device --------------------------------------------------------------------
    def cudaGetErrorName(self, err: Any) -> tuple:
        return OK, cudaError_t(int(err)).name.encode()

    def cudaGetErrorString(self, err: Any) -> tuple:
        return OK, f"stand-in error {cudaError_t(int(err)).name}".encode()

    def cudaGetDeviceCount(self) -> tuple:
        return OK, 1

    def cudaSetDevice(self, device: int) -> tuple:
        return (OK,) if device == 0 else (cudaError_t.cudaErrorInvalidValue,)

    def cudaGetDeviceProperties(self, device: int) -> tuple:
        return OK, types.SimpleNamespace(name=DEVICE_NAME, major=0, minor=0, totalGlobalMem=TOTAL_MEMORY)

    def cudaMemGetInfo(self) -> tuple:
        used = sum(ctypes.sizeof(b) for b in self.buffers.values())
        return OK, TOTAL_MEMORY - used, TOTAL_MEMORY

    # -- memory ---------------------------------------------------------------------------------
    def cudaMalloc(self, nbytes: int) -> tuple:
        buffer = ctypes.create_string_buffer(int(nbytes))
        self.buffers[ctypes.addressof(buffer)] = buffer
        return OK, ctypes.addressof(buffer)

    cudaMallocHost = cudaMalloc

    def cudaFree(self, ptr: int) -> tuple:
        return (OK,) if self.buffers.pop(int(ptr), None) is not None else (cudaError_t.cudaErrorInvalidValue,)

    cudaFreeHost = cudaFree

    def cudaMemcpyAsync(self, dst: int, src: int, nbytes: int, kind: Any, stream: Any) -> tuple:
        dst, src, nbytes = int(dst), int(src), int(nbytes)
        for where in (dst, src):
            if self._allocation_of(where, nbytes) is None:
                return (cudaError_t.cudaErrorInvalidValue,)
        return self._enqueue(stream, lambda: self._copy(dst, src, nbytes))

    def _allocation_of(self, ptr: int, nbytes: int) -> int | None:
        """The start of the live allocation holding ``[ptr, ptr + nbytes)``, or None (a real device faults)."""
        for start, buffer in self.buffers.items():
            if start <= ptr and ptr + nbytes <= start + ctypes.sizeof(buffer):
                return start
        return None

    def _copy(self, dst: int, src: int, nbytes: int) -> None:
        # Checked again when it runs: a captured graph may replay after a buffer was freed, and a
        # memmove into freed memory corrupts the heap of the test process (seen: a later segfault).
        if self._allocation_of(dst, nbytes) is None or self._allocation_of(src, nbytes) is None:
            raise RuntimeError(f"stand-in CUDA: copy of {nbytes} bytes {src:#x} -> {dst:#x} outside live allocations")
        ctypes.memmove(dst, src, nbytes)

    def cudaLaunchHostFunc(self, stream: Any, fn: Any, user_data: Any) -> tuple:
        function = HOST_FUNCTION(int(fn))
        return self._enqueue(stream, lambda: function(None))

    def cudaHostFn_t(self, ptr: int) -> int:
        return int(ptr)

    def _enqueue(self, stream: Any, operation: Callable[[], None]) -> tuple:
        handle = int(stream)
        if handle in self.capturing:
            self.capturing[handle].append(operation)
        else:
            operation()  # the stream runs in order; on the CPU, at once
        return (OK,)

    # -- streams and events ---------------------------------------------------------------------
    def cudaStreamCreateWithFlags(self, flags: int) -> tuple:
        handle = next(self._ids)
        self.streams.add(handle)
        return OK, handle

    def cudaStreamSynchronize(self, stream: Any) -> tuple:
        return (OK,) if int(stream) in self.streams else (cudaError_t.cudaErrorInvalidResourceHandle,)

    def cudaStreamQuery(self, stream: Any) -> tuple:
        return self.cudaStreamSynchronize(stream)

    def cudaStreamDestroy(self, stream: Any) -> tuple:
        self.streams.discard(int(stream))
        return (OK,)

    def cudaEventCreate(self) -> tuple:
        handle = next(self._ids)
        self.events[handle] = 0.0
        return OK, handle

    def cudaEventRecord(self, event: Any, stream: Any) -> tuple:
        return self._enqueue(stream, lambda: self.events.__setitem__(int(event), time.perf_counter()))

    def cudaEventSynchronize(self, event: Any) -> tuple:
        return (OK,)

    def cudaEventElapsedTime(self, start: Any, end: Any) -> tuple:
        return OK, (self.events[int(end)] - self.events[int(start)]) * 1e3

    def cudaEventDestroy(self, event: Any) -> tuple:
        self.events.pop(int(event), None)
        return (OK,)

    # -- graphs ---------------------------------------------------------------------------------
    def cudaStreamBeginCapture(self, stream: Any, mode: Any) -> tuple:
        self.capturing[int(stream)] = []
        return (OK,)

    def cudaStreamEndCapture(self, stream: Any) -> tuple:
        handle = next(self._ids)
        self.graphs[handle] = self.capturing.pop(int(stream))
        return OK, handle

    def cudaGraphInstantiate(self, graph: Any, flags: int) -> tuple:
        return OK, int(graph)

    def cudaGraphLaunch(self, graph_exec: Any, stream: Any) -> tuple:
        for operation in self.graphs[int(graph_exec)]:
            self._enqueue(stream, operation)
        return (OK,)

    def cudaGraphExecDestroy(self, graph_exec: Any) -> tuple:
        return (OK,)

    def cudaGraphDestroy(self, graph: Any) -> tuple:
        self.graphs.pop(int(graph), None)
        return (OK,)


def install(monkeypatch: Any | None = None) -> CpuCudaRuntime:
    """Make ``quantbench.backends.cuda`` use a fresh stand-in (through ``monkeypatch`` when given)."""
    from quantbench.backends import cuda

    runtime = CpuCudaRuntime()
    if monkeypatch is not None:
        monkeypatch.setattr(cuda, "cudart", lambda: runtime)
    else:
        cuda.cudart = lambda: runtime
    return runtime
