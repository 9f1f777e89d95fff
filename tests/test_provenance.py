"""Provenance collectors: each fact found where it is, None (never an exception) where it is not."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from quantbench.backends.base import InputSpec, RunnerInfo
from quantbench.outputs import provenance
from quantbench.records import LatencyResult, LatencyStats, Provenance, from_dict, to_dict

# /proc/driver/nvidia/version as the 580 driver writes it.
PROC_VERSION = ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build  "
                "(dvs-builder@U16-I3-B03-4-3)  Sun Jul 27 06:54:38 UTC 2025\nGCC version:  gcc version 12.3.0\n")


def test_driver_version_from_proc_and_none_without_it(tmp_path: Path):
    (tmp_path / "version").write_text(PROC_VERSION)
    assert provenance.nvidia_driver_from_proc(tmp_path / "version") == "580.65.06"
    (tmp_path / "legacy").write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.183.01  Sun May 12 2024\n")
    assert provenance.nvidia_driver_from_proc(tmp_path / "legacy") == "535.183.01"
    assert provenance.nvidia_driver_from_proc(tmp_path / "missing") is None


def test_cpu_model_from_cpuinfo(tmp_path: Path):
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Gold 6338\n")
    assert provenance.cpu_model(tmp_path / "cpuinfo") == "Intel(R) Xeon(R) Gold 6338"


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_commit_of_a_checkout_and_none_outside_one(tmp_path: Path):
    assert provenance.git_commit(tmp_path) == (None, None)  # not a repository
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True, env=env)
    (tmp_path / "a.txt").write_text("1")
    subprocess.run(["git", "-C", str(tmp_path), "add", "a.txt"], check=True, env=env)
    subprocess.run(["git", "-C", str(tmp_path), "commit", "-qm", "one"], check=True, env=env)
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert provenance.git_commit(tmp_path) == (head, False)
    (tmp_path / "a.txt").write_text("2")
    assert provenance.git_commit(tmp_path) == (head, True)


def test_versions_come_from_package_metadata_and_missing_ones_are_none():
    assert provenance.distribution_version(("no-such-distribution-xyz", "numpy")) == importlib.metadata.version("numpy")
    assert provenance.distribution_version(("no-such-distribution-xyz",)) is None


def test_collect_takes_the_runners_own_tensorrt_and_gpu():
    spec = InputSpec("images", (3, 640, 640))
    plain = provenance.collect_provenance(RunnerInfo("onnxruntime", "CPU", spec, runtime_version="1.24.4"))
    assert plain.tensorrt is None and plain.onnxruntime == "1.24.4" and plain.python
    trt = provenance.collect_provenance(RunnerInfo("tensorrt", "H200", spec, runtime_version="10.13.3.9",
                                                   gpu="NVIDIA H200", compute_capability="9.0"))
    assert (trt.tensorrt, trt.gpu, trt.compute_capability) == ("10.13.3.9", "NVIDIA H200", "9.0")
    assert trt.modelopt == plain.modelopt == provenance.distribution_version(("nvidia-modelopt",))


def test_cache_keys_name_the_gpu_and_the_tensorrt_version(monkeypatch: pytest.MonkeyPatch):
    h200 = Provenance(gpu="NVIDIA H200", compute_capability="9.0")
    monkeypatch.setattr(provenance, "installed_tensorrt", lambda: "10.13.3.9")
    assert provenance.cache_key(h200) == "NVIDIA-H200-sm90-trt10.13.3.9"
    assert provenance.cache_key(h200, tensorrt=False) == "NVIDIA-H200-sm90"
    monkeypatch.setattr(provenance, "installed_tensorrt", lambda: None)
    assert provenance.cache_key(Provenance()) == "cpu-notrt"


def test_latency_records_round_trip_with_provenance_and_read_without_it():
    facts = provenance.collect_provenance()
    record = LatencyResult(model="m", variant="fp16", backend="onnxruntime", device="CPU", batch_size=1,
                           host=LatencyStats(1.0, 1.0, 1.0, 1.0, 0.0, 3), images_per_s=1000.0, provenance=facts)
    data = json.loads(json.dumps(to_dict(record)))
    assert from_dict(LatencyResult, data) == record
    del data["provenance"]  # a record saved before provenance existed
    assert from_dict(LatencyResult, data).provenance is None


@pytest.mark.gpu
def test_gpu_facts_on_a_gpu_machine():
    """On an NVIDIA GPU machine (nvidia-smi and cuda-python): the facts agree with the CUDA runtime's."""
    cuda = pytest.importorskip("quantbench.backends.cuda")
    if cuda.device_unavailable_reason() is not None:
        pytest.skip(f"no CUDA device: {cuda.device_unavailable_reason()}")
    gpu = cuda.gpu_info(0)
    facts = provenance.environment_provenance()
    assert facts.gpu == gpu.name
    assert facts.compute_capability == f"{gpu.compute_capability[0]}.{gpu.compute_capability[1]}"
    assert facts.driver and facts.driver[0].isdigit()
    assert provenance.cuda_runtime_gpu() == (gpu.name, facts.compute_capability, None)
    print(json.dumps(to_dict(facts)), provenance.cache_key(facts), provenance.cache_key(facts, tensorrt=False))
