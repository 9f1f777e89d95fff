"""Which GPU each pytest-xdist worker uses, and whether it may time latency.

`pytest bench -n <gpus>` runs one worker per GPU: worker ``gw<i>`` builds, evaluates and times on
the i-th visible GPU (its CUDA ordinal, passed on as `BuildOptions.device_id`). Timings are only
trusted from a process that has its device to itself, so:

- a serial run times (pytest-benchmark does it; there is no other process);
- a worker whose index is below the number of visible GPUs times on its own GPU with the
  backend's own timer (pytest-benchmark switches itself off under xdist);
- every other worker (more workers than GPUs, or no GPU at all: ONNX Runtime on the CPU) only
  builds and evaluates; its latency tests skip, "timed in the serial phase".

Visible GPUs come from ``CUDA_VISIBLE_DEVICES`` when it is set (CUDA renumbers them 0..n-1, so
the ordinal is the position in that list), else from the device count the CUDA runtime reports.
Everything here is plain Python, testable with simulated device lists on a machine with no GPU.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from quantbench.backends.base import Backend
from quantbench.errors import ConfigError

log = logging.getLogger(__name__)

_WORKER_ID = re.compile(r"gw(\d+)")


@dataclass(frozen=True)
class DeviceAssignment:
    """Where one process builds, evaluates and (maybe) times."""

    worker: str | None  # pytest-xdist worker id ("gw0", ...); None in a serial run
    device_id: int  # CUDA ordinal among the visible GPUs (0 on the CPU, where it is unused)
    gpu: str | None  # the visible GPU's name in CUDA_VISIBLE_DEVICES (or its ordinal); None: CPU
    times_latency: bool  # this process alone uses its device, so its timings mean something
    cpu_threads: int | None  # ONNX Runtime threads on a shared CPU; None = all cores
    reason: str  # one line for the log, the header and skip messages

    def describe(self) -> str:
        who = self.worker or "serial run"
        return f"{who}: {self.reason}"


def worker_index(worker: str | None) -> int | None:
    """``"gw3"`` -> 3; None (serial run) -> None; anything else is not an xdist worker id."""
    if worker is None:
        return None
    match = _WORKER_ID.fullmatch(worker)
    if match is None:
        raise ConfigError(
            f"PYTEST_XDIST_WORKER={worker!r} is not a pytest-xdist worker id like 'gw0'; "
            "unset it unless pytest-xdist started this process."
        )
    return int(match.group(1))


def visible_gpus(env: Mapping[str, str], device_count: int) -> tuple[str, ...]:
    """The GPUs this process may use, in CUDA ordinal order.

    ``CUDA_VISIBLE_DEVICES`` wins when set ("" or "-1" hide every GPU); otherwise the runtime's
    ``device_count`` ordinals.
    """
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return tuple(str(i) for i in range(max(device_count, 0)))
    entries = tuple(part.strip() for part in listed.split(",") if part.strip())
    # CUDA stops at the first invalid entry; "-1" is the conventional way to hide all GPUs.
    if "-1" in entries:
        entries = entries[: entries.index("-1")]
    return entries


def assign_device(
    worker: str | None, gpus: Sequence[str], *, worker_count: int | None = None, cpu_count: int | None = None
) -> DeviceAssignment:
    """The device of ``worker`` given the visible ``gpus`` (empty: the backend runs on the CPU)."""
    index = worker_index(worker)
    if index is None:
        if gpus:
            return DeviceAssignment(None, 0, gpus[0], True, None, f"GPU {gpus[0]} (ordinal 0), timed by pytest-benchmark")
        return DeviceAssignment(None, 0, None, True, None, "CPU, timed by pytest-benchmark")
    if not gpus:
        # Workers share the CPU: split its cores so parallel evaluations do not oversubscribe it.
        threads = max(1, (cpu_count or os.cpu_count() or 1) // max(worker_count or 1, 1))
        return DeviceAssignment(
            worker, 0, None, False, threads,
            f"CPU shared by {worker_count or 'several'} workers ({threads} ONNX Runtime thread(s) each): builds and evaluates, "
            "latency timed in the serial phase",
        )
    if index < len(gpus):
        return DeviceAssignment(
            worker, index, gpus[index], True, None, f"GPU {gpus[index]} (ordinal {index}) of its own: builds, evaluates, times"
        )
    shared = index % len(gpus)
    return DeviceAssignment(
        worker, shared, gpus[shared], False, None,
        f"no GPU of its own ({len(gpus)} GPUs for more workers): builds and evaluates on GPU {gpus[shared]} "
        f"(ordinal {shared}), latency timed in the serial phase",
    )


def assignment_plan(worker_count: int, gpus: Sequence[str], *, cpu_count: int | None = None) -> tuple[DeviceAssignment, ...]:
    """Every worker's assignment, for the terminal header of the controlling process."""
    return tuple(
        assign_device(f"gw{i}", gpus, worker_count=worker_count, cpu_count=cpu_count) for i in range(worker_count)
    )


def cuda_device_count() -> int:
    """GPUs the CUDA runtime sees (0 without cuda-python or a driver). Never raises."""
    try:
        from cuda.bindings import runtime as cudart  # optional: the TensorRT extra installs it
    except ImportError:
        return 0
    # Without a driver the runtime answers an error code (e.g. cudaErrorInsufficientDriver), not an exception.
    err, count = cudart.cudaGetDeviceCount()
    return int(count) if int(err) == 0 and count else 0


def backend_gpus(backend: Backend, env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The GPUs ``backend`` runs on here: none for ONNX Runtime on the CPU execution provider."""
    from quantbench.backends.ort import OrtBackend

    if isinstance(backend, OrtBackend) and not backend.use_cuda:
        return ()
    return visible_gpus(os.environ if env is None else env, cuda_device_count())


def current_assignment(gpus: Sequence[str], env: Mapping[str, str] | None = None) -> DeviceAssignment:
    """This process's assignment from the pytest-xdist environment variables; logged once."""
    env = os.environ if env is None else env
    count = env.get("PYTEST_XDIST_WORKER_COUNT")
    assignment = assign_device(
        env.get("PYTEST_XDIST_WORKER"), gpus, worker_count=int(count) if count and count.isdigit() else None
    )
    log.info("device assignment: %s", assignment.describe())
    return assignment
