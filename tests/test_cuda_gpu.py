"""The CUDA layer (``backends/cuda.py``) on a real GPU.

Run on a GPU machine with ``python -m pytest tests/test_cuda_gpu.py -m gpu -v`` (``make gpu-test``).
Without a CUDA device or cuda-python every test here skips, saying which is missing.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from quantbench.backends import cuda
from quantbench.errors import BackendError

NO_GPU = cuda.device_unavailable_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(NO_GPU is not None, reason=f"needs a CUDA device: {NO_GPU}")]

YOLO_BATCH = (8, 3, 640, 640)  # float32: 39,321,600 bytes
MIB = 1 << 20


@pytest.fixture
def stream():
    with cuda.Stream() as s:
        yield s


def _random_bits(buffer: cuda.PinnedBuffer, seed: int) -> None:
    """Fill with random bytes (every float bit pattern, NaNs included: equality is on bytes)."""
    buffer.array.view(np.uint8).reshape(-1)[:] = np.random.default_rng(seed).integers(0, 256, buffer.nbytes, np.uint8)


def test_gpu_info_names_the_device():
    info = cuda.gpu_info(0)
    print(f"\nGPU 0: {info.describe()}")
    assert info.name and info.compute_capability >= (5, 0) and info.total_memory_bytes > 1 << 30
    assert info.sm == f"sm_{info.compute_capability[0]}{info.compute_capability[1]}"


def test_yolo_batch_round_trip_is_byte_identical(stream):
    with cuda.PinnedBuffer(YOLO_BATCH) as host_in, cuda.PinnedBuffer(YOLO_BATCH) as host_out, \
            cuda.DeviceBuffer(host_in.nbytes) as device:
        _random_bits(host_in, seed=0)
        host_out.array[:] = 0
        device.copy_from_host(host_in, stream)
        device.copy_to_host(host_out, stream)
        stream.synchronize()
        assert host_in.nbytes == 8 * 3 * 640 * 640 * 4
        assert np.array_equal(host_out.array.view(np.uint8), host_in.array.view(np.uint8))


def test_event_timing_of_a_known_copy_is_positive_and_plausible(stream):
    """A 39 MB pinned host->device copy: event time within the host's wall time, sane bandwidth,
    and a quarter of the bytes takes clearly less time (the events time the copy, not noise)."""
    with cuda.PinnedBuffer(YOLO_BATCH) as host, cuda.DeviceBuffer(host.nbytes) as device, \
            cuda.EventTimer(("start", "end")) as events:
        _random_bits(host, seed=1)

        def timed_copy(nbytes: int) -> tuple[float, float]:
            t0 = time.perf_counter()
            events.record("start", stream)
            device.copy_from_host(host, stream, nbytes)
            events.record("end", stream)
            stream.synchronize()
            wall_ms = (time.perf_counter() - t0) * 1e3
            return events.elapsed_ms("start", "end"), wall_ms

        timed_copy(host.nbytes)  # warm-up
        full = [timed_copy(host.nbytes) for _ in range(5)]
        quarter = [timed_copy(host.nbytes // 4) for _ in range(5)]
    for event_ms, wall_ms in full + quarter:
        assert 0 < event_ms <= wall_ms + 0.01  # device time cannot exceed the host's wall time around it
    full_ms = float(np.median([e for e, _ in full]))
    quarter_ms = float(np.median([e for e, _ in quarter]))
    gb_per_s = host.nbytes / (full_ms / 1e3) / 1e9
    print(f"\nh2d {host.nbytes / MIB:.1f} MiB: median {full_ms:.3f} ms = {gb_per_s:.1f} GB/s; "
          f"a quarter of it: {quarter_ms:.3f} ms")
    assert 1.0 < gb_per_s < 1000.0  # PCIe/NVLink-C2C host links: a few to a few hundred GB/s
    assert full_ms > 2.0 * quarter_ms


def test_cuda_graph_capture_replays_the_copy_path_with_new_data(stream):
    with cuda.PinnedBuffer(YOLO_BATCH) as host_in, cuda.PinnedBuffer(YOLO_BATCH) as host_out, \
            cuda.DeviceBuffer(host_in.nbytes) as device:
        host_out.array[:] = 0
        with cuda.GraphCapture(stream) as capture:
            device.copy_from_host(host_in, stream)
            device.copy_to_host(host_out, stream)
        stream.synchronize()
        assert not host_out.array.any()  # capture records work, it does not run it
        with capture.graph as graph:
            for seed in (2, 3):  # the graph reads the buffers at replay time: new inputs flow through
                _random_bits(host_in, seed)
                graph.launch(stream)
                stream.synchronize()
                assert np.array_equal(host_out.array.view(np.uint8), host_in.array.view(np.uint8))
        with pytest.raises(BackendError, match="already destroyed"):
            graph.launch(stream)


def test_failed_capture_leaves_the_stream_usable(stream):
    with cuda.PinnedBuffer((1024,)) as host, cuda.DeviceBuffer(host.nbytes) as device:
        with pytest.raises(RuntimeError, match="inside capture"):
            with cuda.GraphCapture(stream) as capture:
                device.copy_from_host(host, stream)
                raise RuntimeError("inside capture")
        assert capture.graph is None
        host.array[:] = 7.0
        device.copy_from_host(host, stream)
        host.array[:] = 0.0
        device.copy_to_host(host, stream)
        stream.synchronize()
        assert (host.array == 7.0).all()


def test_stream_synchronize_waits_for_all_enqueued_copies(stream):
    with cuda.PinnedBuffer(YOLO_BATCH) as host_in, cuda.PinnedBuffer(YOLO_BATCH) as host_out, \
            cuda.DeviceBuffer(host_in.nbytes) as device:
        _random_bits(host_in, seed=4)
        host_out.array[:] = 0
        for _ in range(10):  # ~0.8 GB of copies: many milliseconds of work, enqueued in microseconds
            device.copy_from_host(host_in, stream)
            device.copy_to_host(host_out, stream)
        assert not stream.is_idle()  # asynchronous: the host got control back before the copies ran
        stream.synchronize()
        assert stream.is_idle()
        assert np.array_equal(host_out.array.view(np.uint8), host_in.array.view(np.uint8))


def _one_cycle() -> None:
    with cuda.Stream() as s, cuda.DeviceBuffer(64 * MIB) as device, cuda.PinnedBuffer((MIB,), np.uint8) as host, \
            cuda.EventTimer(("a", "b")) as events:
        events.record("a", s)
        device.copy_from_host(host, s)
        with cuda.GraphCapture(s) as capture:
            device.copy_to_host(host, s)
        with capture.graph as graph:
            graph.launch(s)
        events.record("b", s)
        s.synchronize()
        assert events.elapsed_ms("a", "b") > 0


def test_no_device_memory_leaks_after_100_create_destroy_cycles():
    _one_cycle()  # the CUDA context and driver pools settle on first use
    free_before = cuda.memory_info().free_bytes
    for _ in range(100):
        _one_cycle()
    leaked = free_before - cuda.memory_info().free_bytes
    print(f"\nfree device memory after 100 cycles of 64 MiB: {leaked / MIB:+.1f} MiB below the start")
    assert abs(leaked) <= 8 * MIB

    # The same measurement does see a leak of that size: five buffers not freed.
    kept = [cuda.DeviceBuffer(64 * MIB) for _ in range(5)]
    try:
        assert free_before - cuda.memory_info().free_bytes >= 5 * 64 * MIB - 8 * MIB
    finally:
        for buffer in kept:
            buffer.close()


def test_cuda_errors_raise_backend_error_naming_the_cuda_error():
    with pytest.raises(BackendError, match=r"cudaMalloc\(\d+\) failed with cudaErrorMemoryAllocation .*smaller batch"):
        cuda.DeviceBuffer(1 << 50)  # a pebibyte
    with cuda.DeviceBuffer(MIB) as ok:  # an allocation failure is not sticky: the device still works
        assert ok.ptr


def test_closed_resources_refuse_use_and_close_twice(stream):
    device = cuda.DeviceBuffer(MIB)
    host = cuda.PinnedBuffer((256,))
    device.close()
    host.close()
    device.close()
    host.close()
    with pytest.raises(BackendError, match="already freed"):
        device.ptr  # noqa: B018 - the property raises
    with pytest.raises(BackendError, match="already freed"):
        host.array  # noqa: B018
    with cuda.EventTimer(("a",)) as events, pytest.raises(BackendError, match="'b' is not one of"):
        events.record("b", stream)
