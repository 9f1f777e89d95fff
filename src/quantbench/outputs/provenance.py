"""Provenance of a measurement: versions, GPU, driver, commit. Small collectors that never raise.

As in pyperf's ``_metadata.py``, each fact comes from one small function that returns None when it
cannot be found (no GPU, no git, a package not installed) instead of failing the run that asked:
a missing fact is recorded as unknown, never as an error.

Nothing here imports ``tensorrt``: the TensorRT version the engines were built with comes from the
TensorRT runner's own `RunnerInfo` (``Runner.info()``); `installed_tensorrt` reads the installed
distribution's metadata, for the CI cache key. GPU facts come from ``nvidia-smi`` and, where it is
missing, from the CUDA runtime through `backends.cuda` (cuda-python, imported lazily there).
"""

from __future__ import annotations

import dataclasses
import functools
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from quantbench import __version__
from quantbench.backends.base import BackendKind, RunnerInfo
from quantbench.records import Provenance
from quantbench.rules import tool_version

# Distributions that install each module (the first one found wins).
_ONNXRUNTIME_DISTS = ("onnxruntime-gpu", "onnxruntime")
_MODELOPT_DISTS = ("nvidia-modelopt",)
_TENSORRT_DISTS = ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu13-bindings", "tensorrt-cu12-bindings")
_SUBPROCESS_TIMEOUT_S = 10
_ORT_BACKENDS = (BackendKind.ONNXRUNTIME.value, BackendKind.ONNXRUNTIME_CUDA.value)
_REPO = Path(__file__).resolve().parents[2]  # the checkout, for an editable install


def collect_provenance(runner: RunnerInfo | None = None) -> Provenance:
    """This process's facts, overlaid with what the runner reports about itself (its runtime's version, its GPU)."""
    facts = environment_provenance()
    if runner is None:
        return facts
    version = runner.runtime_version
    overlay: dict[str, Any] = {
        # Only a TensorRT runner has a TensorRT: other backends do not use the installed one.
        "tensorrt": version if runner.backend == BackendKind.TENSORRT.value else None,
        "onnxruntime": (version if runner.backend in _ORT_BACKENDS else None) or facts.onnxruntime,
        "provider_options": ({k: dict(v) for k, v in runner.provider_options.items()}
                             if runner.provider_options is not None else None),
        "gpu": runner.gpu or facts.gpu,
        "compute_capability": runner.compute_capability or facts.compute_capability,
    }
    return dataclasses.replace(facts, **overlay)


@functools.cache
def environment_provenance() -> Provenance:
    """The facts that do not depend on the backend; gathered once per process (nvidia-smi, git)."""
    gpu, capability, driver = nvidia_smi_gpu() or cuda_runtime_gpu() or (None, None, None)
    commit, dirty = git_commit(_REPO)
    return Provenance(
        quantbench=__version__,
        commit=commit,
        commit_dirty=dirty,
        python=platform.python_version(),
        onnxruntime=distribution_version(_ONNXRUNTIME_DISTS),
        modelopt=distribution_version(_MODELOPT_DISTS),
        gpu=gpu,
        compute_capability=capability,
        driver=driver or nvidia_driver_from_proc(),
        cpu=cpu_model(),
    )


def distribution_version(names: tuple[str, ...]) -> str | None:
    """Version of the first installed distribution among ``names`` (`rules.tool_version`: metadata, nothing imported)."""
    return tool_version(*names)


def installed_tensorrt() -> str | None:
    """The installed TensorRT's version, from package metadata (``tensorrt`` is not imported)."""
    return distribution_version(_TENSORRT_DISTS)


def _run(command: list[str], cwd: Path | None = None) -> str | None:
    """stdout of ``command``, or None when it is missing, fails or hangs."""
    if shutil.which(command[0]) is None:
        return None
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=_SUBPROCESS_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def nvidia_smi_gpu() -> tuple[str, str, str] | None:
    """(name, compute capability, driver version) of GPU 0 from ``nvidia-smi``, or None."""
    out = _run(["nvidia-smi", "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"])
    if not out or not out.strip():
        return None
    fields = [part.strip() for part in out.strip().splitlines()[0].split(",")]
    if len(fields) != 3 or not fields[0]:
        return None
    return fields[0], fields[1], fields[2]


def cuda_runtime_gpu() -> tuple[str, str, None] | None:
    """(name, compute capability, None) of CUDA device 0 through cuda-python, or None."""
    try:
        from quantbench.backends import cuda

        if cuda.device_unavailable_reason() is not None:
            return None
        gpu = cuda.gpu_info(0)
    except Exception:  # no cuda-python, no driver, a CUDA error: the fact is unknown, not a failure
        return None
    return gpu.name, f"{gpu.compute_capability[0]}.{gpu.compute_capability[1]}", None


def nvidia_driver_from_proc(path: Path = Path("/proc/driver/nvidia/version")) -> str | None:
    """The NVIDIA kernel driver's version from /proc (Linux), or None."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    # "... Kernel Module  535.183.01  ..." or "... Open Kernel Module for x86_64  580.65.06  ..."
    match = re.search(r"Kernel Module.*?\s(\d+\.\d+(?:\.\d+)*)\s", text)
    return match.group(1) if match else None


def git_commit(repo: Path) -> tuple[str | None, bool | None]:
    """(HEAD commit, has uncommitted changes) of ``repo``, or (None, None) outside a git checkout."""
    head = _run(["git", "rev-parse", "HEAD"], cwd=repo)
    if not head or not re.fullmatch(r"[0-9a-f]{40}", head.strip()):
        return None, None
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo)
    return head.strip(), None if status is None else bool(status.strip())


def cpu_model(path: Path = Path("/proc/cpuinfo")) -> str | None:
    """The CPU's model name (Linux /proc/cpuinfo, else `platform.processor`), or None."""
    try:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip() or None
    except OSError:
        pass
    return platform.processor() or None


def cache_key(facts: Provenance | None = None, *, tensorrt: bool = True) -> str:
    """One filename-safe token naming what engines and timing caches depend on: GPU, compute capability and
    the installed TensorRT (``NVIDIA-H200-sm90-trt10.13.3.9``; ``cpu-notrt`` without them). ``tensorrt=False``
    names the device alone (``NVIDIA-H200-sm90``): a history that spans TensorRT upgrades is keyed so."""
    facts = facts or environment_provenance()
    raw = facts.gpu or "cpu"
    if facts.compute_capability:
        raw += f"-sm{facts.compute_capability.replace('.', '')}"
    if tensorrt:
        version = installed_tensorrt()
        raw += f"-trt{version}" if version else "-notrt"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", raw).strip("-")
