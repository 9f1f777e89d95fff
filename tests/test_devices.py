"""Worker -> GPU assignment for `pytest bench -n <gpus>`, on simulated device lists (no GPU needed)."""

from __future__ import annotations

import logging

import pytest

from quantbench.backends.devices import (
    assign_device,
    assignment_plan,
    cuda_device_count,
    current_assignment,
    visible_gpus,
    worker_index,
)
from quantbench.errors import ConfigError


@pytest.mark.parametrize(("worker", "index"), [(None, None), ("gw0", 0), ("gw7", 7), ("gw12", 12)])
def test_worker_index_reads_xdist_ids(worker, index):
    assert worker_index(worker) == index


@pytest.mark.parametrize("worker", ["master", "gw", "gw-1", "1"])
def test_worker_index_rejects_foreign_ids_naming_them(worker):
    with pytest.raises(ConfigError, match=f"PYTEST_XDIST_WORKER={worker!r}"):
        worker_index(worker)


@pytest.mark.parametrize(
    ("env", "count", "expected"),
    [
        ({}, 4, ("0", "1", "2", "3")),
        ({}, 0, ()),
        ({"CUDA_VISIBLE_DEVICES": "2,3"}, 8, ("2", "3")),  # the variable wins over the runtime count
        ({"CUDA_VISIBLE_DEVICES": "GPU-5f1c,GPU-77aa"}, 0, ("GPU-5f1c", "GPU-77aa")),  # UUIDs kept as given
        ({"CUDA_VISIBLE_DEVICES": ""}, 4, ()),
        ({"CUDA_VISIBLE_DEVICES": "-1"}, 4, ()),
        ({"CUDA_VISIBLE_DEVICES": "1,-1,0"}, 4, ("1",)),  # CUDA stops at the first invalid entry
        ({"CUDA_VISIBLE_DEVICES": " 4 , 5 "}, 0, ("4", "5")),
    ],
)
def test_visible_gpus(env, count, expected):
    assert visible_gpus(env, count) == expected


def test_one_worker_per_gpu_each_times_on_its_own_ordinal():
    plan = assignment_plan(4, ("4", "5", "6", "7"))
    assert [a.device_id for a in plan] == [0, 1, 2, 3]  # ordinals: CUDA renumbers visible devices
    assert [a.gpu for a in plan] == ["4", "5", "6", "7"]
    assert all(a.times_latency for a in plan)
    assert all(a.cpu_threads is None for a in plan)


def test_extra_workers_build_and_evaluate_but_never_time():
    plan = assignment_plan(5, ("0", "1"))
    assert [a.times_latency for a in plan] == [True, True, False, False, False]
    assert [a.device_id for a in plan] == [0, 1, 0, 1, 0]  # round robin for builds and evaluation
    assert all("timed in the serial phase" in a.reason for a in plan[2:])


def test_serial_run_times_on_the_first_gpu_or_the_cpu():
    on_gpu = assign_device(None, ("3", "1"))
    assert (on_gpu.device_id, on_gpu.gpu, on_gpu.times_latency) == (0, "3", True)
    on_cpu = assign_device(None, ())
    assert (on_cpu.device_id, on_cpu.gpu, on_cpu.times_latency, on_cpu.cpu_threads) == (0, None, True, None)


@pytest.mark.parametrize(("cpus", "workers", "threads"), [(2, 2, 1), (16, 3, 5), (2, 8, 1), (8, 1, 8)])
def test_workers_on_a_shared_cpu_split_its_cores_and_never_time(cpus, workers, threads):
    plan = assignment_plan(workers, (), cpu_count=cpus)
    assert all(a.cpu_threads == threads and not a.times_latency and a.gpu is None for a in plan)
    assert "timed in the serial phase" in plan[0].reason


def test_current_assignment_reads_the_xdist_environment_and_logs_it(caplog):
    env = {"PYTEST_XDIST_WORKER": "gw1", "PYTEST_XDIST_WORKER_COUNT": "2"}
    with caplog.at_level(logging.INFO, logger="quantbench.backends.devices"):
        assignment = current_assignment(("0", "1"), env)
    assert (assignment.worker, assignment.device_id, assignment.times_latency) == ("gw1", 1, True)
    assert "gw1: GPU 1 (ordinal 1) of its own" in caplog.text


def test_current_assignment_without_xdist_is_the_serial_run():
    assert current_assignment((), {}).worker is None


def test_cuda_device_count_is_a_count_even_without_a_driver():
    # Here: no GPU (0); on the GPU machine: its GPUs. Never an exception.
    count = cuda_device_count()
    assert isinstance(count, int) and count >= 0


def test_backend_gpus_ignores_gpus_for_onnxruntime_on_the_cpu():
    from quantbench.backends.devices import backend_gpus
    from quantbench.backends.ort import OrtBackend

    env = {"CUDA_VISIBLE_DEVICES": "0,1"}
    assert backend_gpus(OrtBackend(use_cuda=False), env) == ()  # a GPU that is not used gives no timing slot
    assert backend_gpus(OrtBackend(use_cuda=True), env) == ("0", "1")
